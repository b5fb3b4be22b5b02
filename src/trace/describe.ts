/** One readable line per access or failed instruction (the default, non-JSON output). */
import { eptQualNames, npfNames, pfErrorNames } from '../hw/decode.js';

export function describeResult(o: Record<string, string | number>): string {
  const line = describeOutcome(o);
  if (o.exits === undefined) return line;
  // A VM-level access: the KVM exits it took, and how it left KVM_RUN.
  return `${line}  exits=${o.exits}${o.user_exit !== undefined ? ` user_exit=${o.user_exit}` : ''}`;
}

function describeOutcome(o: Record<string, string | number>): string {
  const head = o.op === 'access' ? `${o.line}: vcpu${o.vcpu} ${String(o.kind).padEnd(5)} ${o.gva}` : `${o.line}: vcpu${o.vcpu} ${o.op}`;
  switch (o.result) {
    case 'ok':
      return `${head} -> ok hpa=${o.hpa}${o.gpa !== undefined ? ` gpa=${o.gpa}` : ''}`;
    case 'pf':
      return `${head} -> #PF error_code=${o.error_code} [${pfErrorNames(Number(o.error_code)).join(' ')}] cr2=${o.cr2}`;
    case 'gp':
      return `${head} -> #GP(0)`;
    case 'ud':
      return `${head} -> #UD`;
    case 'ept_violation':
      return `${head} -> EPT violation qualification=${o.qualification} [${eptQualNames(Number(o.qualification)).join(' ')}] gpa=${o.gpa}${o.gla !== undefined ? ` gla=${o.gla}` : ''}`;
    case 'ept_misconfig':
      return `${head} -> EPT misconfiguration gpa=${o.gpa}`;
    case 'npf':
      return `${head} -> #NPF exitinfo1=${o.exitinfo1} [${npfNames(Number(o.exitinfo1)).join(' ')}] exitinfo2=${o.exitinfo2}`;
    case 'vmfail':
      return `${head} -> VMfail${o.vm_error ? ` (VM-instruction error ${o.vm_error})` : ''}`;
    default:
      return `${head} -> ${o.result}`;
  }
}

/**
 * The trace parser: turns the text of a trace into validated commands
 * (trace-format.md, "Lines"). The whole file is parsed and checked before
 * anything runs; the first error is thrown as a TraceError (FILE:LINE:COL).
 *
 * The scanner works on character codes and string slices only (no regular
 * expressions, no per-token closures), so that generated traces of millions
 * of lines parse quickly.
 */
import Long from 'long';
import { TraceError, type Arg, type Command, type Trace } from './ast.js';
import { VERBS, type ArgType, type VerbSpec } from './verbs.js';
import { checkVmTrace } from './vm_check.js';

// ---------------------------------------------------------------------------
// Numbers

const MAX_U64_DEC = '18446744073709551615';

/** Why a number did not parse. */
const enum NumErr {
  Syntax = 1,
  Underscore = 2,
  Range = 3,
}

function isDecDigit(c: number): boolean {
  return c >= 48 && c <= 57; // 0-9
}

function isHexDigit(c: number): boolean {
  return (c >= 48 && c <= 57) || (c >= 97 && c <= 102) || (c >= 65 && c <= 70); // 0-9 a-f A-F
}

/**
 * Reads text[0, end) as an unsigned 64-bit number: decimal or 0x hex, with
 * `_` allowed between digits. Returns the value or the reason it is invalid.
 */
function readU64(text: string, end: number): Long | NumErr {
  let i = 0;
  let hex = false;
  if (end >= 2 && text.charCodeAt(0) === 48 && text.charCodeAt(1) === 120) {
    hex = true; // "0x"
    i = 2;
  }
  if (i >= end) return NumErr.Syntax;
  let underscores = false;
  let afterDigit = false; // the previous character was a digit
  for (let j = i; j < end; j++) {
    const c = text.charCodeAt(j);
    if (c === 95) {
      // '_' must sit between two digits
      if (!afterDigit) return NumErr.Underscore;
      underscores = true;
      afterDigit = false;
    } else if (hex ? isHexDigit(c) : isDecDigit(c)) {
      afterDigit = true;
    } else {
      return NumErr.Syntax;
    }
  }
  if (!afterDigit) return NumErr.Underscore; // trailing '_'

  let digits = text.slice(i, end);
  if (underscores) digits = digits.split('_').join('');
  // Strip leading zeros so that the digit count measures magnitude.
  let z = 0;
  while (z < digits.length - 1 && digits.charCodeAt(z) === 48) z++;
  if (z > 0) digits = digits.slice(z);
  const len = digits.length;

  if (hex) {
    if (len > 16) return NumErr.Range;
    if (len <= 13) return Long.fromNumber(parseInt(digits, 16), true); // < 2^52: exact as a double
    const hi = parseInt(digits.slice(0, len - 8), 16);
    const lo = parseInt(digits.slice(len - 8), 16);
    return Long.fromBits(lo | 0, hi | 0, true);
  }
  if (len > 20) return NumErr.Range;
  // Same length: lexicographic order is numeric order.
  if (len === 20 && digits > MAX_U64_DEC) return NumErr.Range;
  if (len <= 15) return Long.fromNumber(parseInt(digits, 10), true); // < 10^15 < 2^53: exact
  return Long.fromString(digits, true, 10); // in range, so Long's wrapping arithmetic is exact
}

function numberMessage(text: string, err: NumErr): string {
  switch (err) {
    case NumErr.Syntax:
      return `bad number ${q(text)} (expected decimal or 0x hex)`;
    case NumErr.Underscore:
      return `bad number ${q(text)} ('_' may only separate digits)`;
    case NumErr.Range:
      return `number ${q(text)} out of 64-bit range (max 0xffffffffffffffff)`;
  }
}

/** Power-of-1024 shift of a size suffix character code, or 0. */
function suffixShift(c: number): number {
  switch (c) {
    case 75: // K
      return 10;
    case 77: // M
      return 20;
    case 71: // G
      return 30;
    case 84: // T
      return 40;
    default:
      return 0;
  }
}

/** Reads a size: a number optionally followed by K, M, G or T (powers of 1024). */
function readSize(text: string): Long | NumErr {
  const shift = text.length > 0 ? suffixShift(text.charCodeAt(text.length - 1)) : 0;
  if (shift === 0) return readU64(text, text.length);
  const n = readU64(text, text.length - 1);
  if (typeof n === 'number') return n;
  if (!n.shiftRightUnsigned(64 - shift).isZero()) return NumErr.Range;
  return n.shiftLeft(shift);
}

function sizeMessage(text: string, err: NumErr): string {
  switch (err) {
    case NumErr.Syntax:
      return `bad size ${q(text)} (expected decimal or 0x hex, optionally followed by K, M, G or T)`;
    case NumErr.Underscore:
      return `bad size ${q(text)} ('_' may only separate digits)`;
    case NumErr.Range:
      return `size ${q(text)} out of 64-bit range (max 0xffffffffffffffff)`;
  }
}

/**
 * Parses a number as written in a trace: decimal (`4096`) or hex (`0x1000`),
 * `_` allowed between digits, at most 0xffffffffffffffff. Returns an unsigned
 * Long; throws an Error on bad syntax or overflow.
 */
export function parseNumber(text: string): Long {
  const n = readU64(text, text.length);
  if (typeof n === 'number') throw new Error(numberMessage(text, n));
  return n;
}

/** Like parseNumber, but the number may end in K, M, G or T (powers of 1024). */
export function parseSize(text: string): Long {
  const n = readSize(text);
  if (typeof n === 'number') throw new Error(sizeMessage(text, n));
  return n;
}

// ---------------------------------------------------------------------------
// Messages

/** Tokens longer than this are cut in messages (a binary file would otherwise print itself). */
const QUOTE_MAX = 40;

/** Quotes a token for a message, escaping control characters and cutting a long one. */
function q(s: string): string {
  const cut = s.length > QUOTE_MAX ? `${s.slice(0, QUOTE_MAX)}... (${s.length} characters)` : s;
  for (let i = 0; i < cut.length; i++) {
    const c = cut.charCodeAt(i);
    if (c < 32 || c === 127) return `'${escapeControls(cut)}'`;
  }
  return `'${cut}'`;
}

function escapeControls(s: string): string {
  let out = '';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    out += c < 32 || c === 127 ? `\\x${c.toString(16).padStart(2, '0')}` : s[i];
  }
  return out;
}

function hasUpper(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 65 && c <= 90) return true;
  }
  return false;
}

function hex(n: Long): string {
  return '0x' + n.toString(16);
}

// ---------------------------------------------------------------------------
// The schema, indexed once

interface VerbInfo {
  name: string;
  spec: VerbSpec;
  keys: Map<string, ArgType>;
  /** word -> index of its group in spec.words */
  wordGroup: Map<string, number>;
  /** "(expected one of: a, b)" or "(VERB takes no ...)" */
  keyHint: string;
  wordHint: string;
  /** Sub-verbs by their word (`expect spte`). */
  sub: Map<string, VerbInfo>;
}

function verbInfo(name: string, spec: VerbSpec): VerbInfo {
  const keys = new Map(Object.entries(spec.keys));
  const wordGroup = new Map<string, number>();
  const groups = spec.words ?? [];
  for (let g = 0; g < groups.length; g++) for (const w of groups[g]) wordGroup.set(w, g);
  const sub = new Map<string, VerbInfo>();
  for (const [word, s] of Object.entries(spec.sub ?? {})) sub.set(word, verbInfo(`${name} ${word}`, s));
  return {
    name,
    spec,
    keys,
    wordGroup,
    keyHint:
      keys.size > 0
        ? `(expected one of: ${[...keys.keys()].join(', ')})`
        : `(${name} takes no key=value arguments)`,
    wordHint:
      wordGroup.size > 0 ? `(expected one of: ${[...wordGroup.keys()].join(', ')})` : `(${name} takes no bare words)`,
    sub,
  };
}

const VERB_INFO = new Map<string, VerbInfo>();
for (const [name, spec] of Object.entries(VERBS)) VERB_INFO.set(name, verbInfo(name, spec));
const VERB_HINT = `(expected one of: ${[...VERB_INFO.keys()].join(', ')})`;

const DEFAULT_VCPUS = 1;
const DEFAULT_MAXPHYADDR = 46;
/** Verbs whose hpa= names host physical memory, which must be 8-byte aligned and below 2^maxphyaddr. */
const HPA_VERBS = new Set(['poke', 'peek', 'expect_mem']);

// ---------------------------------------------------------------------------
// The parser

class Parser {
  readonly commands: Command[] = [];
  private vcpus = DEFAULT_VCPUS;
  private maxphyaddr = DEFAULT_MAXPHYADDR;
  /** Line of the first command, `machine` or `vm`, and which it was. */
  private machineLine = 0;
  private kind: 'machine' | 'vm' | null = null;
  /** A command other than machine and expect has been seen (something an expect can check). */
  private sawSubject = false;

  constructor(readonly file: string) {}

  private fail(line: number, col: number, message: string): never {
    throw new TraceError(this.file, line, col, message);
  }

  /** Parses one line: text[start, end) with the line terminator already removed. */
  line(text: string, start: number, end: number, lineNo: number): void {
    let cmd: Command | undefined;
    let info: VerbInfo | undefined;
    let subPending = false; // the next token may name a sub-verb
    let i = start;
    for (;;) {
      // skip blanks
      let c = 0;
      while (i < end && ((c = text.charCodeAt(i)) === 32 || c === 9)) i++;
      if (i >= end || c === 35) break; // end of line or '#'
      const tokStart = i;
      let eq = -1;
      while (i < end && (c = text.charCodeAt(i)) !== 32 && c !== 9 && c !== 35) {
        if (c === 61 && eq < 0) eq = i; // first '='
        i++;
      }
      const col = tokStart - start + 1;
      if (cmd === undefined || info === undefined) {
        const verb = text.slice(tokStart, i);
        info = this.verb(verb, lineNo, col);
        // The table's own string, not the slice: replay compares verbs per step, and only identical strings compare in one instruction.
        cmd = { verb: info.name, line: lineNo, col, args: new Map(), words: new Set() };
        subPending = info.sub.size > 0;
      } else if (subPending) {
        subPending = false;
        const word = eq < 0 ? text.slice(tokStart, i) : '';
        const sub = info.sub.get(word);
        if (sub !== undefined) {
          info = sub;
          cmd.verb = sub.name;
          continue;
        }
        if (info.spec.subRequired) this.fail(lineNo, col, `${info.name}: expected one of: ${[...info.sub.keys()].join(', ')}`);
        i = tokStart; // an ordinary argument: read it again below
      } else if (eq >= 0) {
        this.keyValue(info, cmd, text, tokStart, eq, i, lineNo, col);
      } else {
        this.word(info, cmd, text.slice(tokStart, i), lineNo, col);
      }
    }
    if (cmd !== undefined && info !== undefined) {
      if (subPending && info.spec.subRequired) this.fail(lineNo, cmd.col, `${info.name}: expected one of: ${[...info.sub.keys()].join(', ')}`);
      this.finish(info, cmd);
    }
  }

  private verb(verb: string, line: number, col: number): VerbInfo {
    const info = VERB_INFO.get(verb);
    if (info !== undefined) return info;
    if (hasUpper(verb) && VERB_INFO.has(verb.toLowerCase())) {
      this.fail(line, col, `verb ${q(verb)} must be lower case ('${verb.toLowerCase()}')`);
    }
    if (verb.charCodeAt(0) === 61 || verb.indexOf('=') > 0) {
      this.fail(line, col, `expected a verb, got ${q(verb)} ${VERB_HINT}`);
    }
    return this.fail(line, col, `unknown verb ${q(verb)} ${VERB_HINT}`);
  }

  /** One key=value token: text[start, end) with its first '=' at eq. */
  private keyValue(
    info: VerbInfo, cmd: Command, text: string, start: number, eq: number, end: number, line: number, col: number,
  ): void {
    const verb = info.name;
    if (eq === start) this.fail(line, col, `${verb}: expected key=value or a word, got ${q(text.slice(start, end))}`);
    const key = text.slice(start, eq);
    const value = text.slice(eq + 1, end);
    const type = info.keys.get(key);
    if (type === undefined) {
      if (hasUpper(key) && info.keys.has(key.toLowerCase())) {
        this.fail(line, col, `${verb}: key ${q(key)} must be lower case ('${key.toLowerCase()}')`);
      }
      if (info.wordGroup.has(key)) {
        this.fail(line, col, `${verb}: ${q(key)} is a bare word, not a key (write it without '=')`);
      }
      this.fail(line, col, `${verb}: unknown key ${q(key)} ${info.keyHint}`);
    }
    if (cmd.args.has(key)) this.fail(line, col, `${verb}: duplicate key ${q(key)}`);
    this.scoped(info, key, line, col);
    const arg: Arg<Long | number | string> = { value: this.value(verb, key, type, value, line, col), line, col };
    cmd.args.set(key, arg);
  }

  private value(verb: string, key: string, type: ArgType, value: string, line: number, col: number): Long | number | string {
    switch (type.t) {
      case 'u64': {
        const n = readU64(value, value.length);
        if (typeof n === 'number') this.fail(line, col, `${verb}: ${key}: ${numberMessage(value, n)}`);
        return n;
      }
      case 'size': {
        const n = readSize(value);
        if (typeof n === 'number') this.fail(line, col, `${verb}: ${key}: ${sizeMessage(value, n)}`);
        return n;
      }
      case 'int': {
        const n = readU64(value, value.length);
        if (typeof n !== 'number' && n.high === 0) {
          const v = n.low >>> 0;
          if (v >= type.min && v <= type.max) return v;
        }
        return this.fail(line, col, `${verb}: ${key} must be an integer in ${type.min}..${type.max}, got ${q(value)}`);
      }
      case 'enum': {
        if (type.values.includes(value)) return value;
        return this.fail(line, col, `${verb}: ${key} must be one of ${type.values.join('|')}, got ${q(value)}`);
      }
    }
  }

  private word(info: VerbInfo, cmd: Command, word: string, line: number, col: number): void {
    const verb = info.name;
    const group = info.wordGroup.get(word);
    if (group === undefined) {
      if (info.keys.has(word)) this.fail(line, col, `${verb}: key ${q(word)} needs a value (${word}=...)`);
      if (hasUpper(word) && info.wordGroup.has(word.toLowerCase())) {
        this.fail(line, col, `${verb}: word ${q(word)} must be lower case ('${word.toLowerCase()}')`);
      }
      this.fail(line, col, `${verb}: unknown word ${q(word)} ${info.wordHint}`);
    }
    if (cmd.words.has(word)) this.fail(line, col, `${verb}: duplicate word ${q(word)}`);
    this.scoped(info, word, line, col);
    const groupWords = info.spec.words![group];
    if (groupWords.length > 1) {
      for (const other of groupWords) {
        if (cmd.words.has(other)) {
          this.fail(line, col, `${verb}: ${q(other)} and ${q(word)} exclude each other (give one of ${groupWords.join('|')})`);
        }
      }
    }
    cmd.words.add(word);
  }

  /** A key or word that only one kind of trace accepts. */
  private scoped(info: VerbInfo, name: string, line: number, col: number): void {
    const { spec } = info;
    if (this.kind === 'machine' && spec.vmOnly?.includes(name)) {
      this.fail(line, col, `${info.name}: ${q(name)} is only for VM-level traces (ones that start with 'vm')`);
    }
    const why = this.kind === 'vm' ? spec.machineOnly?.[name] : undefined;
    if (why !== undefined) this.fail(line, col, `${info.name}: ${q(name)} is only for hardware-level traces: in a VM-level trace ${why}`);
  }

  /** Whole-command checks, once every argument of the line has been read. */
  private finish(info: VerbInfo, cmd: Command): void {
    const { spec } = info;
    const verb = cmd.verb;
    const line = cmd.line;
    if (spec.required !== undefined) {
      for (const key of spec.required) {
        if (!cmd.args.has(key)) this.fail(line, cmd.col, `${verb}: missing required key '${key}'`);
      }
    }
    if (spec.requiredWords !== undefined && spec.words !== undefined) {
      for (const g of spec.requiredWords) {
        const group = spec.words[g];
        let found = false;
        for (const w of group) if (cmd.words.has(w)) found = true;
        if (!found) this.fail(line, cmd.col, `${verb}: expected one of the words ${group.join('|')}`);
      }
    }

    // Semantic checks.
    if (verb === 'machine' || verb === 'vm') {
      if (this.machineLine !== 0) {
        this.fail(line, cmd.col, this.kind === verb
          ? `${verb} may appear only once (first at line ${this.machineLine})`
          : `${verb}: a trace is either hardware-level ('machine') or VM-level ('vm'); this one started with '${this.kind}' at line ${this.machineLine}`);
      }
      this.machineLine = line;
      this.kind = verb;
      const vcpus = cmd.args.get('vcpus');
      if (vcpus !== undefined) this.vcpus = vcpus.value as number;
      const maxphyaddr = cmd.args.get('maxphyaddr');
      if (maxphyaddr !== undefined) this.maxphyaddr = maxphyaddr.value as number;
    } else if (this.machineLine === 0) {
      this.fail(line, cmd.col, `expected a 'machine' or 'vm' command first, got '${verb}'`);
    } else if (spec.scope !== undefined && spec.scope !== this.kind) {
      this.fail(line, cmd.col, spec.scope === 'vm'
        ? `${verb}: only in VM-level traces (ones that start with 'vm'); this one starts with 'machine'`
        : `${verb}: only in hardware-level traces (ones that start with 'machine'); this one starts with 'vm'`);
    } else if (verb === 'expect') {
      if (!this.sawSubject) {
        this.fail(line, cmd.col, `expect: nothing to check yet (expect must follow the command whose result it checks)`);
      }
    } else if (!verb.startsWith('expect ')) {
      this.sawSubject = true;
    }

    const vcpu = cmd.args.get('vcpu');
    if (vcpu !== undefined && (vcpu.value as number) >= this.vcpus) {
      this.fail(
        vcpu.line,
        vcpu.col,
        `${verb}: vcpu ${vcpu.value as number} does not exist (${this.kind} has ${this.vcpus} vcpu${this.vcpus === 1 ? '' : 's'}: 0..${this.vcpus - 1})`,
      );
    }

    if (HPA_VERBS.has(verb)) {
      const hpa = cmd.args.get('hpa');
      if (hpa !== undefined) {
        const a = hpa.value as Long;
        if ((a.low & 7) !== 0) this.fail(hpa.line, hpa.col, `${verb}: hpa ${hex(a)} must be 8-byte aligned`);
        if (!a.shiftRightUnsigned(this.maxphyaddr).isZero()) {
          this.fail(
            hpa.line,
            hpa.col,
            `${verb}: hpa ${hex(a)} is beyond maxphyaddr ${this.maxphyaddr} (must be below ${hex(Long.UONE.shiftLeft(this.maxphyaddr))})`,
          );
        }
      }
    }

    this.commands.push(cmd);
  }
}

/**
 * Parses and validates a whole trace. `file` is used only in error messages.
 * Throws a TraceError (FILE:LINE:COL: message) on the first error.
 */
export function parseTrace(file: string, text: string): Trace {
  const p = new Parser(file);
  const n = text.length;
  let pos = n > 0 && text.charCodeAt(0) === 0xfeff ? 1 : 0; // byte-order mark
  let lineNo = 0;
  for (;;) {
    let nl = text.indexOf('\n', pos);
    if (nl < 0) nl = n;
    lineNo++;
    let end = nl;
    if (end > pos && text.charCodeAt(end - 1) === 13) end--; // CRLF
    p.line(text, pos, end, lineNo);
    if (nl >= n) break;
    pos = nl + 1;
  }
  if (p.commands.length === 0) {
    throw new TraceError(file, 1, 1, `empty trace: expected a 'machine' or 'vm' command first`);
  }
  const trace = { file, commands: p.commands };
  if (trace.commands[0].verb === 'vm') checkVmTrace(trace);
  return trace;
}

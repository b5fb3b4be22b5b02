/** Parsing the host-mm verbs of VM-level traces (docs/mm.md) and their whole-file checks. */
import { describe, expect, it } from 'vitest';
import { parseTrace } from '../../src/trace/parse.js';
import { usesMm } from '../../src/trace/vm_mm.js';
import { parseError } from '../support/trace_error.js';

const err = parseError;

const VM = 'vm tdp=ept memory=64K lru=mglru policy=v3-bitmap host_memory=32K swap=1M\n';

describe('host-mm verbs: parsing', () => {
  it('names the verbs and sub-verbs and reads their keys and words', () => {
    const t = parseTrace(
      't.trace',
      VM + 'reclaim pages=4 priority=3\nlru_age\nmprotect gpa=0 size=64K ro\npage_idle mark gpa=0x1000 size=8K\npage_idle read gpa=0\n' +
        'expect folio gpa=0x1000 lru=active gen=3 referenced=0 idle=1 young=0 dirty=1 swapped=0 workingset=0 mapped=1\n' +
        'expect lru gen0=1 max_seq=3 min_seq=0 nr_gens=4\nexpect data gpa=0 size=8K\nexpect data\n' +
        'expect counter evicted=0 refaults=0 swap_outs=0 swap_ins=0 kswapd_wakeups=0 lru_pages=0 notifier_calls=0 calls_clear_young=0 event_protection_vma=0\n',
    );
    expect(t.commands.map((c) => c.verb)).toEqual([
      'vm', 'reclaim', 'lru_age', 'mprotect', 'page_idle mark', 'page_idle read', 'expect folio', 'expect lru', 'expect data', 'expect data', 'expect counter',
    ]);
    expect(t.commands[0].args.get('policy')!.value).toBe('v3-bitmap');
    expect(t.commands[1].args.get('priority')!.value).toBe(3);
    expect([...t.commands[3].words]).toEqual(['ro']);
    expect(t.commands[6].args.get('lru')!.value).toBe('active');
    expect(usesMm(t)).toBe(true);
  });

  it('a VM trace without host-mm keys or verbs does not switch the layer on', () => {
    expect(usesMm(parseTrace('t.trace', 'vm tdp=ept\naccess gva=0 read\nexpect counter exits=0\n'))).toBe(false);
    expect(usesMm(parseTrace('t.trace', 'vm tdp=ept swap=4K\n'))).toBe(true);
    expect(usesMm(parseTrace('t.trace', 'vm tdp=ept\nexpect data\n'))).toBe(true);
  });

  it('refuses the verbs in hardware-level traces', () => {
    expect(err('machine mode=ept\nreclaim\n')).toMatch(/^t\.trace:2:1: reclaim: /);
    expect(err('machine mode=ept\nexpect folio gpa=0\n')).toMatch(/^t\.trace:2:/);
  });

  it('checks values and combinations before anything runs', () => {
    expect(err('vm tdp=ept lru=lifo\n')).toMatch(/^t\.trace:1:12: vm: lru must be one of/);
    expect(err('vm tdp=ept lru=classic policy=current\n')).toBe('t.trace:1:24: vm: policy= chooses how MGLRU asks KVM about young pages; it needs lru=mglru');
    expect(err('vm tdp=ept swap=0\n')).toBe('t.trace:1:12: vm: swap 0x0 is not a non-zero multiple of 4K (at most 64G)');
    expect(err('vm tdp=ept host_page=2m\nreclaim\n')).toBe('t.trace:2:1: reclaim: needs host_page=4k (the host-mm layer reclaims 4K folios only)');
    expect(err('vm tdp=ept\nexpect folio gpa=0 gen=1\n')).toBe("t.trace:2:20: expect folio: gen= is an MGLRU generation; this VM uses the classic LRU (lru=mglru on the vm line)");
    expect(err(VM + 'expect lru active=1\n')).toBe('t.trace:2:12: expect lru: active= counts a classic list; with lru=mglru check gen0..gen3, max_seq, min_seq, nr_gens');
    expect(err(VM + 'expect lru\n')).toBe('t.trace:2:1: expect lru: nothing to check (gen0..gen3, max_seq, min_seq, nr_gens)');
    expect(err(VM + 'page_idle read gpa=0x1000 size=100\n')).toBe('t.trace:2:27: page_idle read: size 0x64 is not a non-zero multiple of 4K');
    expect(err(VM + 'page_idle read size=4K\n')).toMatch(/^t\.trace:2:1: page_idle read: missing required key 'gpa'/);
    expect(err(VM + 'mprotect gpa=0 size=64K\n')).toMatch(/^t\.trace:2:1: mprotect: /);
    expect(err(VM + 'mprotect gpa=0x20000 size=64K rw\n')).toBe('t.trace:2:10: mprotect: ENOMEM: gpa 0x20000 of the range 0x20000+0x10000 is not mapped');
    expect(err(VM + 'expect folio gpa=0x10000\n')).toBe('t.trace:2:14: expect folio: gpa 0x10000 is not in a memslot');
    expect(err('vm tdp=ept\nguest map gva=0 gpa=0\nreclaim\n')).toBe(
      't.trace:2:1: guest map: guest page tables would be reclaimed (reclaim at line 3), and swap keeps data tokens, not bytes; run the guest with paging off (cpu cr0=0x11), see docs/mm.md section 5',
    );
    expect(err(VM + 'guest identity size=64K\n')).toMatch(/^t\.trace:2:1: guest identity: guest page tables would be reclaimed \(host_memory= at line 1\)/);
    expect(err(VM + 'expect counter swap_outz=1\n')).toMatch(/^t\.trace:2:16: expect counter: unknown key 'swap_outz'/);
  });
});

describe('ksm_merge: parsing and checks', () => {
  const V = 'vm tdp=ept memory=64K\n';
  it('reads gpa and size, and counts as a host-mm verb', () => {
    const t = parseTrace('t.trace', V + 'ksm_merge gpa=0x1000 size=8K\nexpect folio gpa=0x1000 ksm=1 mapcount=2\nexpect counter ksm_pages_shared=1 ksm_pages_sharing=1 cow_copies=0\n');
    expect(t.commands[1].args.get('gpa')!.value.toString()).toBe('4096');
    expect(t.commands[1].args.get('size')!.value.toString()).toBe('8192');
    expect(usesMm(t)).toBe(true);
  });

  it('refuses bad ranges, missing keys and huge host pages before anything runs', () => {
    expect(err(V + 'ksm_merge gpa=0x1000\n')).toMatch(/^t\.trace:2:1: ksm_merge: missing required key 'size'/);
    expect(err(V + 'ksm_merge gpa=0x1001 size=4K\n')).toMatch(/^t\.trace:2:11: ksm_merge: /);
    expect(err(V + 'ksm_merge gpa=0x20000 size=4K\n')).toMatch(/^t\.trace:2:11: ksm_merge: ENOMEM: gpa 0x20000 of the range 0x20000\+0x1000 is /);
    expect(err('vm tdp=ept memory=4M host_page=2m\nksm_merge gpa=0 size=4K\n')).toBe('t.trace:2:1: ksm_merge: needs host_page=4k (the host-mm layer reclaims 4K folios only)');
    expect(err(V + 'munmap gpa=0 size=8K\nksm_merge gpa=0 size=8K\n')).toMatch(/^t\.trace:3:11: ksm_merge: ENOMEM: gpa 0x0 of the range 0x0\+0x2000 is .*line 2/);
  });
});

describe('fork, child_write, child_exit: parsing and checks', () => {
  const V = 'vm tdp=ept memory=64K\n';
  it('reads the verbs and their keys, and counts as host-mm verbs', () => {
    const t = parseTrace(
      't.trace',
      V + 'fork\nchild_write gpa=0x1000\nchild_write hva=0x7f0000002000\nchild_exit\nfork\n' +
        'expect counter forks=2 fork_ptes=0 fork_swap_entries=0 kept_shared=0 cow_copies=0 event_protection_page=0\n',
    );
    expect(t.commands.map((c) => c.verb)).toEqual(['vm', 'fork', 'child_write', 'child_write', 'child_exit', 'fork', 'expect counter']);
    expect(t.commands[2].args.get('gpa')!.value.toString()).toBe('4096');
    expect(t.commands[3].args.get('hva')!.value.toString()).toBe(String(0x7f00_0000_2000));
    expect(usesMm(parseTrace('t.trace', V + 'fork\n'))).toBe(true);
  });

  it('refuses a second child, a child verb with no child, bad addresses, huge host pages and MGLRU before anything runs', () => {
    expect(err(V + 'fork\nfork\n')).toBe("t.trace:3:1: fork: the child forked at line 2 is still alive; one child at a time ('child_exit' first)");
    expect(err(V + 'child_write gpa=0\n')).toBe("t.trace:2:1: child_write: no child (no 'fork' before, or it has exited)");
    expect(err(V + 'fork\nchild_exit\nchild_exit\n')).toBe("t.trace:4:1: child_exit: no child (no 'fork' before, or it has exited)");
    expect(err(V + 'fork\nchild_exit\nchild_write gpa=0\n')).toBe("t.trace:4:1: child_write: no child (no 'fork' before, or it has exited)");
    expect(err(V + 'fork\nchild_write\n')).toBe("t.trace:3:1: child_write: give the address as gpa= (the child's copy of guest memory) or hva=, one of them");
    expect(err(V + 'fork\nchild_write gpa=0 hva=0x10000\n')).toBe("t.trace:3:1: child_write: give the address as gpa= (the child's copy of guest memory) or hva=, one of them");
    expect(err(V + 'fork\nchild_write hva=0x1000\n')).toBe('t.trace:3:13: child_write: hva 0x1000 is not a user address (0x10000..0x7ffffffff000)');
    expect(err(V + 'fork\nchild_write gpa=0x1_0000_0000_0000\n')).toMatch(/^t\.trace:3:13: child_write: gpa 0x1000000000000 is beyond /);
    expect(err(V + 'fork\nchild_write gpa=0 size=4K\n')).toMatch(/^t\.trace:3:19: child_write: unknown key 'size'/);
    expect(err(V + 'fork now\n')).toMatch(/^t\.trace:2:6: fork: /);
    expect(err('vm tdp=ept memory=4M host_page=2m\nfork\n')).toBe(
      't.trace:2:1: fork: needs host_page=4k (fork copies 4K page tables only: copy_huge_pmd and the THP split a COW needs are not modelled)',
    );
    expect(err('vm tdp=ept memory=64K lru=mglru\nfork\n')).toMatch(/^t\.trace:2:1: fork: not modelled with lru=mglru/);
    expect(err('machine mode=ept\nfork\n')).toMatch(/^t\.trace:2:1: fork: /);
  });
});

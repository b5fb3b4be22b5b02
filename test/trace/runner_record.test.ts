/**
 * What the runner records for an access: the access's own result, even
 * when the host mm's balancing after it (kswapd reclaim -> zap -> KVM's
 * remote TLB flush, an INVEPT that reuses the vCPU's result) runs before
 * the next command.
 */
import { describe, expect, it } from 'vitest';
import { parseTrace } from '../../src/trace/parse.js';
import { Runner } from '../../src/trace/runner.js';

describe('trace runner records', () => {
  it('an access that makes kswapd reclaim (and KVM flush) keeps its own outcome, refs and tlb', () => {
    const lines = ['vm tdp=ept memory=64K host_memory=8K lru=classic tlb=on', 'cpu cr0=0x11'];
    for (let p = 0; p < 2; p++) lines.push(`access gva=0x${(p * 0x1000).toString(16)} write`);
    // The third resident page exceeds host_memory: balance() reclaims after this access; its final walk was 4 EPT refs.
    // kswapd wakes once; it swaps out all three pages (one batch covers this small LRU), and each unmap's
    // invalidation makes KVM zap and flush: 3 remote TLB flushes, all after line 5's access completed.
    lines.push('access gva=0x2000 write', 'expect result=ok refs=4 tlb=miss', 'expect counter kswapd_wakeups=1 remote_tlb_flush=3');
    const out: string[] = [];
    const report = new Runner(parseTrace('t.trace', lines.join('\n')), { out: (l) => out.push(l) }).run();
    expect(report.failures).toEqual([]);
    expect(out[out.length - 1]).toBe('5: vcpu0 write 0x2000 -> ok hpa=0x1006000 gpa=0x2000  exits=1');
    expect(report.last).toMatchObject({ line: 5, op: 'access', result: 'ok', exits: 1 });
  });
});

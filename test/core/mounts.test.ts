import { describe, expect, it } from 'vitest';
import { computeMounts, dedupeLowers } from '../../src/core/stack/mounts.js';

const L = (n: string) => ({ overlay: `/r/l/${n}`, real: `/real/${n}` });

describe('mount computation (containerd overlay rules)', () => {
  it('binds its own directory when there are no lowers', () => {
    expect(computeMounts({ readonly: false, fs: '/s/1/fs', work: '/s/1/work', lowers: [], indexOff: true })).toEqual([
      { type: 'bind', source: '/s/1/fs', options: ['rw', 'rbind'] },
    ]);
    expect(computeMounts({ readonly: true, fs: '/s/1/fs', lowers: [], indexOff: true })[0]!.options).toEqual(['ro', 'rbind']);
  });
  it('binds the single lower of a view read-only (its real directory)', () => {
    expect(computeMounts({ readonly: true, fs: '/s/2/fs', lowers: [L('a')], indexOff: false })).toEqual([
      { type: 'bind', source: '/real/a', options: ['ro', 'rbind'] },
    ]);
  });
  it('gives an active snapshot an overlay with upper/work and lowers nearest first', () => {
    const [m] = computeMounts({ readonly: false, fs: '/s/3/fs', work: '/s/3/work', lowers: [L('b'), L('a')], indexOff: true });
    expect(m).toEqual({ type: 'overlay', source: 'overlay', options: ['index=off', 'workdir=/s/3/work', 'upperdir=/s/3/fs', 'lowerdir=/r/l/b:/r/l/a'] });
  });
  it('gives a multi-layer view a lowerdir-only (read-only) overlay', () => {
    const [m] = computeMounts({ readonly: true, fs: '/s/4/fs', lowers: [L('b'), L('a')], indexOff: false });
    expect(m!.options).toEqual(['lowerdir=/r/l/b:/r/l/a']);
  });
  it('drops repeated lowers keeping the topmost', () => {
    expect(dedupeLowers([L('a'), L('b'), L('a'), L('c')]).map((l) => l.real)).toEqual(['/real/a', '/real/b', '/real/c']);
  });
  it('keeps 500 short-link lowers within what containerd can mount (4 KiB page after compaction)', () => {
    const lowers = Array.from({ length: 500 }, (_, i) => ({ overlay: `/var/lib/containerd-cvmfs-grpc/l/${(i + 100000).toString(36)}`, real: `/x/${i}` }));
    const [m] = computeMounts({
      readonly: false,
      fs: '/var/lib/containerd-cvmfs-grpc/snapshots/99999/fs',
      work: '/var/lib/containerd-cvmfs-grpc/snapshots/99999/work',
      lowers,
      indexOff: true,
    });
    // containerd's compactLowerdirOption strips the common parent directory of the lowerdirs
    const opts = m!.options.map((o) => (o.startsWith('lowerdir=') ? o.replaceAll('/var/lib/containerd-cvmfs-grpc/l/', '') : o));
    expect(opts.join(',').length).toBeLessThan(4096);
  });
  it('refuses paths that would corrupt the option string', () => {
    expect(() => computeMounts({ readonly: false, fs: '/a:b', work: '/w', lowers: [L('a')], indexOff: false })).toThrow(/':' or ','/);
    expect(() => computeMounts({ readonly: false, fs: '/a', work: '/w', lowers: [{ overlay: '/x,y', real: '/x' }], indexOff: false })).toThrow();
  });
});

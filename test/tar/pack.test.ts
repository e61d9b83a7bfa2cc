/**
 * Packing: exact round trips (pack → extract → same tree), GNU tar
 * compatibility, determinism, overlay whiteouts → AUFS-style entries,
 * reverse id maps, change lists, and in-memory entries.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { lsetxattr, lutimesNs, mkWhiteout } from '../../src/core/host/sys.js';
import { packDirectory, packEntries, packEntriesToBuffer } from '../../src/core/tar/index.js';
import { TarParser } from '../../src/core/tar/parser.js';
import type { TarHeader } from '../../src/core/tar/headers.js';
import { needs, tempDir } from '../helpers/env.js';
import { buildFixtureTree, collect, extractBuf, snapshot } from './helpers.js';

const base = tempDir('cvmfs-thin-pack-');
let n = 0;
const fresh = (): string => {
  const d = path.join(base, `d${n++}`);
  fs.mkdirSync(d);
  return d;
};

/** Headers of a tar, in order (names as text). */
function headers(buf: Buffer): (TarHeader & { data: Buffer })[] {
  const out: (TarHeader & { data: Buffer })[] = [];
  let cur: (TarHeader & { data: Buffer }) | null = null;
  const p = new TarParser({
    entry: (h) => {
      cur = { ...h, name: Buffer.from(h.name, 'latin1').toString('utf8'), data: Buffer.alloc(0) };
      out.push(cur);
    },
    data: (b, s, e) => {
      cur!.data = Buffer.concat([cur!.data, b.subarray(s, e)]);
    },
    entryEnd: () => undefined,
  });
  p.push(buf);
  p.end();
  expect(p.ended).toBe(true);
  return out;
}

describe.skipIf(needs({ root: 'mknod of devices, chown to other uids, security.* and trusted.* xattrs', binaries: ['setfattr', 'mknod'] }))(
  'packDirectory round trip',
  () => {
    // built in a hook, not while collecting: an unprivileged run skips this block and must not build it
    let src = '';
    beforeAll(() => {
      src = buildFixtureTree(fresh());
    });

    it('pack → extract gives the same tree (types, modes, owners, sizes, content, links, xattrs, ns mtimes)', async () => {
      const buf = await collect(packDirectory(src, { includeRoot: true }));
      const dest = fresh();
      await extractBuf(buf, { dest, whiteouts: 'keep' });
      // trusted.* xattrs are packed but never extracted (like containerd's archive.Apply)
      const noTrusted = { root: true, ignoreXattrs: (x: string) => x.startsWith('trusted.') };
      expect(snapshot(dest, noTrusted)).toEqual(snapshot(src, noTrusted));
      expect(snapshot(dest, { root: true })['dir']!.xattrs?.['trusted.thin']).toBeUndefined();
    });

    it('GNU tar reads it to the same tree', async () => {
      const buf = await collect(packDirectory(src, { includeRoot: true }));
      const f = path.join(base, 'ours.tar');
      fs.writeFileSync(f, buf);
      const dest = fresh();
      execFileSync('tar', ['--xattrs', '--xattrs-include=*', '--numeric-owner', '-xpf', f, '-C', dest]);
      expect(snapshot(dest, { root: true })).toEqual(snapshot(src, { root: true }));
    });

    it('is deterministic, in filepath.Walk order, hardlinks as links, no root entry by default', async () => {
      const a = await collect(packDirectory(src));
      const b = await collect(packDirectory(src));
      expect(a.equals(b)).toBe(true);
      const hs = headers(a);
      const names = hs.map((h) => h.name);
      expect(names[0]).not.toBe('./');
      // depth-first, each directory's names in byte order
      const idx = (x: string): number => names.indexOf(x);
      expect(idx('dir/')).toBeLessThan(idx('dir/file'));
      expect(idx('dir/file')).toBeLessThan(idx('empty'));
      const hard = hs.filter((h) => h.type === 'link').map((h) => [h.name, Buffer.from(h.linkname, 'latin1').toString()]);
      expect(hard).toEqual(
        expect.arrayContaining([
          ['hard', 'dir/file'],
          ['sym', 'hardsym'],
        ]),
      );
      expect(hs.find((h) => h.name === 'chr')).toMatchObject({ type: 'char', devmajor: 1, devminor: 3 });
      expect(hs.find((h) => h.name === 'blk')).toMatchObject({ type: 'block', devmajor: 7, devminor: 200 });
    });
  },
);

describe('packDirectory options', () => {
  it.skipIf(needs({ root: 'trusted.overlay.* xattrs' }))(
    "whiteouts: 'overlay' turns char 0/0 into .wh.<name> and opaque dirs into .wh..wh..opq; trusted.overlay.* is never emitted",
    async () => {
      const upper = fresh();
      fs.mkdirSync(path.join(upper, 'etc'));
      fs.writeFileSync(path.join(upper, 'etc/new'), 'n');
      mkWhiteout(path.join(upper, 'etc/gone'));
      fs.mkdirSync(path.join(upper, 'opq'), { mode: 0o750 });
      lsetxattr(path.join(upper, 'opq'), 'trusted.overlay.opaque', 'y');
      fs.writeFileSync(path.join(upper, 'opq/kept'), 'k');
      lsetxattr(path.join(upper, 'etc/new'), 'trusted.overlay.origin', Buffer.from([0, 1, 2]));
      lsetxattr(path.join(upper, 'etc/new'), 'user.keep', 'me');
      // overlayfs may share one whiteout inode (nlink > 1): still whiteouts, not hardlinks
      fs.linkSync(path.join(upper, 'etc/gone'), path.join(upper, 'etc/gone2'));

      const buf = await collect(packDirectory(upper, { whiteouts: 'overlay' }));
      const hs = headers(buf);
      expect(hs.map((h) => `${h.type} ${h.name}`)).toEqual([
        'dir etc/',
        'file etc/.wh.gone',
        'file etc/.wh.gone2',
        'file etc/new',
        'dir opq/',
        'file opq/.wh..wh..opq',
        'file opq/kept',
      ]);
      expect(hs[1]).toMatchObject({ mode: 0o600, size: 0 });
      expect(hs[5]).toMatchObject({ mode: 0o750, size: 0 });
      expect([...(hs[3]!.xattrs?.keys() ?? [])]).toEqual(['user.keep']);
      expect(hs[4]!.xattrs).toBeNull();

      // and back: extracting in overlay mode rebuilds the upper dir (minus trusted.overlay.origin)
      const dest = fresh();
      await extractBuf(buf, { dest, whiteouts: 'overlay' });
      const want = snapshot(upper, { nlink: false, ignoreXattrs: (x) => x === 'trusted.overlay.origin' });
      expect(snapshot(dest, { nlink: false })).toEqual(want);

      // 'none' packs the devices as they are, still without trusted.overlay.*
      const raw = headers(await collect(packDirectory(upper)));
      expect(raw.find((h) => h.name === 'etc/gone')).toMatchObject({ type: 'char', devmajor: 0, devminor: 0 });
      expect(raw.some((h) => [...(h.xattrs?.keys() ?? [])].some((k) => k.startsWith('trusted.overlay.')))).toBe(false);
    },
  );

  it.skipIf(needs({ root: 'chown to other uids' }))('idMap maps host ids back to container ids; ids outside the map are an error', async () => {
    const d = fresh();
    fs.writeFileSync(path.join(d, 'f'), 'x');
    fs.chownSync(path.join(d, 'f'), 101000, 101001);
    const idMap = { uids: [{ containerId: 0, hostId: 100000, size: 65536 }], gids: [{ containerId: 0, hostId: 100000, size: 65536 }] };
    const hs = headers(await collect(packDirectory(d, { idMap })));
    expect(hs[0]).toMatchObject({ name: 'f', uid: 1000, gid: 1001 });
    fs.chownSync(path.join(d, 'f'), 5, 5);
    await expect(collect(packDirectory(d, { idMap }))).rejects.toMatchObject({ code: 'CVMFS_THIN_UNMAPPED_ID' });
  });

  it('changes: only the listed paths, deletions as whiteouts, sorted', async () => {
    const d = fresh();
    fs.mkdirSync(path.join(d, 'a/b'), { recursive: true });
    fs.writeFileSync(path.join(d, 'a/b/c'), 'c');
    fs.writeFileSync(path.join(d, 'a/other'), 'o');
    const hs = headers(
      await collect(
        packDirectory(d, {
          changes: [
            { path: '/a/b/c', kind: 'add' },
            { path: '/a/removed', kind: 'delete' },
            { path: '/a', kind: 'modify' },
          ],
        }),
      ),
    );
    expect(hs.map((h) => `${h.type} ${h.name} ${h.size}`)).toEqual(['dir a/ 0', 'file a/b/c 1', 'file a/.wh.removed 0']);
  });

  it.skipIf(needs({ root: 'chown to other uids' }))('big ids, long and non-UTF-8 names, sub-second and pre-1970 mtimes round-trip via PAX', async () => {
    const d = fresh();
    const long = path.join(d, 'x'.repeat(200), 'y'.repeat(200));
    fs.mkdirSync(path.dirname(long));
    fs.writeFileSync(long, 'long');
    fs.chownSync(long, 3_000_000, 4_000_000);
    const latin = Buffer.from(path.join(d, 'caf') + '\xe9', 'latin1');
    fs.writeFileSync(latin, 'latin1');
    execFileSync('touch', ['-d', '1960-01-01 00:00:00.75', long]);
    lutimesNs(latin, 1_893_456_000, 1, 1_893_456_000, 1);
    const buf = await collect(packDirectory(d));
    const dest = fresh();
    await extractBuf(buf, { dest, whiteouts: 'keep' });
    // a time before 1970 is packed as it is (below) but extracted as 1970-01-01, like containerd and Docker
    const want = snapshot(d);
    want[`${'x'.repeat(200)}/${'y'.repeat(200)}`]!.mtimeNs = '0';
    expect(snapshot(dest)).toEqual(want);
    expect(Object.keys(snapshot(d))).toHaveLength(3);
    expect(snapshot(dest)['hex:636166e9']).toMatchObject({ mtimeNs: '1893456000000000001', size: 6 });
    const hs = headers(buf);
    expect(hs.find((h) => h.name.endsWith('y'.repeat(200)))).toMatchObject({ uid: 3_000_000, gid: 4_000_000, mtime: { sec: -315619200, nsec: 750_000_000 } });
  });

  it('a file that shrinks while being packed is an error, not a corrupt tar', async () => {
    const d = fresh();
    fs.writeFileSync(path.join(d, 'f'), Buffer.alloc(3 << 20));
    const r = packDirectory(d);
    const parts: Buffer[] = [];
    const err = await (async () => {
      for await (const c of r) {
        parts.push(c as Buffer);
        if (parts.length === 2) fs.truncateSync(path.join(d, 'f'), 10);
      }
    })().catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'CVMFS_THIN_TAR_IO', entry: 'f' });
  });
});

describe('packEntries', () => {
  it('is deterministic (mtime 0, uid/gid 0) and extracts to the given content', async () => {
    const entries = [
      { name: 'thin.json', data: '{"version":"1.0","layers":[]}\n' },
      { name: 'dir/' },
      { name: 'dir/link', type: 'symlink' as const, linkname: '../thin.json' },
      { name: `ünïcode/${'n'.repeat(150)}`, data: new Uint8Array([1, 2, 3]), mode: 0o600 },
    ];
    const a = await collect(packEntries(entries));
    const b = await collect(packEntries(entries));
    expect(a.equals(b)).toBe(true);
    expect(a.length % 512).toBe(0);
    const hs = headers(a);
    expect(hs.map((h) => [h.name, h.type, h.mode, h.uid, h.gid, h.mtime.sec])).toEqual([
      ['thin.json', 'file', 0o644, 0, 0, 0],
      ['dir/', 'dir', 0o755, 0, 0, 0],
      ['dir/link', 'symlink', 0o777, 0, 0, 0],
      [`ünïcode/${'n'.repeat(150)}`, 'file', 0o600, 0, 0, 0],
    ]);
    const dest = fresh();
    await extractBuf(a, { dest, whiteouts: 'keep', preserveOwnership: false });
    expect(fs.readFileSync(path.join(dest, 'thin.json'), 'utf8')).toBe('{"version":"1.0","layers":[]}\n');
    expect(fs.readFileSync(path.join(dest, 'dir/link'), 'utf8')).toBe('{"version":"1.0","layers":[]}\n');
    expect([...fs.readFileSync(path.join(dest, `ünïcode/${'n'.repeat(150)}`))]).toEqual([1, 2, 3]);
    // GNU tar agrees
    const listing = execFileSync('tar', ['-tvf', '-'], { input: a }).toString();
    expect(listing).toContain('-rw-r--r-- 0/0              30 1970-01-01 00:00 thin.json');
  });

  it('refuses a symlink without a target', () => {
    expect(() => packEntries([{ name: 'l', type: 'symlink' }])).toThrow(/linkname/);
  });

  it('stamps a given mtime (negative ones through PAX), refuses a fractional one; the buffer form is the same tar', async () => {
    const t = Date.parse('2024-01-01T00:00:00Z') / 1000;
    const buf = packEntriesToBuffer([
      { name: 'a', data: 'x', mtime: t },
      { name: 'old', data: 'y', mtime: -86_400 },
    ]);
    expect(
      buf.equals(
        await collect(
          packEntries([
            { name: 'a', data: 'x', mtime: t },
            { name: 'old', data: 'y', mtime: -86_400 },
          ]),
        ),
      ),
    ).toBe(true);
    expect(headers(buf).map((h) => [h.name, h.mtime.sec])).toEqual([
      ['a', t],
      ['old', -86_400],
    ]);
    expect(execFileSync('tar', ['-tvf', '-', '--utc'], { input: buf }).toString()).toMatch(/2024-01-01 00:00 a\n.*1969-12-31 00:00 old/s);
    expect(() => packEntriesToBuffer([{ name: 'a', mtime: 1.5 }])).toThrow(/"a": mtime 1.5 is not a whole number/);
  });
});

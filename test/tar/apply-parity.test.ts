/**
 * Parity with containerd's applier: every layer here is applied with
 * containerd 1.6's own `archive.Apply` (test/applyparity/applytool, built by
 * test/applyparity/build.sh) into one directory and with our extractor into
 * another, the way our callers use it ('overlay' whiteouts: the converter and
 * the graph driver's ApplyDiff, like containerd's overlay applier with
 * OverlayConvertWhiteout; 'apply': the naive graph driver, like
 * archive.Apply's default applier for plain directories), and the two trees
 * are compared entry by entry: type, mode, owner, mtime and atime, size,
 * content, symlink target, rdev, link count and shared inodes, xattrs.
 *
 * Where we differ on purpose (safety, Docker parity): apply-parity-deliberate.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { needs, tempDir } from '../helpers/env.js';
import { CAP, gnuLong, paxEntry, rawEntry, tar } from './helpers.js';
import { APPLYTOOL, expectBothFail, expectParity, gnuAtime, gnuTar, LOWER, T1, T2, T3 } from './parity-helpers.js';

const noTool = needs({ binaries: [APPLYTOOL] });
const skip = noTool ?? needs({ root: "containerd's archive.Apply chowns every entry to the owner in the tar" });
const cap = Buffer.from(CAP.slice(2), 'hex');
const MODES = ['overlay', 'apply'] as const;

describe.skipIf(noTool)("parity with containerd's archive.Apply", () => {
  const base = tempDir('cvmfs-thin-applyparity-');

  describe.skipIf(skip).each(MODES)('every entry type (%s whiteouts)', (mode) => {
    it('files, dirs, symlinks, devices, fifos with owners, special modes and times', async () => {
      const layer = tar(
        rawEntry({ name: 'd/', type: '5', mode: 0o2755, uid: 2000, gid: 2001, mtime: T1 }),
        rawEntry({ name: 'd/f', mode: 0o640, uid: 1000, gid: 1001, mtime: T2 }, 'hello'),
        rawEntry({ name: 'd/empty', mode: 0o000, mtime: T2 }),
        rawEntry({ name: 'd/big', mode: 0o644, mtime: T2 }, Buffer.alloc(70_000, 7)),
        rawEntry({ name: 'd/implicit/in-setgid', mtime: T2 }, 'the implicit parent inherits the group, not the setgid bit'),
        rawEntry({ name: 'suid', mode: 0o4755, uid: 3, gid: 4, mtime: T2 }, '#!/bin/sh\n'),
        rawEntry({ name: 'sgid', mode: 0o2711, mtime: T2 }, 's'),
        rawEntry({ name: 'tmp/', type: '5', mode: 0o1777, mtime: T3 }),
        rawEntry({ name: 'abs', type: '2', linkname: '/etc/passwd', uid: 5, gid: 6, mtime: T1 }),
        rawEntry({ name: 'rel', type: '2', linkname: 'd/f', mtime: T1 }),
        rawEntry({ name: 'dangling', type: '2', linkname: 'nowhere/x', mtime: T1 }),
        rawEntry({ name: 'null', type: '3', mode: 0o666, devmajor: 1, devminor: 3, mtime: T1 }),
        rawEntry({ name: 'sda', type: '4', mode: 0o660, gid: 6, devmajor: 8, devminor: 1, mtime: T1 }),
        rawEntry({ name: 'dev0', type: '3', mode: 0o600, devmajor: 0, devminor: 0, mtime: T1 }),
        rawEntry({ name: 'fifo', type: '6', mode: 0o4620, uid: 9, mtime: T1 }),
        rawEntry({ name: 'typebits', mode: 0o100755, mtime: T1 }, 'mode field with S_IFREG'),
        rawEntry({ name: 'areg', type: '\0', mtime: T1 }, 'old-style regular file'),
        rawEntry({ name: 'aregdir/', type: '\0', mode: 0o700, mtime: T1 }),
        rawEntry({ name: 'regslash/', mode: 0o644, mtime: T1 }, 'type 0 with a trailing slash is a file'),
        rawEntry({ name: 'gnufmt', format: 'gnu', mtime: T1 }, 'gnu'),
        rawEntry({ name: 'v7fmt', format: 'v7', mtime: T1 }, 'v7'),
        rawEntry({ name: 'pre', prefix: 'some/prefix', mtime: T1 }, 'ustar prefix'),
      );
      const t = await expectParity(base, `types-${mode}`, [layer], mode);
      expect(t['d']).toMatchObject({ mode: 0o2755, uid: 2000, gid: 2001, mtime: String(BigInt(T1) * 1_000_000_000n) });
      expect(t['suid']!.mode).toBe(0o4755);
      expect(t['regslash']!.type).toBe('file');
      expect(t['d/implicit']).toMatchObject({ mode: 0o755, uid: 0, gid: 2001 });
      expect(t['aregdir']!.type).toBe('dir');
    });

    it('hardlinks: the last entry wins on the shared inode (owner, mode, times, xattrs)', async () => {
      const layer = tar(
        paxEntry([
          ['SCHILY.xattr.user.a', 'target'],
          ['SCHILY.xattr.security.capability', cap],
        ]),
        rawEntry({ name: 't', mode: 0o4755, uid: 1, gid: 1, mtime: T1 }, 'shared'),
        paxEntry([
          ['SCHILY.xattr.user.b', 'link'],
          ['mtime', `${T2}.123456789`],
        ]),
        rawEntry({ name: 'l', type: '1', linkname: 't', mode: 0o640, uid: 2, gid: 3, mtime: T2 }),
        // a chain: a link to a link, then a link to the first name again
        rawEntry({ name: 'chain/c1', type: '1', linkname: 'l', mode: 0o600, uid: 4, gid: 4, mtime: T3 }),
        rawEntry({ name: './chain/c2', type: '1', linkname: './chain/c1', mode: 0o2750, uid: 5, gid: 6, mtime: T1 }),
        // a link to a file later overwritten: the link keeps the old inode
        rawEntry({ name: 'over', mode: 0o644, mtime: T1 }, 'first'),
        rawEntry({ name: 'over-link', type: '1', linkname: 'over', mode: 0o444, mtime: T2 }),
        rawEntry({ name: 'over', mode: 0o600, mtime: T3 }, 'second'),
        // links to a symlink, a fifo and a device; absolute link names stay inside
        rawEntry({ name: 'sym', type: '2', linkname: 'over', mtime: T1 }),
        rawEntry({ name: 'sym-link', type: '1', linkname: '/sym', uid: 8, gid: 8, mtime: T2 }),
        rawEntry({ name: 'pipe', type: '6', mode: 0o600, mtime: T1 }),
        paxEntry([['SCHILY.xattr.user.c', 'dropped on a fifo']]),
        rawEntry({ name: 'pipe-link', type: '1', linkname: 'pipe', mode: 0o606, mtime: T2 }),
        rawEntry({ name: 'cdev', type: '3', mode: 0o600, devmajor: 1, devminor: 5, mtime: T1 }),
        rawEntry({ name: 'cdev-link', type: '1', linkname: 'cdev', mode: 0o666, mtime: T3 }),
        // a link entry without the capability the target had: containerd's lchown drops it
        paxEntry([['SCHILY.xattr.security.capability', cap]]),
        rawEntry({ name: 'capped', mode: 0o755, mtime: T1 }, 'cap'),
        rawEntry({ name: 'capped-link', type: '1', linkname: 'capped', mode: 0o755, mtime: T1 }),
        // a link replacing an existing file, and a link entry naming itself after its target
        rawEntry({ name: 'rep', mtime: T1 }, 'replaced'),
        rawEntry({ name: 'rep', type: '1', linkname: 't', mode: 0o700, uid: 11, gid: 12, mtime: T3 }),
      );
      const t = await expectParity(base, `hardlinks-${mode}`, [layer], mode);
      expect(t['t']).toMatchObject({ mode: 0o700, uid: 11, gid: 12, nlink: 5 });
      expect(t['t']!.sameInode!.sort()).toEqual(['chain/c1', 'chain/c2', 'l', 'rep']);
      expect(t['t']!.xattrs).toEqual({ 'user.a': Buffer.from('target').toString('hex'), 'user.b': Buffer.from('link').toString('hex') });
      expect(t['capped']!.xattrs).toBeUndefined();
      expect(t['over-link']).toMatchObject({ mode: 0o444, nlink: 1 });
    });

    it('PAX: long names, xattrs, precise and out-of-range times, large ids; GNU long names and atime', async () => {
      const long = `${'dir'.repeat(40)}/${'n'.repeat(200)}`;
      const layer = tar(
        paxEntry([['path', long]]),
        rawEntry({ name: 'ignored', mode: 0o640, mtime: 1 }, 'long'),
        paxEntry([
          ['mtime', `${T1}.987654321`],
          ['atime', `${T3}.5`],
          ['uid', '3000000'],
          ['gid', '3000001'],
        ]),
        rawEntry({ name: 'paxmeta', mode: 0o640, mtime: 1 }, 'meta'),
        paxEntry([
          ['linkpath', `/${long}`],
          ['path', 'long-link'],
        ]),
        rawEntry({ name: 'x', type: '1', linkname: 'y', mode: 0o600, mtime: T2 }),
        paxEntry([['linkpath', 't'.repeat(300)]]),
        rawEntry({ name: 'long-sym', type: '2', linkname: 'short', mtime: T1 }),
        paxEntry([
          ['SCHILY.xattr.user.text', 'v'],
          ['SCHILY.xattr.user.bin', Buffer.from([0, 0xc0, 0xff, 10])],
          ['SCHILY.xattr.security.capability', cap],
          ['SCHILY.xattr.trusted.overlay.opaque', 'y'],
          ['SCHILY.xattr.trusted.other', 'z'],
          ['atime', `${T1}`],
        ]),
        rawEntry({ name: 'xattrs', mode: 0o755, mtime: T2 }, 'x'),
        paxEntry([
          ['SCHILY.xattr.user.dir', 'd'],
          ['SCHILY.xattr.trusted.overlay.opaque', 'y'],
        ]),
        rawEntry({ name: 'xdir/', type: '5', mtime: T2 }),
        paxEntry([
          ['SCHILY.xattr.user.sym', 'dropped'],
          ['SCHILY.xattr.security.selinux', 'unconfined_u:object_r:tmp_t:s0'],
        ]),
        rawEntry({ name: 'xsym', type: '2', linkname: 'xattrs', mtime: T2 }),
        paxEntry([['mtime', '-1000.5']]),
        rawEntry({ name: 'before-1970', mtime: T1 }, 'b'),
        paxEntry([['mtime', '99999999999']]),
        rawEntry({ name: 'after-2262', mtime: T1 }, 'a'),
        paxEntry([
          ['mtime', `${T2}.000000001`],
          ['atime', `${T2}`],
        ]),
        rawEntry({ name: 'precise-dir/', type: '5', mtime: T1 }),
        gnuLong('L', `gnu/${'g'.repeat(150)}`),
        rawEntry({ name: 'gnu-ignored', format: 'gnu', mtime: T1 }, 'gnu long name'),
        gnuLong('L', 'gnu-link'),
        gnuLong('K', `gnu/${'g'.repeat(150)}`),
        rawEntry({ name: 'x', type: '1', format: 'gnu', mtime: T3 }),
        gnuLong('K', `../${'s'.repeat(200)}`),
        rawEntry({ name: 'gnu-sym', type: '2', format: 'gnu', mtime: T1 }),
        gnuAtime(rawEntry({ name: 'gnu-atime', format: 'gnu', mtime: T1 }, 'atime'), T3),
        gnuAtime(rawEntry({ name: 'gnu-atime-old', format: 'gnu', mtime: T2 }, 'atime'), T1),
      );
      const t = await expectParity(base, `pax-${mode}`, [layer], mode);
      expect(t[long]).toMatchObject({ mode: 0o600, mtime: `${T2}000000000`, sameInode: ['long-link'] });
      expect(t['paxmeta']).toMatchObject({ uid: 3000000, gid: 3000001, mtime: `${T1}987654321`, atime: `${T3}500000000` });
      expect(t['xattrs']!.atime).toBe(`${T2}000000000`);
      expect(t['before-1970']!.mtime).toBe('0');
      expect(t['gnu-atime']!.atime).toBe(`${T3}000000000`);
      expect(Object.keys(t['xattrs']!.xattrs!).sort()).toEqual(['security.capability', 'user.bin', 'user.text']);
    });

    it('order: directory entries after their children, implicit parents, duplicates (later wins), ./ prefixes', async () => {
      const layer = tar(
        rawEntry({ name: 'late/sub/f', mtime: T1 }, 'f'),
        rawEntry({ name: 'late/sub/', type: '5', mode: 0o700, mtime: T2 }),
        rawEntry({ name: './late/', type: '5', mode: 0o751, uid: 3, mtime: T3 }),
        rawEntry({ name: 'deep/implicit/parents/f', mtime: T1 }, 'f'),
        rawEntry({ name: 'dup', mode: 0o600, mtime: T1 }, 'one'),
        rawEntry({ name: './dup', mode: 0o644, uid: 1, mtime: T2 }, 'two'),
        rawEntry({ name: 'dupdir/', type: '5', mode: 0o700, mtime: T1 }),
        rawEntry({ name: 'dupdir/', type: '5', mode: 0o755, mtime: T2 }),
        rawEntry({ name: 'tosym', mtime: T1 }, 'file'),
        rawEntry({ name: '/tosym', type: '2', linkname: 'dup', mtime: T2 }),
        rawEntry({ name: 'becomes-dir', mtime: T1 }, 'file'),
        rawEntry({ name: 'becomes-dir/', type: '5', mode: 0o705, mtime: T2 }),
        rawEntry({ name: 'becomes-dir/child', mtime: T2 }, 'c'),
        rawEntry({ name: 'a//b/../c', mtime: T2 }, 'cleaned'),
        rawEntry({ name: '/../rooted', mtime: T2 }, 'absolute names stay inside'),
      );
      const t = await expectParity(base, `order-${mode}`, [layer], mode);
      expect(t['late']).toMatchObject({ mode: 0o751, uid: 3, mtime: `${T3}000000000` });
      expect(t['deep/implicit']).toMatchObject({ mode: 0o755, mtime: 'now' });
    });

    it('directories without write or search permission for the owner still get their content', async () => {
      const layer = tar(
        rawEntry({ name: 'ro/', type: '5', mode: 0o555, mtime: T1 }),
        rawEntry({ name: 'ro/f', mode: 0o444, mtime: T1 }, 'f'),
        rawEntry({ name: 'ro/sub/', type: '5', mode: 0o000, mtime: T2 }),
        rawEntry({ name: 'ro/sub/g', mtime: T2 }, 'g'),
        rawEntry({ name: 'ro/sub/h', type: '1', linkname: 'ro/f', mtime: T3 }),
      );
      const t = await expectParity(base, `readonly-${mode}`, [layer], mode);
      expect(t['ro']!.mode).toBe(0o555);
      expect(t['ro/sub']!.mode).toBe(0);
    });

    it('onto a lower tree: replacements, symlinked parents, merged directories', async () => {
      const layer = tar(
        rawEntry({ name: 'afile/', type: '5', mode: 0o700, mtime: T2 }),
        rawEntry({ name: 'afile/now-a-dir', mtime: T2 }, 'x'),
        rawEntry({ name: 'bdir', mode: 0o644, mtime: T2 }, 'now a file'),
        paxEntry([['SCHILY.xattr.user.merged', '1']]),
        rawEntry({ name: 'x/', type: '5', mode: 0o700, uid: 4, mtime: T3 }),
        rawEntry({ name: 'via/through-symlink', mtime: T2 }, 'lands in real/'),
        rawEntry({ name: 'etc/passwd-link', type: '1', linkname: '/etc/passwd', mode: 0o600, mtime: T3 }),
        rawEntry({ name: 'via-link', type: '1', linkname: 'via/through-symlink', uid: 6, mtime: T3 }),
        rawEntry({ name: 'via/', type: '5', mode: 0o700, mtime: T1 }),
        rawEntry({ name: 'via/now-a-dir', mtime: T1 }, 'the symlink was replaced'),
      );
      const t = await expectParity(base, `lower-${mode}`, [layer], mode, LOWER);
      expect(t['real/through-symlink']).toMatchObject({ type: 'file', uid: 6, sameInode: ['via-link'] });
      expect(t['via']!.type).toBe('dir');
      expect(t['etc/passwd']).toMatchObject({ mode: 0o600, nlink: 2 });
    });
  });

  it.skipIf(skip)('overlay whiteouts: .wh. → char 0/0 with the entry owner, opaque → trusted.overlay.opaque=y', async () => {
    const layer = tar(
      rawEntry({ name: 'd/', type: '5', mtime: T1 }),
      rawEntry({ name: 'd/.wh.gone', uid: 5, gid: 6, mtime: T2 }),
      rawEntry({ name: 'e/.wh..wh..opq', mtime: T2 }),
      rawEntry({ name: 'e/kept', mtime: T2 }, 'k'),
      rawEntry({ name: '.wh.top', mtime: T2 }),
      rawEntry({ name: 'f/', type: '5', mtime: T1 }),
      rawEntry({ name: 'f/.wh..wh..opq', mtime: T2 }),
    );
    const t = await expectParity(base, 'overlay-whiteouts', [layer], 'overlay');
    expect(t['d/gone']).toMatchObject({ type: 'char', rdev: '0', mode: 0, uid: 5, gid: 6 });
    expect(t['e']!.xattrs).toEqual({ 'trusted.overlay.opaque': '79' });
  });

  it.skipIf(skip)('apply whiteouts onto a lower tree: .wh. removes, opaque empties what the layer did not write', async () => {
    const layer = tar(
      rawEntry({ name: '.wh.gone', mtime: T2 }),
      rawEntry({ name: '.wh.gonedir', mtime: T2 }),
      rawEntry({ name: '.wh.never-there', mtime: T2 }),
      rawEntry({ name: 'o/', type: '5', mode: 0o755, mtime: T2 }),
      rawEntry({ name: 'o/new-before', mtime: T2 }, 'n'),
      rawEntry({ name: 'o/sub/', type: '5', mtime: T2 }),
      rawEntry({ name: 'o/sub/newer', mtime: T2 }, 'n'),
      rawEntry({ name: 'o/.wh..wh..opq', mtime: T2 }),
      rawEntry({ name: 'o/new-after', mtime: T2 }, 'n'),
      rawEntry({ name: 'bdir/.wh.inner', mtime: T2 }),
      rawEntry({ name: 'made-then-gone', mtime: T2 }, 'm'),
      rawEntry({ name: '.wh.made-then-gone', mtime: T2 }),
    );
    const t = await expectParity(base, 'apply-whiteouts', [layer], 'apply', LOWER);
    expect(t['gone']).toBeUndefined();
    expect(t['o/old']).toBeUndefined();
    expect(t['o/sub/deep']).toBeUndefined();
    expect(t['o/sub/newer']).toBeDefined();
  });

  it.skipIf(skip)('two layers applied in turn (apply whiteouts): the second replaces, removes and relinks', async () => {
    const one = tar(
      rawEntry({ name: 'k/', type: '5', mtime: T1 }),
      rawEntry({ name: 'k/f', mode: 0o644, mtime: T1 }, 'one'),
      rawEntry({ name: 'k/l', type: '1', linkname: 'k/f', mtime: T1 }),
    );
    const two = tar(rawEntry({ name: 'k/.wh.f', mtime: T2 }), rawEntry({ name: 'k/l2', type: '1', linkname: 'k/l', mode: 0o600, uid: 3, mtime: T2 }));
    await expectParity(base, 'two-layers', [one, two], 'apply');
  });

  it('both refuse: hardlinks to nothing or to a directory, old GNU sparse, unknown types, bad whiteout names', async () => {
    const cases: [string, Buffer][] = [
      ['link-missing', tar(rawEntry({ name: 'l', type: '1', linkname: 'missing' }))],
      ['link-dir', tar(rawEntry({ name: 'd/', type: '5' }), rawEntry({ name: 'l', type: '1', linkname: 'd' }))],
      ['type-V', tar(rawEntry({ name: 'vol', type: 'V' }))],
      ['wh-dot', tar(rawEntry({ name: 'a/.wh..' }))],
      ['wh-dotdot', tar(rawEntry({ name: 'a/.wh...' }))],
      ['wh-empty', tar(rawEntry({ name: 'a/.wh.' }))],
    ];
    for (const m of MODES) for (const [n, l] of cases) await expectBothFail(base, `${n}-${m}`, [l], m);
    const sparse = gnuTar(['--format=gnu', '--sparse']);
    await expectBothFail(base, 'gnu-sparse', [sparse], 'overlay');
  });
});

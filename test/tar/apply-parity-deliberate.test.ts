/**
 * Where our extractor differs from containerd's archive.Apply on purpose
 * (safety, Docker parity, or leniency where containerd fails on a harmless
 * layer). Each test applies the layer with both (see apply-parity.test.ts)
 * and checks both sides, so a change on either shows.
 */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { needs, tempDir } from '../helpers/env.js';
import { rawEntry, tar } from './helpers.js';
import { APPLYTOOL, applyBoth, gnuTar, LOWER, psnapshot, T1, T2, T3 } from './parity-helpers.js';

const noTool = needs({ binaries: [APPLYTOOL] });
const skip = noTool ?? needs({ root: "containerd's archive.Apply chowns every entry to the owner in the tar" });

describe.skipIf(noTool)("deliberate differences from containerd's archive.Apply", () => {
  const base = tempDir('cvmfs-thin-applyparity-delib-');

  it('deliberate: a PAX sparse file is refused (containerd expands it)', async () => {
    const r = await applyBoth(base, 'pax-sparse', [gnuTar(['--format=pax', '--sparse'])], 'overlay');
    expect(r.ctdOut[0]!.error).toBe('');
    expect(fs.statSync(path.join(r.ctd, 'sparse')).size).toBe(4 << 20);
    expect(r.oursOut[0]!.error).toMatch(/sparse/);
  });

  it.skipIf(skip)(
    'deliberate: names and hardlink targets climbing above the root are refused (containerd clamps them to the root, Docker refuses)',
    async () => {
      const up = await applyBoth(base, 'climb', [tar(rawEntry({ name: '../escaped', mtime: T1 }, 'e'))], 'overlay');
      expect(up.ctdOut[0]!.error).toBe('');
      expect(fs.readFileSync(path.join(up.ctd, 'escaped'), 'utf8')).toBe('e');
      expect(up.oursOut[0]!.error).toMatch(/escapes/);
      const link = await applyBoth(base, 'climb-link', [tar(rawEntry({ name: 'l', type: '1', linkname: '../../etc/passwd' }))], 'apply', LOWER);
      expect(link.ctdOut[0]!.error).toBe('');
      expect(fs.statSync(path.join(link.ctd, 'l')).ino).toBe(fs.statSync(path.join(link.ctd, 'etc/passwd')).ino);
      expect(link.oursOut[0]!.error).toMatch(/escapes/);
    },
  );

  it.skipIf(skip)(
    "deliberate: a './' entry sets the root's metadata (Docker's UnpackLayer; containerd ignores it), a non-directory at the root is refused (containerd ignores it)",
    async () => {
      const r = await applyBoth(base, 'root-entry', [tar(rawEntry({ name: './', type: '5', mode: 0o750, uid: 4, mtime: T1 }))], 'overlay');
      expect(r.ctdOut[0]!.error).toBe('');
      expect(r.oursOut[0]!.error).toBe('');
      expect(psnapshot(r.ctd)['.']).toMatchObject({ mode: 0o755, uid: 0 });
      expect(psnapshot(r.ours)['.']).toMatchObject({ mode: 0o750, uid: 4, mtime: `${T1}000000000` });
      const f = await applyBoth(base, 'root-file', [tar(rawEntry({ name: '.', mtime: T1 }, 'x'))], 'overlay');
      expect(f.ctdOut[0]!.error).toBe('');
      expect(f.oursOut[0]!.error).toMatch(/replace the destination/);
    },
  );

  it.skipIf(skip)(
    'deliberate: a directory replaced by a file in the same layer does not lend the file its times (containerd sets them on whatever is there)',
    async () => {
      const layer = tar(rawEntry({ name: 'e/', type: '5', mtime: T1 }), rawEntry({ name: 'e/c', mtime: T1 }, 'c'), rawEntry({ name: 'e', mtime: T3 }, 'file'));
      const r = await applyBoth(base, 'dir-then-file', [layer], 'overlay');
      expect(r.ctdOut[0]!.error).toBe('');
      expect(psnapshot(r.ctd)['e']).toMatchObject({ type: 'file', mtime: `${T1}000000000` });
      expect(psnapshot(r.ours)['e']).toMatchObject({ type: 'file', mtime: `${T3}000000000` });
    },
  );

  it.skipIf(skip)('deliberate: an opaque marker keeps what the layer wrote below directories it has no entry for (containerd removes it)', async () => {
    const layer = tar(rawEntry({ name: 'p/q/new', mtime: T2 }, 'n'), rawEntry({ name: 'p/.wh..wh..opq', mtime: T2 }));
    const r = await applyBoth(base, 'opaque-implicit', [layer], 'apply', LOWER);
    expect(r.ctdOut[0]!.error).toBe('');
    expect(fs.existsSync(path.join(r.ctd, 'p/q'))).toBe(false);
    expect(fs.readdirSync(path.join(r.ours, 'p/q'))).toEqual(['new']);
  });

  it.skipIf(skip)('deliberate: whiteout names used as directories are refused and AUFS metadata is skipped (containerd writes them)', async () => {
    const dir = await applyBoth(base, 'wh-as-dir', [tar(rawEntry({ name: '.wh.x/y', mtime: T1 }, 'y'))], 'overlay');
    expect(dir.ctdOut[0]!.error).toBe('');
    expect(dir.oursOut[0]!.error).toMatch(/whiteout/);
    const plnk = await applyBoth(
      base,
      'aufs-plnk',
      [tar(rawEntry({ name: '.wh..wh.plnk/', type: '5' }), rawEntry({ name: '.wh..wh.plnk/123', mtime: T1 }, 'p'))],
      'overlay',
    );
    expect(plnk.ctdOut[0]!.error).toBe('');
    expect(fs.existsSync(path.join(plnk.ctd, '.wh..wh.plnk/123'))).toBe(true);
    expect(plnk.oursOut[0]!.error).toBe('');
    expect(fs.readdirSync(plnk.ours)).toEqual([]);
  });

  it('deliberate: type 7 (contiguous file) is a regular file (containerd refuses it), a hardlink to itself is kept (containerd fails)', async () => {
    const c = await applyBoth(base, 'contiguous', [tar(rawEntry({ name: 'c', type: '7', mtime: T1 }, 'c'))], 'overlay');
    expect(c.ctdOut[0]!.error).toMatch(/unhandled tar header type/);
    expect(fs.readFileSync(path.join(c.ours, 'c'), 'utf8')).toBe('c');
    const self = await applyBoth(
      base,
      'self-link',
      [tar(rawEntry({ name: 's', mtime: T1 }, 's'), rawEntry({ name: 's', type: '1', linkname: 's', mode: 0o600, mtime: T2 }))],
      'overlay',
    );
    expect(self.ctdOut[0]!.ok).toBe(false);
    expect(self.oursOut[0]!.error).toBe('');
    expect(psnapshot(self.ours)['s']).toMatchObject({ mode: 0o600, mtime: `${T2}000000000`, content: expect.any(String) });
  });
});

describe.skipIf(skip)("deliberate differences: whiteouts of this layer's own entries", () => {
  const base = tempDir('cvmfs-thin-applyparity-wh-');

  it('deliberate: an overlay whiteout for a name the same layer wrote replaces it (containerd fails: EEXIST)', async () => {
    const r = await applyBoth(base, 'overlay-wh-own', [tar(rawEntry({ name: 'w', mtime: T1 }, 'w'), rawEntry({ name: '.wh.w', mtime: T2 }))], 'overlay');
    expect(r.ctdOut[0]!.error).toMatch(/file exists/);
    expect(r.oursOut[0]!.error).toBe('');
    expect(psnapshot(r.ours)['w']).toMatchObject({ type: 'char', rdev: '0' });
  });

  it('deliberate: a directory entry later whited out in the same layer is just gone (containerd fails setting its times)', async () => {
    const layer = tar(rawEntry({ name: 'wd/', type: '5', mtime: T1 }), rawEntry({ name: '.wh.wd', mtime: T2 }));
    const r = await applyBoth(base, 'apply-wh-own-dir', [layer], 'apply');
    expect(r.ctdOut[0]!.error).toMatch(/no such file/);
    expect(r.oursOut[0]!.error).toBe('');
    expect(fs.readdirSync(r.ours)).toEqual([]);
  });
});

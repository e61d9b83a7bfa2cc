/**
 * Whiteout modes (overlay, apply, keep), and the overlay oracle: layers
 * extracted in 'overlay' mode and stacked with a real overlayfs mount must
 * look exactly like the same layers applied in 'apply' mode into one dir.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { lgetxattr } from '../../src/core/host/sys.js';
import { extractLayerFile } from '../../src/core/tar/index.js';
import { hasBinary, needs, tempDir } from '../helpers/env.js';
import { extractBuf, freshDirs, rawEntry, snapshot, tar, type Thread, whiteoutEntries } from './helpers.js';

const base = tempDir('cvmfs-thin-whiteouts-');
const fresh = freshDirs(base);

const layer = tar(...whiteoutEntries(), rawEntry({ name: 'o/sub/new2' }, 'new2'));

describe.skipIf(needs({ root: 'trusted.overlay.* xattrs, mknod of whiteout devices', binaries: ['getfattr'] }))('whiteouts: overlay mode', () => {
  it.each<Thread>(['worker', 'inline'])('.wh.x → char 0/0, .wh..wh..opq → trusted.overlay.opaque=y (%s)', async (thread) => {
    const dest = fresh();
    const res = await extractBuf(layer, { dest, whiteouts: 'overlay', thread });
    expect(res).toMatchObject({ whiteouts: 2, opaques: 1, skipped: 2 });
    for (const w of ['d/gone', 'top']) {
      const st = fs.lstatSync(path.join(dest, w));
      expect(st.isCharacterDevice()).toBe(true);
      expect(st.rdev).toBe(0);
    }
    expect(lgetxattr(path.join(dest, 'o'), 'trusted.overlay.opaque')?.toString()).toBe('y');
    expect(execFileSync('getfattr', ['--absolute-names', '-n', 'trusted.overlay.opaque', '--only-values', path.join(dest, 'o')]).toString()).toBe('y');
    expect(fs.readFileSync(path.join(dest, 'o/new'), 'utf8')).toBe('new');
    // no AUFS-style names left behind
    expect(Object.keys(snapshot(dest)).filter((k) => k.split('/').some((c) => c.startsWith('.wh.')))).toEqual([]);
  });

  it('a later entry replaces a whiteout, a later whiteout replaces an entry', async () => {
    const dest = fresh();
    await extractBuf(
      tar(
        rawEntry({ name: '.wh.x' }),
        rawEntry({ name: 'x' }, 'back'),
        rawEntry({ name: 'y/', type: '5' }),
        rawEntry({ name: 'y/z' }, 'z'),
        rawEntry({ name: '.wh.y' }),
      ),
      {
        dest,
        whiteouts: 'overlay',
      },
    );
    expect(fs.readFileSync(path.join(dest, 'x'), 'utf8')).toBe('back');
    expect(fs.lstatSync(path.join(dest, 'y')).isCharacterDevice()).toBe(true);
  });

  it('an opaque marker for a directory that has no entry creates it; at the top it marks dest', async () => {
    const dest = fresh();
    await extractBuf(tar(rawEntry({ name: 'a/b/.wh..wh..opq' }), rawEntry({ name: '.wh..wh..opq' })), { dest, whiteouts: 'overlay' });
    expect(lgetxattr(path.join(dest, 'a/b'), 'trusted.overlay.opaque')?.toString()).toBe('y');
    expect(lgetxattr(dest, 'trusted.overlay.opaque')?.toString()).toBe('y');
  });
});

describe('whiteouts: apply mode', () => {
  const prepare = (): string => {
    const dest = fresh();
    for (const [p, c] of [
      ['d/gone', 'x'],
      ['d/keep', 'old'],
      ['top/inner/deep', 'x'],
      ['o/old1', 'x'],
      ['o/sub/old2', 'x'],
      ['o/sub/keepme-not', 'x'],
    ] as const) {
      fs.mkdirSync(path.dirname(path.join(dest, p)), { recursive: true });
      fs.writeFileSync(path.join(dest, p), c);
    }
    return dest;
  };
  const expectApplied = (dest: string): void => {
    const s = snapshot(dest, { mtimes: false, xattrs: false });
    expect(Object.keys(s).sort()).toEqual(['d', 'd/keep', 'o', 'o/new', 'o/sub', 'o/sub/new2'].sort());
    expect(fs.readFileSync(path.join(dest, 'd/keep'), 'utf8')).toBe('keep');
    expect(s['o']?.mode).toBe(0o750);
  };

  it.each<Thread>(['worker', 'inline'])('deletes whiteout targets and the old content of opaque dirs (%s)', async (thread) => {
    const dest = prepare();
    const res = await extractBuf(layer, { dest, whiteouts: 'apply', thread });
    expect(res).toMatchObject({ whiteouts: 2, opaques: 1, skipped: 2 });
    expectApplied(dest);
  });

  it('an opaque marker after the entries of its dir keeps what this layer wrote', async () => {
    const dest = prepare();
    await extractBuf(
      tar(
        rawEntry({ name: 'd/', type: '5', mode: 0o755 }),
        rawEntry({ name: 'd/.wh.gone' }),
        rawEntry({ name: 'd/keep' }, 'keep'),
        rawEntry({ name: '.wh.top' }),
        rawEntry({ name: 'o/', type: '5', mode: 0o750 }),
        rawEntry({ name: 'o/new' }, 'new'),
        rawEntry({ name: 'o/sub/new2' }, 'new2'),
        rawEntry({ name: 'o/.wh..wh..opq' }),
      ),
      { dest, whiteouts: 'apply' },
    );
    expectApplied(dest);
  });

  it('a whiteout for something that does not exist is fine', async () => {
    const dest = fresh();
    const res = await extractBuf(tar(rawEntry({ name: 'a/.wh.nothing' })), { dest, whiteouts: 'apply' });
    expect(res.whiteouts).toBe(1);
    expect(fs.readdirSync(path.join(dest, 'a'))).toEqual([]);
  });
});

describe('whiteouts: keep mode', () => {
  it('writes .wh.* entries as plain empty files, like DUCC', async () => {
    const dest = fresh();
    const res = await extractBuf(layer, { dest, whiteouts: 'keep' });
    expect(res).toMatchObject({ whiteouts: 2, opaques: 1, skipped: 0 });
    for (const f of ['d/.wh.gone', '.wh.top', 'o/.wh..wh..opq', '.wh..wh.plnk/123.456']) {
      expect(fs.lstatSync(path.join(dest, f)).isFile()).toBe(true);
    }
    expect(fs.statSync(path.join(dest, 'd/.wh.gone')).size).toBe(0);
  });
});

// ------------------------------------------------------------------ overlay oracle

interface Spec {
  files?: Record<string, string | { data: string; mode?: number; uid?: number; gid?: number }>;
  dirs?: Record<string, { mode?: number; uid?: number; gid?: number }>;
  symlinks?: Record<string, string>;
  hardlinks?: Record<string, string>;
  xattrs?: Record<string, Record<string, string>>;
}

/** A layer directory (with AUFS-style .wh. files) made into a tar by GNU tar. */
function layerTar(name: string, spec: Spec): string {
  const dir = path.join(base, `layer-${name}`);
  fs.mkdirSync(dir);
  for (const [p, o] of Object.entries(spec.dirs ?? {})) {
    fs.mkdirSync(path.join(dir, p), { recursive: true });
    fs.chownSync(path.join(dir, p), o.uid ?? 0, o.gid ?? 0);
    fs.chmodSync(path.join(dir, p), o.mode ?? 0o755);
  }
  for (const [p, v] of Object.entries(spec.files ?? {})) {
    const o = typeof v === 'string' ? { data: v } : v;
    fs.mkdirSync(path.dirname(path.join(dir, p)), { recursive: true });
    fs.writeFileSync(path.join(dir, p), o.data);
    fs.chownSync(path.join(dir, p), o.uid ?? 0, o.gid ?? 0); // before chmod: chown clears setuid
    fs.chmodSync(path.join(dir, p), o.mode ?? 0o644);
  }
  for (const [p, t] of Object.entries(spec.symlinks ?? {})) {
    fs.mkdirSync(path.dirname(path.join(dir, p)), { recursive: true });
    fs.symlinkSync(t, path.join(dir, p));
  }
  for (const [p, t] of Object.entries(spec.hardlinks ?? {})) fs.linkSync(path.join(dir, t), path.join(dir, p));
  for (const [p, xs] of Object.entries(spec.xattrs ?? {})) {
    for (const [k, v] of Object.entries(xs)) execFileSync('setfattr', ['-h', '-n', k, '-v', v, path.join(dir, p)]);
  }
  // fixed mtimes (sub-second), so that the two sides are comparable
  execFileSync('sh', ['-c', `find . -depth -exec touch -h -d '2022-03-0${name} 12:00:00.25' {} +`], { cwd: dir });
  const out = `${dir}.tar`;
  execFileSync('tar', ['--format=pax', '--xattrs', '--xattrs-include=*', '--numeric-owner', '-cf', out, '-C', dir, '.']);
  return out;
}

const noOverlay = fs.readFileSync('/proc/filesystems', 'utf8').includes('overlay') ? null : 'needs overlayfs (modprobe overlay)';
const oracleSkip = needs({ root: 'overlay mounts, chown to other uids, trusted.* xattrs', binaries: ['setfattr'] }) ?? noOverlay;
const mounted: string[] = [];
afterAll(() => {
  for (const m of mounted.reverse()) {
    try {
      execFileSync('umount', [m]);
    } catch {
      // already gone
    }
  }
});

describe.skipIf(oracleSkip)('overlay oracle', () => {
  it('overlay-mode layers mounted with overlayfs == the same layers applied in apply mode', async () => {
    expect(hasBinary('tar')).toBe(true);
    const l1 = layerTar('1', {
      dirs: {
        etc: {},
        'usr/bin': {},
        'usr/lib': {},
        'var/log': {},
        'opt/app/data/sub': {},
        'opt/tool': {},
        'home/user': { mode: 0o700, uid: 1000, gid: 1000 },
      },
      files: {
        'etc/passwd': 'root:x:0:0\n',
        'etc/group': 'root:x:0:\n',
        'etc/conf': 'a file that becomes a dir',
        'usr/bin/a': { data: 'A', mode: 0o755 },
        'usr/bin/b': { data: 'B', mode: 0o755 },
        'var/log/old.log': 'old',
        'opt/app/data/file1': '1',
        'opt/app/data/sub/file2': '2',
        'opt/tool/bin': 'tool',
        'home/user/.bashrc': { data: 'rc1', uid: 1000, gid: 1000, mode: 0o600 },
      },
      symlinks: { 'usr/lib/libx.so': 'libx.so.1', bin: 'usr/bin' },
      hardlinks: { 'usr/bin/c': 'usr/bin/a' },
      xattrs: { 'usr/bin/b': { 'user.origin': 'layer1' } },
    });
    const l2 = layerTar('2', {
      dirs: {
        etc: {},
        usr: { mode: 0o750 },
        'usr/bin': {},
        var: {},
        'opt/app/data': { mode: 0o711 },
        'etc/conf': {},
        opt: {},
        'home/user': { mode: 0o700, uid: 1000, gid: 1000 },
      },
      files: {
        'etc/.wh.group': '',
        'etc/hosts': '127.0.0.1 localhost\n',
        'etc/conf/inner': 'now a dir',
        'usr/bin/b': { data: 'B2', mode: 0o4755 },
        'opt/app/data/.wh..wh..opq': '',
        'opt/app/data/new1': 'n1',
        'var/.wh.log': '',
        'opt/tool': 'a dir became a file',
        'home/user/.bashrc': { data: 'rc2', uid: 1000, gid: 1000, mode: 0o600 },
      },
      xattrs: { 'etc/hosts': { 'user.layer': 'two', 'security.capability': '0x01000002c0000000000000000000000000000000' } },
    });
    const l3 = layerTar('3', {
      dirs: { etc: {}, 'usr/bin': {}, usr: { mode: 0o750 }, 'usr/lib': {}, 'var/log': { mode: 0o770 }, 'opt/app/data': { mode: 0o711 } },
      files: {
        'usr/bin/.wh.a': '',
        'etc/group': 'recreated\n',
        'usr/lib/libx.so': 'a file now',
        'var/log/new.log': 'new',
        'opt/app/data/new2': 'n2',
        'opt/app/data/.wh.new1': '',
      },
    });
    const layers = [l1, l2, l3];

    // overlay side
    const lowers: string[] = [];
    for (const t of layers) {
      const d = fresh();
      const res = await extractLayerFile(t, { dest: d, whiteouts: 'overlay' });
      expect(res.entries).toBeGreaterThan(0);
      lowers.push(d);
    }
    const target = fresh();
    execFileSync('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${[...lowers].reverse().join(':')}`, target]);
    mounted.push(target);

    // apply side
    const flat = fresh();
    for (const t of layers) await extractLayerFile(t, { dest: flat, whiteouts: 'apply' });

    const opts = { root: true, nlink: false, ignoreXattrs: (x: string) => x.startsWith('trusted.overlay.') };
    const merged = snapshot(target, opts);
    const applied = snapshot(flat, opts);
    expect(applied).toEqual(merged);
    // and the interesting parts really happened
    expect(merged['etc/group']).toMatchObject({ type: 'file', size: 10 });
    expect(merged['usr/bin/a']).toBeUndefined();
    expect(merged['usr/bin/c']).toMatchObject({ type: 'file' });
    expect(merged['var/log/old.log']).toBeUndefined();
    expect(merged['var/log/new.log']).toBeDefined();
    expect(merged['opt/app/data/file1']).toBeUndefined();
    expect(merged['opt/app/data/sub']).toBeUndefined();
    expect(merged['opt/app/data/new1']).toBeUndefined();
    expect(merged['opt/app/data/new2']).toBeDefined();
    expect(merged['etc/conf']?.type).toBe('dir');
    expect(merged['opt/tool']?.type).toBe('file');
    expect(merged['usr/lib/libx.so']?.type).toBe('file');
    expect(merged['usr/bin/b']).toMatchObject({ mode: 0o4755 });
    expect(merged['etc/hosts']?.xattrs?.['security.capability']).toBe('01000002c0000000000000000000000000000000');
    expect(merged['home/user/.bashrc']).toMatchObject({ uid: 1000, gid: 1000 });
    execFileSync('umount', [target]);
    mounted.pop();
  });
});

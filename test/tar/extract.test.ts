/**
 * Extraction fidelity: GNU tar fixtures (PAX and GNU formats) with every
 * entry type, special modes, owners, sub-second mtimes, binary xattrs,
 * long and non-ASCII names; replacement semantics; id maps; chunking;
 * progress, abort, file input. Root is needed for devices, owners and
 * security.* xattrs; CI runs as root.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { beforeAll, describe, expect, it } from 'vitest';
import { lgetxattr } from '../../src/core/host/sys.js';
import { InvalidArgumentError, ThinError } from '../../src/core/errors/errors.js';
import { deserializeError, serializeError } from '../../src/core/tar/extract-core.js';
import { extractLayer, extractLayerFile, TarIoError, UnsafeTarError } from '../../src/core/tar/index.js';
import { needs, tempDir } from '../helpers/env.js';
import { buildFixtureTree, CAP, extractBuf, LONG_TARGET, paxEntry, rawEntry, sha256, snapshot, tar, type NodeInfo, type Thread } from './helpers.js';

const base = tempDir('cvmfs-thin-extract-');
const buildTree = (): string => buildFixtureTree(fresh());
let n = 0;
const fresh = (): string => {
  const d = path.join(base, `d${n++}`);
  fs.mkdirSync(d);
  return d;
};
const sh = (cmd: string, args: string[], cwd?: string): string => execFileSync(cmd, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] }).toString();

function makeTar(src: string, format: 'pax' | 'gnu'): string {
  const out = path.join(base, `fixture-${n++}.${format}.tar`);
  // GNU tar writes xattrs only in PAX format (--xattrs silently turns --format=gnu into pax)
  const x = format === 'pax' ? ['--xattrs', '--xattrs-include=*'] : [];
  sh('tar', [`--format=${format}`, ...x, '--numeric-owner', '-cf', out, '-C', src, '.']);
  return out;
}

function seconds(s: Record<string, NodeInfo>): Record<string, NodeInfo> {
  return Object.fromEntries(Object.entries(s).map(([k, v]) => [k, { ...v, ...(v.mtimeNs ? { mtimeNs: v.mtimeNs.slice(0, -9) } : {}) }]));
}

describe.skipIf(needs({ root: 'mknod of devices, chown to other uids, security.* and trusted.* xattrs', binaries: ['setfattr', 'mknod'] }))(
  'extraction fidelity (GNU tar fixtures)',
  () => {
    // built in a hook, not while collecting: an unprivileged run skips this block and must not build it
    let src = '';
    let pax = '';
    let gnu = '';
    let expected: Record<string, NodeInfo> = {};
    beforeAll(() => {
      src = buildTree();
      pax = makeTar(src, 'pax');
      gnu = makeTar(src, 'gnu');
      // trusted.* xattrs (the fixture's dir has trusted.thin) are never extracted, like containerd's archive.Apply
      expected = snapshot(src, { root: true, ignoreXattrs: (x) => x.startsWith('trusted.') });
    });

    describe.each<Thread>(['worker', 'inline'])('%s', (thread) => {
      it('PAX: every type, mode, owner, mtime (ns), xattr and name survives exactly', async () => {
        const dest = fresh();
        const buf = fs.readFileSync(pax);
        const res = await extractBuf(buf, { dest, whiteouts: 'overlay', thread });
        expect(snapshot(dest, { root: true })).toEqual(expected);
        expect(res.diffId).toBe(sha256(buf));
        expect(res.bytes).toBe(buf.length);
        expect(res.hardlinks).toBe(2);
        expect(res.devices).toBe(3);
        expect(lgetxattr(path.join(src, 'dir'), 'trusted.thin')).not.toBeNull();
        expect(lgetxattr(path.join(dest, 'dir'), 'trusted.thin')).toBeNull();
        expect(res.droppedXattrs).toBe(1);
        // binary capability byte-exact (0xc0)
        expect(lgetxattr(path.join(dest, 'suid'), 'security.capability')?.toString('hex')).toBe(CAP.slice(2));
        // a hardlink to a symlink links the symlink
        expect(fs.lstatSync(path.join(dest, 'hardsym')).ino).toBe(fs.lstatSync(path.join(dest, 'sym')).ino);
        expect(fs.lstatSync(path.join(dest, 'hard')).ino).toBe(fs.lstatSync(path.join(dest, 'dir/file')).ino);
      });

      it('GNU format: ././@LongLink names and link names; mtimes in whole seconds, no xattrs', async () => {
        const dest = fresh();
        const buf = fs.readFileSync(gnu);
        expect(buf.includes(Buffer.from('././@LongLink'))).toBe(true);
        expect(buf.includes(Buffer.from('PaxHeaders'))).toBe(false);
        await extractBuf(buf, { dest, whiteouts: 'overlay', thread }, 4096 + 17);
        const got = seconds(snapshot(dest, { root: true, xattrs: false }));
        expect(got).toEqual(seconds(snapshot(src, { root: true, xattrs: false })));
        expect(fs.readlinkSync(path.join(dest, 'longlink'))).toBe(LONG_TARGET);
      });
    });

    it('the same result for any chunking of the input, and from a file', async () => {
      const buf = fs.readFileSync(pax);
      for (const chunk of [7, 512, 4097]) {
        const dest = fresh();
        await extractBuf(buf, { dest, whiteouts: 'overlay' }, chunk);
        expect(snapshot(dest, { root: true })).toEqual(expected);
      }
      const dest = fresh();
      const res = await extractLayerFile(pax, { dest, whiteouts: 'overlay' });
      expect(snapshot(dest, { root: true })).toEqual(expected);
      expect(res.diffId).toBe(sha256(buf));
      const dest2 = fresh();
      const res2 = await extractLayerFile(pax, { dest: dest2, whiteouts: 'overlay', thread: 'inline' });
      expect(res2.diffId).toBe(sha256(buf));
      expect(snapshot(dest2, { root: true })).toEqual(expected);
    });

    it('preserveOwnership: false leaves everything owned by the extracting user', async () => {
      const dest = fresh();
      await extractLayer(fs.createReadStream(pax), { dest, whiteouts: 'overlay', preserveOwnership: false });
      const s = snapshot(dest);
      expect(new Set(Object.values(s).map((v) => `${v.uid}:${v.gid}`))).toEqual(new Set(['0:0']));
      // setuid survives (no chown to clear it)
      expect(s['suid']?.mode).toBe(0o4755);
    });
  },
);

describe.skipIf(needs({ root: 'chown to other uids' }))('id maps (userns remap)', () => {
  it('maps container ids to host ids, implicit parents to mapped root', async () => {
    const dest = fresh();
    const idMap = {
      uids: [
        { containerId: 0, hostId: 100000, size: 1000 },
        { containerId: 1000, hostId: 200000, size: 65536 },
      ],
      gids: [{ containerId: 0, hostId: 300000, size: 65536 }],
    };
    await extractBuf(
      tar(
        rawEntry({ name: 'root-file', uid: 0, gid: 0 }, 'r'),
        rawEntry({ name: 'user-file', uid: 1234, gid: 50, mode: 0o4755 }, 'u'),
        rawEntry({ name: 'implicit/parent/file', uid: 999, gid: 999 }, 'i'),
        rawEntry({ name: 'dir/', type: '5', uid: 1000, gid: 1000 }),
        rawEntry({ name: 'sl', type: '2', linkname: 'x', uid: 1001, gid: 2 }),
      ),
      { dest, whiteouts: 'overlay', idMap },
    );
    const s = snapshot(dest);
    expect(s['root-file']).toMatchObject({ uid: 100000, gid: 300000 });
    expect(s['user-file']).toMatchObject({ uid: 200234, gid: 300050, mode: 0o4755 });
    expect(s['implicit']).toMatchObject({ uid: 100000, gid: 300000 });
    expect(s['implicit/parent/file']).toMatchObject({ uid: 100999, gid: 300999 });
    expect(s['dir']).toMatchObject({ uid: 200000, gid: 301000 });
    expect(s['sl']).toMatchObject({ uid: 200001, gid: 300002 });
  });
});

describe('replacement semantics (later entries win)', () => {
  it('file → dir, dir → file, symlink → file, file → symlink, dir + dir merge', async () => {
    const dest = fresh();
    await extractBuf(
      tar(
        rawEntry({ name: 'a' }, 'file'),
        rawEntry({ name: 'a/', type: '5', mode: 0o700 }),
        rawEntry({ name: 'a/x' }, 'x'),
        rawEntry({ name: 'b/', type: '5' }),
        rawEntry({ name: 'b/inner' }, 'inner'),
        rawEntry({ name: 'b' }, 'now a file'),
        rawEntry({ name: 'c', type: '2', linkname: 'b' }),
        rawEntry({ name: 'c' }, 'c file'),
        rawEntry({ name: 'd' }, 'd file'),
        rawEntry({ name: 'd', type: '2', linkname: 'target' }),
        rawEntry({ name: 'm/', type: '5', mode: 0o755, mtime: 1000 }),
        rawEntry({ name: 'm/keep' }, 'keep'),
        rawEntry({ name: 'm/', type: '5', mode: 0o711, mtime: 2000 }),
      ),
      { dest, whiteouts: 'overlay', thread: 'inline' },
    );
    const s = snapshot(dest);
    expect(s['a']).toMatchObject({ type: 'dir', mode: 0o700 });
    expect(s['a/x']).toMatchObject({ type: 'file' });
    expect(s['b']).toMatchObject({ type: 'file', size: 10 });
    expect(s['b/inner']).toBeUndefined();
    expect(s['c']).toMatchObject({ type: 'file', size: 6 });
    expect(s['d']).toMatchObject({ type: 'symlink', link: 'target' });
    expect(s['m']).toMatchObject({ type: 'dir', mode: 0o711, mtimeNs: '2000000000000' });
    expect(s['m/keep']).toMatchObject({ type: 'file' });
  });

  it('a file replacing one end of a hardlink does not write through it', async () => {
    const dest = fresh();
    await extractBuf(
      tar(rawEntry({ name: 'orig' }, 'original'), rawEntry({ name: 'link', type: '1', linkname: 'orig' }), rawEntry({ name: 'link' }, 'replaced')),
      { dest, whiteouts: 'overlay' },
    );
    expect(fs.readFileSync(path.join(dest, 'orig'), 'utf8')).toBe('original');
    expect(fs.readFileSync(path.join(dest, 'link'), 'utf8')).toBe('replaced');
  });

  it('PAX records: path, linkpath, size, uid/gid, mtime, atime; global headers ignored; trailing garbage hashed', async () => {
    const dest = fresh();
    const body = tar(
      paxEntry(
        [
          ['comment', 'global'],
          ['path', 'ignored-global'],
        ],
        'g',
      ),
      paxEntry([
        ['path', 'pax/named/file'],
        ['mtime', '1234567890.5'],
        ['atime', '1234567000.25'],
        ['uid', '3000000'],
        ['gid', '3000001'],
        ['size', '3'],
      ]),
      rawEntry({ name: 'short-name', size: 0 }, Buffer.alloc(0)).subarray(0, 512),
      Buffer.concat([Buffer.from('abc'), Buffer.alloc(509)]),
      paxEntry([['linkpath', 'l'.repeat(300)]]),
      rawEntry({ name: 'sym', type: '2', linkname: 'short' }),
    );
    const buf = Buffer.concat([body, Buffer.from('garbage after the end')]);
    const res = await extractBuf(buf, { dest, whiteouts: 'overlay', preserveOwnership: false });
    const st = fs.statSync(path.join(dest, 'pax/named/file'), { bigint: true });
    expect(fs.readFileSync(path.join(dest, 'pax/named/file'), 'utf8')).toBe('abc');
    expect(st.mtimeNs).toBe(1234567890500000000n);
    // an atime before the mtime becomes the mtime (containerd's and Docker's appliers do the same)
    expect(st.atimeNs).toBe(1234567890500000000n);
    expect(fs.readlinkSync(path.join(dest, 'sym'))).toBe('l'.repeat(300));
    expect(fs.existsSync(path.join(dest, 'ignored-global'))).toBe(false);
    expect(res.entries).toBe(2);
    expect(res.bytes).toBe(buf.length);
    expect(res.diffId).toBe(sha256(buf));
  });

  it('EOF right after the last entry (no end-of-archive blocks) is a complete archive, like Go', async () => {
    const dest = fresh();
    const res = await extractBuf(rawEntry({ name: 'only' }, 'x'), { dest, whiteouts: 'overlay' });
    expect(res.files).toBe(1);
  });

  it("v7 and GNU headers; an old-style regular file (type '\\0') named with a trailing slash is a directory, a type '0' one a file (Go)", async () => {
    const dest = fresh();
    await extractBuf(
      tar(
        rawEntry({ name: 'v7dir/', type: '\0', format: 'v7' }),
        rawEntry({ name: 'v7dir/f', format: 'v7' }, 'v'),
        rawEntry({ name: 'g', format: 'gnu' }, 'g'),
        rawEntry({ name: 'reg/', format: 'v7' }, 'r'),
      ),
      { dest, whiteouts: 'overlay' },
    );
    expect(fs.statSync(path.join(dest, 'v7dir')).isDirectory()).toBe(true);
    expect(fs.readFileSync(path.join(dest, 'reg'), 'utf8')).toBe('r');
    expect(fs.readFileSync(path.join(dest, 'g'), 'utf8')).toBe('g');
  });

  it('ustar prefix field', async () => {
    const dest = fresh();
    await extractBuf(tar(rawEntry({ name: 'leaf', prefix: 'some/prefix' }, 'p')), { dest, whiteouts: 'overlay' });
    expect(fs.readFileSync(path.join(dest, 'some/prefix/leaf'), 'utf8')).toBe('p');
  });
});

describe('progress, abort, errors of the input', () => {
  it('reports progress and counts', async () => {
    const dest = fresh();
    const parts = Array.from({ length: 300 }, (_, i) => rawEntry({ name: `f${i}` }, Buffer.alloc(10_000, i)));
    const buf = tar(...parts);
    const seen: number[] = [];
    const res = await extractBuf(buf, { dest, whiteouts: 'overlay', onProgress: (p) => seen.push(p.bytes) });
    expect(res.files).toBe(300);
    expect(seen.length).toBeGreaterThan(0);
    expect(seen.at(-1)).toBe(buf.length);
    expect([...seen].sort((a, b) => a - b)).toEqual(seen);
  });

  it('a stream bigger than the ring of shared slots, ending while the ring is full', async () => {
    const parts = Array.from({ length: 6 }, (_, i) => rawEntry({ name: `big${i}` }, Buffer.alloc(8 << 20, i + 1)));
    const buf = tar(...parts, rawEntry({ name: 'last' }, 'the end'));
    for (const chunk of [1 << 20, 300_000]) {
      const dest = fresh();
      const res = await extractBuf(buf, { dest, whiteouts: 'overlay' }, chunk);
      expect(res.diffId).toBe(sha256(buf));
      expect(res.bytes).toBe(buf.length);
      expect(fs.readFileSync(path.join(dest, 'last'), 'utf8')).toBe('the end');
      expect(fs.statSync(path.join(dest, 'big5')).size).toBe(8 << 20);
    }
  });

  it('abort: rejects with the reason, and the next extraction works', async () => {
    const dest = fresh();
    const ac = new AbortController();
    async function* slow(): AsyncGenerator<Buffer> {
      yield rawEntry({ name: 'first' }, 'x');
      ac.abort(new Error('stop it'));
      await new Promise((r) => setTimeout(r, 50));
      yield rawEntry({ name: 'second' }, 'y');
    }
    await expect(extractLayer(Readable.from(slow()), { dest, whiteouts: 'overlay', signal: ac.signal })).rejects.toThrow('stop it');
    const again = fresh();
    const res = await extractBuf(tar(rawEntry({ name: 'ok' }, 'ok')), { dest: again, whiteouts: 'overlay' });
    expect(res.files).toBe(1);
    const pre = new AbortController();
    pre.abort();
    await expect(extractBuf(tar(), { dest: again, whiteouts: 'overlay', signal: pre.signal })).rejects.toThrow();
  });

  it('an input error rejects with that error', async () => {
    const dest = fresh();
    async function* broken(): AsyncGenerator<Buffer> {
      yield rawEntry({ name: 'first' }, 'x');
      throw new Error('network went away');
    }
    await expect(extractLayer(Readable.from(broken()), { dest, whiteouts: 'overlay' })).rejects.toThrow('network went away');
    await expect(extractLayer(Readable.from(broken()), { dest, whiteouts: 'overlay', thread: 'inline' })).rejects.toThrow('network went away');
  });

  it('an input closed before its end (destroyed without error) is refused, not taken as complete', async () => {
    const dest = fresh();
    const r = new Readable({ read() {} });
    r.push(rawEntry({ name: 'first' }, 'x'));
    setTimeout(() => r.destroy(), 20);
    await expect(extractLayer(r, { dest, whiteouts: 'overlay' })).rejects.toMatchObject({ code: 'CVMFS_THIN_INPUT_CLOSED' });
  });

  it('a destination that is not a directory', async () => {
    await expect(extractBuf(tar(), { dest: path.join(base, 'missing'), whiteouts: 'overlay' })).rejects.toMatchObject({ kind: 'invalid-argument' });
    // @ts-expect-error: an invalid mode
    await expect(extractBuf(tar(), { dest: fresh(), whiteouts: 'bogus' })).rejects.toMatchObject({ kind: 'invalid-argument' });
  });
});

describe.skipIf(needs({ root: 'a read-only tmpfs mount', binaries: ['mount', 'umount'] }))('file system errors', () => {
  it('name the entry and keep the errno (TarIoError)', async () => {
    const dest = fresh();
    const ro = path.join(dest, 'ro');
    fs.mkdirSync(ro);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'ro,size=1m', 'tmpfs', ro]);
    try {
      for (const thread of ['worker', 'inline'] as const) {
        const err = await extractBuf(tar(rawEntry({ name: 'ok' }, 'x'), rawEntry({ name: 'ro/x' }, 'x')), { dest, whiteouts: 'overlay', thread }).catch(
          (e: unknown) => e,
        );
        expect(err).toBeInstanceOf(TarIoError);
        expect(err).toMatchObject({ entry: 'ro/x', errno: 'EROFS', code: 'CVMFS_THIN_TAR_IO', kind: 'internal' });
        expect((err as Error).message).toContain('"ro/x"');
      }
    } finally {
      execFileSync('umount', [ro]);
    }
  });
});

describe('errors across the worker boundary', () => {
  it('keep their class, code and kind', () => {
    const round = (e: unknown) => deserializeError(JSON.parse(JSON.stringify(serializeError(e))) as Parameters<typeof deserializeError>[0]);
    const bad = round(new InvalidArgumentError('gzip: incorrect header check', 'CVMFS_THIN_BAD_COMPRESSED_DATA'));
    expect(ThinError.is(bad) && [bad.kind, bad.code, bad.message]).toEqual([
      'invalid-argument',
      'CVMFS_THIN_BAD_COMPRESSED_DATA',
      'gzip: incorrect header check',
    ]);
    const unsafe = round(new UnsafeTarError('a/../../b', 'path-escape', 'climbs out'));
    expect(unsafe).toBeInstanceOf(UnsafeTarError);
    expect((unsafe as UnsafeTarError).entry).toBe('a/../../b');
    const plainErr = round(Object.assign(new Error('boom'), { code: 'EIO' }));
    expect(ThinError.is(plainErr)).toBe(false);
    expect((plainErr as NodeJS.ErrnoException).code).toBe('EIO');
  });
});

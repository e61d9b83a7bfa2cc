/**
 * Hostile-tar corpus: one test per attack. Each asserts the specific refusal
 * (UnsafeTarError, code, reason, entry) or, where the documented policy is
 * to contain rather than refuse, where the entry landed; and always that
 * nothing outside dest changed (a sibling dir with canaries is snapshotted
 * before and after). Runs for both thread modes.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { isRoot, needs, tempDir } from '../helpers/env.js';
import { END, expectRefused, extractBuf, gnuLong, paxEntry, rawEntry, rawHeader, sandbox, snapshot, tar, type Thread } from './helpers.js';

const base = tempDir('cvmfs-thin-hostile-');

describe.each<Thread>(['worker', 'inline'])('hostile tars (%s)', (thread) => {
  const refused = (buf: Buffer, reason: Parameters<typeof expectRefused>[2], o: Parameters<typeof expectRefused>[3] = {}) =>
    expectRefused(base, buf, reason, { thread, ...o });

  it('../ escape', async () => {
    await refused(tar(rawEntry({ name: '../outside/canary' }, 'pwned')), 'path-escape', { entry: '../outside/canary' });
    await refused(tar(rawEntry({ name: 'a/../../outside/canary' }, 'pwned')), 'path-escape', { entry: 'a/../../outside/canary' });
  });

  it('absolute path: taken relative to dest (Docker), never written at its absolute place', async () => {
    const sb = sandbox(base, 'abs');
    const before = sb.outsideState();
    const abs = path.join(sb.outside, 'canary');
    await extractBuf(tar(rawEntry({ name: abs }, 'pwned'), rawEntry({ name: '/../../x' }, 'x')), { dest: sb.dest, whiteouts: 'overlay', thread });
    expect(fs.readFileSync(path.join(sb.dest, abs), 'utf8')).toBe('pwned');
    expect(fs.readFileSync(path.join(sb.dest, 'x'), 'utf8')).toBe('x');
    expect(sb.outsideState()).toEqual(before);
  });

  it('symlink then file through it, symlink pointing outside: refused (target missing inside dest)', async () => {
    const sb = sandbox(base, 'symfile');
    const before = sb.outsideState();
    const buf = tar(rawEntry({ name: 'esc', type: '2', linkname: sb.outside }), rawEntry({ name: 'esc/canary' }, 'pwned'));
    await expect(extractBuf(buf, { dest: sb.dest, whiteouts: 'overlay', thread })).rejects.toMatchObject({
      reason: 'symlink-parent',
      entry: 'esc/canary',
    });
    expect(sb.outsideState()).toEqual(before);
  });

  it('symlink then file through it: followed inside dest when the in-scope target exists', async () => {
    const sb = sandbox(base, 'symin');
    const before = sb.outsideState();
    const buf = tar(
      rawEntry({ name: 'etc/', type: '5', mode: 0o755 }),
      rawEntry({ name: 'link', type: '2', linkname: '/etc' }),
      rawEntry({ name: 'link/passwd' }, 'root:x:0:0'),
      // relative symlink climbing above dest, clamped at dest
      rawEntry({ name: 'deep/', type: '5' }),
      rawEntry({ name: 'deep/up', type: '2', linkname: '../../../../../etc' }),
      rawEntry({ name: 'deep/up/shadow' }, 'x'),
    );
    await extractBuf(buf, { dest: sb.dest, whiteouts: 'overlay', thread });
    expect(fs.readFileSync(path.join(sb.dest, 'etc/passwd'), 'utf8')).toBe('root:x:0:0');
    expect(fs.readFileSync(path.join(sb.dest, 'etc/shadow'), 'utf8')).toBe('x');
    expect(fs.readlinkSync(path.join(sb.dest, 'link'))).toBe('/etc');
    expect(sb.outsideState()).toEqual(before);
  });

  it('symlink-to-dir escape (relative ../..): clamped at dest, refused when nothing is there', async () => {
    const { sb } = await refused(tar(rawEntry({ name: 'up', type: '2', linkname: '../outside' }), rawEntry({ name: 'up/canary' }, 'pwned')), 'symlink-parent', {
      entry: 'up/canary',
    });
    expect(fs.readlinkSync(path.join(sb.dest, 'up'))).toBe('../outside');
    // a chain climbing above dest (a -> b/../..) is clamped at dest: what follows is created inside
    const sb2 = sandbox(base, 'chain');
    const before = sb2.outsideState();
    await extractBuf(
      tar(rawEntry({ name: 'b/', type: '5' }), rawEntry({ name: 'a', type: '2', linkname: 'b/../..' }), rawEntry({ name: 'a/outside/canary' }, 'pwned')),
      { dest: sb2.dest, whiteouts: 'overlay', thread },
    );
    expect(fs.readFileSync(path.join(sb2.dest, 'outside/canary'), 'utf8')).toBe('pwned');
    expect(sb2.outsideState()).toEqual(before);
  });

  it('symlink chain loop', async () => {
    await refused(
      tar(rawEntry({ name: 'a', type: '2', linkname: 'b' }), rawEntry({ name: 'b', type: '2', linkname: 'a' }), rawEntry({ name: 'a/x' }, 'x')),
      'symlink-loop',
      { entry: 'a/x' },
    );
    await refused(tar(rawEntry({ name: 'self', type: '2', linkname: 'self/x' }), rawEntry({ name: 'self/y' }, 'y')), 'symlink-loop', { entry: 'self/y' });
  });

  it('hardlink to outside', async () => {
    await refused(tar(rawEntry({ name: 'h', type: '1', linkname: '../outside/canary' })), 'hardlink-escape', { entry: 'h' });
    // absolute: taken inside dest, where it does not exist
    const sb0 = sandbox(base, 'hlabs');
    await refused(tar(rawEntry({ name: 'h', type: '1', linkname: path.join(sb0.outside, 'canary') })), 'hardlink-target-missing', { entry: 'h' });
    // through a symlink pointing outside
    const sb = sandbox(base, 'hlsym');
    const before = sb.outsideState();
    await expect(
      extractBuf(tar(rawEntry({ name: 's', type: '2', linkname: sb.outside }), rawEntry({ name: 'h', type: '1', linkname: 's/canary' })), {
        dest: sb.dest,
        whiteouts: 'overlay',
        thread,
      }),
    ).rejects.toMatchObject({ reason: 'symlink-parent', entry: 'h' });
    expect(sb.outsideState()).toEqual(before);
    expect(fs.statSync(sb.canary).nlink).toBe(1);
  });

  it('hardlink to a not-yet-extracted name', async () => {
    await refused(tar(rawEntry({ name: 'h', type: '1', linkname: 'later' }), rawEntry({ name: 'later' }, 'x')), 'hardlink-target-missing', { entry: 'h' });
  });

  it('hardlink to a directory', async () => {
    await refused(tar(rawEntry({ name: 'd/', type: '5' }), rawEntry({ name: 'h', type: '1', linkname: 'd' })), 'hardlink-to-directory', { entry: 'h' });
    await refused(tar(rawEntry({ name: 'h', type: '1', linkname: './' })), 'hardlink-to-directory', { entry: 'h' });
  });

  it('whiteout aiming outside', async () => {
    for (const whiteouts of ['overlay', 'apply', 'keep'] as const) {
      await refused(tar(rawEntry({ name: '../.wh.canary' })), 'path-escape', { whiteouts, entry: '../.wh.canary' });
      await refused(tar(rawEntry({ name: '.wh...' })), 'bad-whiteout', { whiteouts, entry: '.wh...' });
      await refused(tar(rawEntry({ name: 'd/.wh..' })), 'bad-whiteout', { whiteouts, entry: 'd/.wh..' });
      await refused(tar(rawEntry({ name: '.wh.' })), 'bad-whiteout', { whiteouts, entry: '.wh.' });
    }
    // apply mode through a symlink to the outside dir: the canary must survive
    const sb = sandbox(base, 'whsym');
    const before = sb.outsideState();
    await expect(
      extractBuf(tar(rawEntry({ name: 's', type: '2', linkname: sb.outside }), rawEntry({ name: 's/.wh.canary' })), {
        dest: sb.dest,
        whiteouts: 'apply',
        thread,
      }),
    ).rejects.toMatchObject({ reason: 'symlink-parent', entry: 's/.wh.canary' });
    expect(sb.outsideState()).toEqual(before);
  });

  it('opaque marker in an escaping dir', async () => {
    await refused(tar(rawEntry({ name: '../outside/.wh..wh..opq' })), 'path-escape', { whiteouts: 'apply' });
    await refused(tar(rawEntry({ name: '../.wh..wh..opq' })), 'path-escape', { whiteouts: 'overlay' });
    const sb = sandbox(base, 'opqsym');
    const before = sb.outsideState();
    for (const whiteouts of ['apply', 'overlay'] as const) {
      await expect(
        extractBuf(tar(rawEntry({ name: 's', type: '2', linkname: sb.outside }), rawEntry({ name: 's/.wh..wh..opq' })), { dest: sb.dest, whiteouts, thread }),
      ).rejects.toMatchObject({ reason: 'symlink-parent' });
    }
    expect(sb.outsideState()).toEqual(before);
  });

  it('GNU sparse, type S', async () => {
    await refused(tar(rawEntry({ name: 'sparse', type: 'S', format: 'gnu' }, Buffer.alloc(512))), 'sparse', { entry: 'sparse' });
  });

  it('GNU sparse, PAX 1.0 (GNU.sparse.major/minor)', async () => {
    const buf = tar(
      paxEntry([
        ['GNU.sparse.major', '1'],
        ['GNU.sparse.minor', '0'],
        ['GNU.sparse.name', 'file'],
        ['GNU.sparse.realsize', '67108864'],
      ]),
      rawEntry({ name: 'GNUSparseFile.0/file' }, '1\n0\n512\n'),
    );
    await refused(buf, 'sparse');
    // PAX 0.1 style
    await refused(tar(paxEntry([['GNU.sparse.map', '0,512']]), rawEntry({ name: 'f' }, 'x')), 'sparse');
  });

  it("GNU tar's own sparse archives (gnu 'S', pax 0.1 and 1.0)", async () => {
    const src = fs.mkdtempSync(path.join(base, 'sparse-src-'));
    const f = path.join(src, 'holey');
    fs.writeFileSync(f, 'start');
    fs.truncateSync(f, 16 << 20);
    fs.appendFileSync(f, 'end');
    for (const args of [['--format=gnu'], ['--format=pax', '--sparse-version=0.1'], ['--format=pax', '--sparse-version=1.0']]) {
      const buf = execFileSync('tar', ['--sparse', ...args, '-cf', '-', '-C', src, 'holey'], { maxBuffer: 1 << 26 });
      expect(buf.length).toBeLessThan(1 << 20);
      await refused(buf, 'sparse');
    }
  });

  it('unknown type flag', async () => {
    await refused(tar(rawEntry({ name: 'weird', type: 'Z' })), 'unsupported-type', { entry: 'weird' });
    await refused(tar(rawEntry({ name: 'vol', type: 'V' })), 'unsupported-type', { entry: 'vol' });
    await refused(tar(rawEntry({ name: 'multi', type: 'M' })), 'unsupported-type', { entry: 'multi' });
  });

  it('oversized PAX header', async () => {
    const big = paxEntry([['comment', 'x'.repeat(2 * 1024 * 1024)]]);
    await refused(tar(big, rawEntry({ name: 'f' }, 'x')), 'pax-too-large');
    // a smaller limit, and GNU long names under the same limit
    await refused(tar(gnuLong('L', 'n'.repeat(5000)), rawEntry({ name: 'short' }, 'x')), 'pax-too-large', { limits: { maxPaxHeaderBytes: 4096 } });
  });

  it('too many entries', async () => {
    const parts = Array.from({ length: 6 }, (_, i) => rawEntry({ name: `f${i}` }, 'x'));
    await refused(tar(...parts), 'too-many-entries', { limits: { maxEntries: 5 }, entry: 'f5' });
  });

  it('total size limit', async () => {
    await refused(tar(rawEntry({ name: 'big' }, Buffer.alloc(200_000))), 'too-large', { limits: { maxTotalBytes: 100_000 } });
  });

  it('truncated archive', async () => {
    const full = tar(rawEntry({ name: 'f' }, Buffer.alloc(5000, 1)), rawEntry({ name: 'g' }, 'g'));
    await refused(full.subarray(0, 512 + 1000), 'truncated', { entry: 'f' }); // inside data
    await refused(full.subarray(0, 512 + 5120 + 100), 'truncated'); // inside a header
    await refused(full.subarray(0, 512 + 5000), 'truncated'); // inside padding
    await refused(paxEntry([['path', 'p']]), 'truncated'); // extended header without its entry
  });

  it('bad checksum', async () => {
    await refused(tar(rawEntry({ name: 'f', checksumDelta: 1 }, 'x')), 'bad-checksum', { entry: 'f' });
    // a garbage block
    await refused(Buffer.concat([Buffer.alloc(512, 0x41), END]), 'bad-checksum');
  });

  it('NUL in name', async () => {
    await refused(tar(paxEntry([['path', Buffer.from('a\0/../../outside/canary')]]), rawEntry({ name: 'x' }, 'x')), 'nul-in-name');
    await refused(tar(gnuLong('L', Buffer.from('ok\0../../outside/canary')), rawEntry({ name: 'x', format: 'gnu' }, 'x')), 'nul-in-name');
    await refused(tar(paxEntry([['linkpath', Buffer.from('t\0x')]]), rawEntry({ name: 'l', type: '2' })), 'nul-in-name');
  });

  it('overlong name', async () => {
    await refused(tar(paxEntry([['path', 'a/'.repeat(3000)]]), rawEntry({ name: 'x' }, 'x')), 'name-too-long');
    await refused(tar(paxEntry([['path', 'c'.repeat(256)]]), rawEntry({ name: 'x' }, 'x')), 'name-too-long');
    await refused(tar(rawEntry({ name: 'ok' }, 'x'), paxEntry([['path', 'n'.repeat(300)]]), rawEntry({ name: 'x' }, 'x')), 'name-too-long', {
      limits: { maxNameBytes: 200 },
    });
  });

  it('a name that is . or ..', async () => {
    await refused(tar(rawEntry({ name: '..' }, 'x')), 'path-escape', { entry: '..' });
    await refused(tar(rawEntry({ name: '../', type: '5' })), 'path-escape', { entry: '../' });
    await refused(tar(rawEntry({ name: '.' }, 'x')), 'replace-root', { entry: '.' });
    // "./" as a directory is the root itself: its metadata applies to dest
    const sb = sandbox(base, 'dotdir');
    await extractBuf(tar(rawEntry({ name: './', type: '5', mode: 0o750 })), { dest: sb.dest, whiteouts: 'overlay', thread });
    expect(fs.statSync(sb.dest).mode & 0o7777).toBe(0o750);
  });

  it('replacing dest root itself', async () => {
    await refused(tar(rawEntry({ name: '/', type: '2', linkname: '/etc' })), 'replace-root', { entry: '/' });
    await refused(tar(rawEntry({ name: './', type: '2', linkname: '../outside' })), 'replace-root');
    await refused(tar(rawEntry({ name: 'x' }, 'x'), rawEntry({ name: '.', type: '1', linkname: 'x' })), 'replace-root');
    await refused(tar(rawEntry({ name: '.', type: '6' })), 'replace-root');
  });

  it('chmod/chown/utimes through a symlink: a replaced dir gets no deferred metadata', async () => {
    const sb = sandbox(base, 'chmodsym');
    const target = path.join(sb.outside, 'dir');
    const before = sb.outsideState();
    const buf = tar(
      rawEntry({ name: 'd/', type: '5', mode: 0o777, uid: 4242, gid: 4242, mtime: 1 }),
      rawEntry({ name: 'd/f' }, 'x'),
      rawEntry({ name: 'd', type: '2', linkname: target }),
      // a file entry over a symlink to a file outside: replaces the link, never writes through it
      rawEntry({ name: 'c', type: '2', linkname: sb.canary }),
      rawEntry({ name: 'c', mode: 0o4777, uid: 4242, mtime: 1 }, 'pwned'),
      // a dir entry over a symlink: replaces it
      rawEntry({ name: 'e', type: '2', linkname: target }),
      rawEntry({ name: 'e/', type: '5', mode: 0o700, uid: 4242, mtime: 1 }),
    );
    await extractBuf(buf, { dest: sb.dest, whiteouts: 'overlay', thread });
    expect(fs.readlinkSync(path.join(sb.dest, 'd'))).toBe(target);
    expect(fs.lstatSync(path.join(sb.dest, 'c')).isFile()).toBe(true);
    expect(fs.lstatSync(path.join(sb.dest, 'e')).isDirectory()).toBe(true);
    expect(sb.outsideState()).toEqual(before);
  });

  it('trusted.overlay.* xattrs from the tar are dropped', async () => {
    const sb = sandbox(base, 'ovlx');
    const res = await extractBuf(
      tar(
        paxEntry([
          ['SCHILY.xattr.trusted.overlay.redirect', '/etc'],
          ['SCHILY.xattr.trusted.overlay.opaque', 'y'],
        ]),
        rawEntry({ name: 'd/', type: '5' }),
      ),
      { dest: sb.dest, whiteouts: 'overlay', thread },
    );
    expect(res.droppedXattrs).toBe(2);
    expect(snapshot(sb.dest)['d']?.xattrs).toBeUndefined();
  });

  it('a whiteout name used as a directory', async () => {
    await refused(tar(rawEntry({ name: '.wh.x/y' }, 'y')), 'bad-whiteout', { entry: '.wh.x/y' });
  });

  it('a non-directory parent', async () => {
    await refused(tar(rawEntry({ name: 'f' }, 'x'), rawEntry({ name: 'f/g' }, 'y')), 'parent-not-directory', { entry: 'f/g' });
  });
});

describe('hostile tars needing root', () => {
  it.skipIf(needs({ root: 'chown to other uids' }))('ids outside the id map are refused', async () => {
    expect(isRoot).toBe(true);
    await expectRefused(base, tar(rawEntry({ name: 'f', uid: 70000 }, 'x')), 'unmapped-id', {
      idMap: { uids: [{ containerId: 0, hostId: 100000, size: 65536 }], gids: [{ containerId: 0, hostId: 100000, size: 65536 }] },
      entry: 'f',
    });
  });

  it.skipIf(needs({ root: 'mknod of devices' }))('a device node cannot replace a file outside via a symlink', async () => {
    const sb = sandbox(base, 'devsym');
    const before = sb.outsideState();
    await extractBuf(tar(rawEntry({ name: 'n', type: '2', linkname: sb.canary }), rawEntry({ name: 'n', type: '3', devmajor: 1, devminor: 3 })), {
      dest: sb.dest,
      whiteouts: 'overlay',
    });
    expect(fs.lstatSync(path.join(sb.dest, 'n')).isCharacterDevice()).toBe(true);
    expect(sb.outsideState()).toEqual(before);
  });
});

// keep the raw header helper honest: a header it writes is what GNU tar reads
describe('raw tar helper', () => {
  it('writes headers GNU tar accepts', async () => {
    const f = path.join(base, 't.tar');
    fs.writeFileSync(f, tar(rawEntry({ name: 'hello', mode: 0o600 }, 'hi'), rawEntry({ name: 'd/', type: '5' })));
    const { execFileSync } = await import('node:child_process');
    expect(execFileSync('tar', ['-tvf', f]).toString()).toMatch(/-rw------- .* hello\n.*d\/\n/);
    expect(rawHeader({ name: 'x' }).length).toBe(512);
  });
});

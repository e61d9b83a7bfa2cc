/**
 * core/fs/erofs.ts: images the kernel mounts (file-backed, its data file as
 * the extra device, as a node mounts a profile's image from CVMFS) show
 * exactly the entries written — content, owners, modes with special bits, ns
 * times, xattrs, large directories over several blocks, empty files — with
 * the metadata in one small file and the data in the order given in the
 * other. Bad entries are refused naming the path, and a refused image leaves
 * no file.
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { type ErofsEntry, readErofsHead, writeErofs } from '../../src/core/fs/erofs.js';
import * as sys from '../../src/core/host/sys.js';
import { needs, tempDir } from '../helpers/env.js';

const dir = tempDir('cvmfs-thin-erofs-');
const uuid = Buffer.from('00112233445566778899aabbccddeeff', 'hex');
const T = 1_700_000_000_123_456_789n;
let n = 0;
/** A VFS_CAP_REVISION_2 capability set (effective; permitted cap_net_bind_service): the kernel checks its form. */
const CAP_NET_BIND = Buffer.from(`0100000200040000${'0'.repeat(24)}`, 'hex');

function file(p: string, content: Buffer, o: Partial<ErofsEntry> = {}): ErofsEntry {
  const source = path.join(dir, `src-${n++}`);
  fs.writeFileSync(source, content);
  return { path: p, type: 'file', mode: 0o644, uid: 0, gid: 0, mtimeNs: T, xattrs: [], source, size: content.length, ...o };
}
const d = (p: string, o: Partial<ErofsEntry> = {}): ErofsEntry => ({ path: p, type: 'dir', mode: 0o755, uid: 0, gid: 0, mtimeNs: T, xattrs: [], ...o });

describe('EROFS images: layout and refusals (no mount)', () => {
  it('the head names both sizes and the uuid; the metadata holds no data; the data file holds the files in the order given', async () => {
    const a = randomBytes(5000);
    const b = randomBytes(100);
    const [out, data] = [path.join(dir, 'order.img'), path.join(dir, 'order.data')];
    const w = await writeErofs([d(''), d('x'), file('x/b', b), file('a', a)], out, data, { uuid, buildTimeNs: T });
    const [img, blob] = [fs.readFileSync(out), fs.readFileSync(data)];
    expect(w).toEqual({
      bytes: img.length,
      sha256: createHash('sha256').update(img).digest('hex'),
      files: 2,
      data: { bytes: blob.length, sha256: createHash('sha256').update(blob).digest('hex') },
    });
    // a block of inodes and one per directory; a block for b, two for a
    expect([img.length, blob.length]).toEqual([3 * 4096, 3 * 4096]);
    expect(readErofsHead(img.subarray(0, 2048))).toEqual({ bytes: img.length, dataBytes: blob.length, uuid: uuid.toString('hex') });
    // b (given first) at the start, then a
    expect([blob.indexOf(b), blob.indexOf(a), img.indexOf(a.subarray(0, 64))]).toEqual([0, 4096, -1]);
    expect(readErofsHead(Buffer.alloc(2048))).toBeNull();
    expect(readErofsHead(img.subarray(0, 100))).toBeNull();
  });

  it.each([
    ['no root', [d('x')], 'no root directory'],
    ['a path twice', [d(''), d('x'), d('x')], 'x is listed twice'],
    ['a missing directory', [d(''), d('x/y')], 'x/y: its directory is not in the image'],
    ['a file as a directory', [d(''), { ...d('f'), type: 'file', size: 0, source: '/dev/null' } as ErofsEntry, d('f/y')], 'f/y: its directory'],
    ['..', [d(''), d('a'), d('a/..')], 'a/..: not a clean relative path'],
    ['an empty name', [d(''), d('a//b')], 'not a clean relative path'],
    ['an unknown xattr prefix', [d('', { xattrs: [['system.foo', Buffer.from('x')]] })], 'xattr system.foo has no EROFS name prefix'],
    ['a file without a source', [d(''), { ...d('f'), type: 'file' } as ErofsEntry], 'f: a file needs a source and a size'],
    ['a time before 1970', [d(''), d('old', { mtimeNs: -1n })], 'old: a time before 1970 or an id EROFS cannot hold'],
    ['an id over 32 bits', [d('', { uid: 2 ** 32 })], '/: a time before 1970 or an id EROFS cannot hold'],
    ['xattrs over a block', [d('', { xattrs: [['user.big', Buffer.alloc(5000)]] })], '/: its xattrs are too large'],
  ])('refuses %s, writing nothing', async (_what, entries, msg) => {
    const out = path.join(dir, `bad-${n++}.img`);
    await expect(writeErofs(entries as ErofsEntry[], out, `${out}.data`, { uuid, buildTimeNs: T })).rejects.toThrow(msg);
    expect([fs.existsSync(out), fs.existsSync(`${out}.data`)]).toEqual([false, false]);
  });

  it('a source shorter than its size is refused and the image removed', async () => {
    const out = path.join(dir, 'short.img');
    const f = file('f', Buffer.from('abc'));
    await expect(writeErofs([d(''), { ...f, size: 10 }], out, `${out}.data`, { uuid, buildTimeNs: T })).rejects.toThrow('has 3 bytes, not 10');
    expect([fs.existsSync(out), fs.existsSync(`${out}.data`)]).toEqual([false, false]);
  });

  it('an existing target is not overwritten', async () => {
    const out = path.join(dir, 'exists.img');
    fs.writeFileSync(out, 'keep');
    await expect(writeErofs([d('')], out, `${out}.data`, { uuid, buildTimeNs: T })).rejects.toThrow(/EEXIST/);
    expect(fs.readFileSync(out, 'utf8')).toBe('keep');
    const out2 = path.join(dir, 'exists2.img');
    fs.writeFileSync(`${out2}.data`, 'keep');
    await expect(writeErofs([d('')], out2, `${out2}.data`, { uuid, buildTimeNs: T })).rejects.toThrow(/EEXIST/);
    expect([fs.existsSync(out2), fs.readFileSync(`${out2}.data`, 'utf8')]).toEqual([false, 'keep']);
  });
});

describe.skipIf(needs({ root: 'mount of an EROFS image' }))('EROFS images mounted by the kernel', () => {
  const mnt = path.join(dir, 'mnt');
  afterEach(() => {
    try {
      sys.umount(mnt);
    } catch {
      /* not mounted */
    }
  });

  it('shows the entries exactly: content, owners, modes, ns times, xattrs, many names, empty files', async () => {
    const entries: ErofsEntry[] = [d('', { mode: 0o755, mtimeNs: 1_600_000_000_000_000_001n })];
    entries.push(d('usr', { uid: 1000, gid: 2000, mode: 0o2775 }), d('usr/bin'), d('big'), d('empty'));
    entries.push(file('usr/bin/su', randomBytes(9000), { mode: 0o4755, uid: 5, gid: 6, xattrs: [['security.capability', CAP_NET_BIND]] }));
    entries.push(file('usr/zero', Buffer.alloc(0), { mtimeNs: 1_000_000_000n }));
    entries.push(
      file('usr/x', Buffer.from('xattrs'), {
        xattrs: [
          ['user.a', Buffer.from('1')],
          ['user.long-name', randomBytes(300)],
          ['trusted.t', Buffer.from('t')],
        ],
      }),
    );
    entries.push(file('usr/high', Buffer.from('ids'), { uid: 4_000_000_000, gid: 70_000 }));
    // a directory over several dirent blocks, names up to 255 bytes, non-ASCII
    const names = Array.from({ length: 600 }, (_, i) => `${'n'.repeat(i % 200)}-${i}-é`);
    names.push('z'.repeat(255));
    for (const nm of names) entries.push(file(`big/${nm}`, Buffer.from(nm)));
    // files of 1, 4096, 4097 bytes and 1 MiB + 1 (chunks of 2^k bytes)
    for (const size of [1, 4096, 4097, (1 << 20) + 1]) entries.push(file(`usr/s${size}`, randomBytes(size)));
    const out = path.join(dir, 'full.img');
    const w = await writeErofs(entries, out, `${out}.data`, { uuid, buildTimeNs: T });
    expect(w.bytes).toBeLessThan(w.data.bytes);
    fs.mkdirSync(mnt, { recursive: true });
    sys.mount(out, mnt, 'erofs', sys.MS_RDONLY, `device=${out}.data`);
    for (const e of entries) {
      const p = path.join(mnt, e.path);
      const st = fs.lstatSync(p, { bigint: true });
      expect(st.isDirectory(), e.path).toBe(e.type === 'dir');
      expect(Number(st.mode & 0o7777n), e.path).toBe(e.mode);
      expect([Number(st.uid), Number(st.gid)], e.path).toEqual([e.uid, e.gid]);
      expect(st.mtimeNs, e.path).toBe(e.mtimeNs);
      if (e.type === 'file') expect(fs.readFileSync(p).equals(fs.readFileSync(e.source!)), e.path).toBe(true);
      for (const [xn, xv] of e.xattrs) expect(sys.lgetxattr(p, xn)?.equals(xv), `${e.path} ${xn}`).toBe(true);
    }
    expect(fs.readdirSync(path.join(mnt, 'big')).sort()).toEqual([...names].sort());
    expect(fs.readdirSync(mnt).sort()).toEqual(['big', 'empty', 'usr']);
    expect(fs.readdirSync(path.join(mnt, 'empty'))).toEqual([]);
    expect(fs.lstatSync(path.join(mnt, 'usr')).nlink).toBe(3);
    expect(sys.llistxattr(path.join(mnt, 'usr/x')).sort()).toEqual(['trusted.t', 'user.a', 'user.long-name']);
    expect(fs.statfsSync(mnt).blocks * 4096).toBe(w.bytes + w.data.bytes);
  });
});

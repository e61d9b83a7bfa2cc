/**
 * core/fs/erofs.ts: images the kernel mounts (file-backed, as a node mounts a
 * profile's image from CVMFS) show exactly the entries written — content,
 * owners, modes with special bits, ns times, xattrs, large directories over
 * several blocks, empty files — with all metadata before the data and the
 * data in the order given. Bad entries are refused naming the path, and a
 * refused image leaves no file.
 */
import { randomBytes } from 'node:crypto';
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
  it('the head names size and uuid; metadata first, then the data in the order given', async () => {
    const a = randomBytes(5000);
    const b = randomBytes(100);
    const out = path.join(dir, 'order.img');
    const w = await writeErofs([d(''), d('x'), file('x/b', b), file('a', a)], out, { uuid, buildTimeNs: T });
    const img = fs.readFileSync(out);
    expect(w.bytes).toBe(img.length);
    expect(w.files).toBe(2);
    expect(readErofsHead(img.subarray(0, 2048))).toEqual({ bytes: img.length, uuid: uuid.toString('hex') });
    // b (given first) before a; both after the metadata block(s)
    const ib = img.indexOf(b);
    const ia = img.indexOf(a);
    expect(ib % 4096).toBe(0);
    expect(ia).toBe(ib + 4096);
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
  ])('refuses %s, writing nothing', async (_what, entries, msg) => {
    const out = path.join(dir, `bad-${n++}.img`);
    await expect(writeErofs(entries as ErofsEntry[], out, { uuid, buildTimeNs: T })).rejects.toThrow(msg);
    expect(fs.existsSync(out)).toBe(false);
  });

  it('a source shorter than its size is refused and the image removed', async () => {
    const out = path.join(dir, 'short.img');
    const f = file('f', Buffer.from('abc'));
    await expect(writeErofs([d(''), { ...f, size: 10 }], out, { uuid, buildTimeNs: T })).rejects.toThrow('has 3 bytes, not 10');
    expect(fs.existsSync(out)).toBe(false);
  });

  it('an existing target is not overwritten', async () => {
    const out = path.join(dir, 'exists.img');
    fs.writeFileSync(out, 'keep');
    await expect(writeErofs([d('')], out, { uuid, buildTimeNs: T })).rejects.toThrow(/EEXIST/);
    expect(fs.readFileSync(out, 'utf8')).toBe('keep');
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
    const out = path.join(dir, 'full.img');
    const w = await writeErofs(entries, out, { uuid, buildTimeNs: T });
    fs.mkdirSync(mnt, { recursive: true });
    sys.mount(out, mnt, 'erofs', sys.MS_RDONLY, null);
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
    expect(fs.statfsSync(mnt).blocks * 4096).toBe(w.bytes);
  });
});

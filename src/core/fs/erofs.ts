/**
 * EROFS images (the kernel's read-only file system, Documentation/
 * filesystems/erofs.rst): a profile's files as one image a node mounts
 * straight from CVMFS (SPEC §8), so its containers read them without a copy
 * or an unpack, while the client fetches the image's chunks.
 *
 * Written here, not by mkfs.erofs: the files come from a staged tree with
 * exact owners, ns times and xattrs (no root needed to write them), the data
 * must be in access order (the image's first chunks hold what a start reads
 * first) and all metadata first (one chunk answers the mount and every
 * lookup). The subset: 4 KiB blocks, 64-byte extended inodes, uncompressed
 * data in consecutive blocks (FLAT_PLAIN), inline xattrs, directories and
 * regular files only. meta_blkaddr is 0: inodes follow the superblock.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import { InvalidArgumentError } from '../errors/errors.js';

const BLOCK = 4096;
const SB_OFFSET = 1024;
const MAGIC = 0xe0f5e1e2;
/** The first inode: after the 128-byte superblock (nid = offset / 32, meta_blkaddr 0). */
const FIRST_INODE = SB_OFFSET + 128;
const INODE = 64;
const DIRENT = 12;
const FT_REG = 1;
const FT_DIR = 2;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
/** xattr name prefixes by index (erofs_xattr_entry.e_name_index); the ACLs are whole names. */
const PREFIXES: [number, string][] = [
  [2, 'system.posix_acl_access'],
  [3, 'system.posix_acl_default'],
  [1, 'user.'],
  [4, 'trusted.'],
  [6, 'security.'],
];

export interface ErofsEntry {
  /** Path in the image, '' for the root; no leading slash. */
  path: string;
  type: 'dir' | 'file';
  mode: number;
  uid: number;
  gid: number;
  mtimeNs: bigint;
  xattrs: [string, Buffer][];
  /** Files: where the content is read from, and its size. */
  source?: string | undefined;
  size?: number | undefined;
}

interface Node {
  e: ErofsEntry;
  name: Buffer;
  children: Node[];
  parent: Node;
  off: number;
  isize: number;
  xattrs: Buffer | null;
  blkaddr: number;
  dirBlocks?: Buffer[];
  size: number;
}

export interface ErofsWritten {
  bytes: number;
  sha256: string;
  files: number;
}

const align = (n: number, a: number) => Math.ceil(n / a) * a;

function xattrBody(xs: [string, Buffer][], path: string): Buffer | null {
  if (xs.length === 0) return null;
  const parts: Buffer[] = [Buffer.alloc(12)];
  for (const [name, value] of xs) {
    const p = PREFIXES.find(([, pre]) => (pre.endsWith('.') ? name.startsWith(pre) : name === pre));
    if (!p) throw new InvalidArgumentError(`${path || '/'}: xattr ${name} has no EROFS name prefix`, 'CVMFS_THIN_BAD_EROFS_ENTRY');
    const suffix = Buffer.from(name.slice(p[1].length));
    if (suffix.length > 255 || value.length > 65535) throw new InvalidArgumentError(`${path || '/'}: xattr ${name} is too long`, 'CVMFS_THIN_BAD_EROFS_ENTRY');
    const ent = Buffer.alloc(align(4 + suffix.length + value.length, 4));
    ent.writeUInt8(suffix.length, 0);
    ent.writeUInt8(p[0], 1);
    ent.writeUInt16LE(value.length, 2);
    suffix.copy(ent, 4);
    value.copy(ent, 4 + suffix.length);
    parts.push(ent);
  }
  return Buffer.concat(parts);
}

/** A directory's dirent blocks: "." and ".." and its children, sorted by name, no entry split across blocks. */
function direntBlocks(d: Node): Buffer[] {
  const ents = [{ name: Buffer.from('.'), node: d }, { name: Buffer.from('..'), node: d.parent }, ...d.children.map((c) => ({ name: c.name, node: c }))].sort(
    (a, b) => Buffer.compare(a.name, b.name),
  );
  const blocks: Buffer[] = [];
  for (let i = 0; i < ents.length;) {
    let n = 0;
    let used = 0;
    while (i + n < ents.length && used + DIRENT + ents[i + n]!.name.length <= BLOCK) used += DIRENT + ents[i + n++]!.name.length;
    const b = Buffer.alloc(used);
    let nameoff = n * DIRENT;
    for (let k = 0; k < n; k++) {
      const { name, node } = ents[i + k]!;
      b.writeBigUInt64LE(BigInt(node.off / 32), k * DIRENT);
      b.writeUInt16LE(nameoff, k * DIRENT + 8);
      b.writeUInt8(node.e.type === 'dir' ? FT_DIR : FT_REG, k * DIRENT + 10);
      name.copy(b, nameoff);
      nameoff += name.length;
    }
    blocks.push(b);
    i += n;
  }
  return blocks;
}

/**
 * Write `entries` (every directory of every path among them, the root
 * included; files' data in the order given) as an EROFS image to `out` (a
 * new file). `uuid` (16 bytes) names the image (a profile records it).
 */
export async function writeErofs(entries: readonly ErofsEntry[], out: string, o: { uuid: Buffer; buildTimeNs: bigint }): Promise<ErofsWritten> {
  const byPath = new Map<string, Node>();
  for (const e of entries) {
    if (byPath.has(e.path)) throw new InvalidArgumentError(`${e.path || '/'} is listed twice`, 'CVMFS_THIN_BAD_EROFS_ENTRY');
    const name = Buffer.from(e.path.split('/').at(-1)!);
    if (e.path !== '' && (name.length === 0 || name.length > 255 || e.path.split('/').some((s) => s === '' || s === '.' || s === '..')))
      throw new InvalidArgumentError(`${e.path}: not a clean relative path`, 'CVMFS_THIN_BAD_EROFS_ENTRY');
    const size = e.type === 'file' ? (e.size ?? -1) : 0;
    if (e.type === 'file' && (!Number.isSafeInteger(size) || size < 0 || !e.source))
      throw new InvalidArgumentError(`${e.path}: a file needs a source and a size`, 'CVMFS_THIN_BAD_EROFS_ENTRY');
    const node = { e, name, children: [], off: 0, isize: 0, xattrs: xattrBody(e.xattrs, e.path), blkaddr: 0, size } as unknown as Node;
    byPath.set(e.path, node);
  }
  const root = byPath.get('');
  if (root?.e.type !== 'dir') throw new InvalidArgumentError('the image has no root directory', 'CVMFS_THIN_BAD_EROFS_ENTRY');
  root.parent = root;
  for (const [p, n] of byPath) {
    if (p === '') continue;
    const parent = byPath.get(p.includes('/') ? p.slice(0, p.lastIndexOf('/')) : '');
    if (parent?.e.type !== 'dir') throw new InvalidArgumentError(`${p}: its directory is not in the image`, 'CVMFS_THIN_BAD_EROFS_ENTRY');
    n.parent = parent;
    parent.children.push(n);
  }
  // inodes: the root first, then depth first by name; none crosses a block unless larger than one
  const order: Node[] = [];
  const walk = (n: Node) => {
    order.push(n);
    for (const c of [...n.children].sort((a, b) => Buffer.compare(a.name, b.name))) if (c.e.type === 'dir') walk(c);
    for (const c of n.children) if (c.e.type === 'file') order.push(c);
  };
  walk(root);
  let at = FIRST_INODE;
  for (const n of order) {
    n.isize = INODE + (n.xattrs?.length ?? 0);
    if ((at % BLOCK) + n.isize > BLOCK && n.isize <= BLOCK) at = align(at, BLOCK);
    n.off = at;
    at = align(at + n.isize, 32);
  }
  if (root.off / 32 > 0xffff) throw new InvalidArgumentError('root inode out of range', 'CVMFS_THIN_BAD_EROFS_ENTRY');
  // directory blocks after the inodes, then file data in the order given
  let blk = align(at, BLOCK) / BLOCK;
  for (const n of order) {
    if (n.e.type !== 'dir') continue;
    n.dirBlocks = direntBlocks(n);
    n.blkaddr = blk;
    n.size = (n.dirBlocks.length - 1) * BLOCK + n.dirBlocks.at(-1)!.length;
    blk += n.dirBlocks.length;
  }
  const metaBlocks = blk;
  const files = entries.filter((e) => e.type === 'file').map((e) => byPath.get(e.path)!);
  for (const f of files) {
    f.blkaddr = f.size > 0 ? blk : 0;
    blk += Math.ceil(f.size / BLOCK);
  }
  if (blk > 0xffffffff) throw new InvalidArgumentError('image too large', 'CVMFS_THIN_BAD_EROFS_ENTRY');
  const meta = Buffer.alloc(metaBlocks * BLOCK);
  const sb = meta.subarray(SB_OFFSET, SB_OFFSET + 128);
  sb.writeUInt32LE(MAGIC, 0);
  sb.writeUInt8(12, 12); // blkszbits
  sb.writeUInt16LE(root.off / 32, 14);
  sb.writeBigUInt64LE(BigInt(order.length), 16);
  sb.writeBigUInt64LE(o.buildTimeNs / 1_000_000_000n, 24);
  sb.writeUInt32LE(Number(o.buildTimeNs % 1_000_000_000n), 32);
  sb.writeUInt32LE(blk, 36);
  o.uuid.copy(sb, 48, 0, 16);
  order.forEach((n, ino) => {
    const b = meta.subarray(n.off, n.off + n.isize);
    const dir = n.e.type === 'dir';
    b.writeUInt16LE(1, 0); // extended inode, FLAT_PLAIN
    b.writeUInt16LE(n.xattrs ? (n.xattrs.length - 12) / 4 + 1 : 0, 2);
    b.writeUInt16LE((dir ? S_IFDIR : S_IFREG) | (n.e.mode & 0o7777), 4);
    b.writeBigUInt64LE(BigInt(n.size), 8);
    b.writeUInt32LE(n.blkaddr, 16);
    b.writeUInt32LE(ino + 1, 20);
    b.writeUInt32LE(n.e.uid >>> 0, 24);
    b.writeUInt32LE(n.e.gid >>> 0, 28);
    b.writeBigUInt64LE(n.e.mtimeNs / 1_000_000_000n, 32);
    b.writeUInt32LE(Number(n.e.mtimeNs % 1_000_000_000n), 40);
    b.writeUInt32LE(dir ? 2 + n.children.filter((c) => c.e.type === 'dir').length : 1, 44);
    n.xattrs?.copy(b, INODE);
    n.dirBlocks?.forEach((d, i) => d.copy(meta, (n.blkaddr + i) * BLOCK));
  });
  const hash = createHash('sha256');
  const fh = await fsp.open(out, 'wx', 0o644);
  let pos = 0;
  const write = async (b: Buffer) => {
    hash.update(b);
    await fh.write(b, 0, b.length, pos);
    pos += b.length;
  };
  try {
    await write(meta);
    const buf = Buffer.alloc(1 << 20);
    for (const f of files) {
      const src = await fsp.open(f.e.source!, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
      try {
        for (let done = 0; done < f.size;) {
          const { bytesRead } = await src.read(buf, 0, Math.min(buf.length, f.size - done), done);
          if (bytesRead === 0) throw new InvalidArgumentError(`${f.e.path}: ${f.e.source} has ${done} bytes, not ${f.size}`, 'CVMFS_THIN_BAD_EROFS_ENTRY');
          await write(buf.subarray(0, bytesRead));
          done += bytesRead;
        }
      } finally {
        await src.close();
      }
      const pad = align(f.size, BLOCK) - f.size;
      if (pad) await write(Buffer.alloc(pad));
    }
  } catch (e) {
    await fh.close();
    await fsp.rm(out, { force: true });
    throw e;
  }
  await fh.close();
  return { bytes: pos, sha256: hash.digest('hex'), files: files.length };
}

export interface ErofsHead {
  bytes: number;
  uuid: string;
}

/** The size and uuid (hex) an image's first 2 KiB say it has; null if they are not an EROFS superblock this writer makes. */
export function readErofsHead(head: Buffer): ErofsHead | null {
  if (head.length < SB_OFFSET + 128) return null;
  const sb = head.subarray(SB_OFFSET, SB_OFFSET + 128);
  if (sb.readUInt32LE(0) !== MAGIC || sb.readUInt8(12) !== 12) return null;
  return { bytes: sb.readUInt32LE(36) * BLOCK, uuid: sb.subarray(48, 64).toString('hex') };
}

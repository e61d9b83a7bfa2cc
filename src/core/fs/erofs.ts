/**
 * EROFS images (the kernel's read-only file system, Documentation/
 * filesystems/erofs.rst): a profile's files as an image a node mounts
 * straight from CVMFS (SPEC §8), so its containers read them without a copy
 * or an unpack, while the client fetches the image's chunks.
 *
 * Two files: the metadata (superblock, one extra device, every inode and
 * directory: small, so a CVMFS client fetches it whole in one round trip
 * and the mount waits for nothing else) and the data (its extra device, a
 * blob of the files' contents in access order, chunked by CVMFS, its chunks
 * fetched while the container starts). Mounted with `device=<data file>`.
 *
 * Written here, not by mkfs.erofs: the files come from a staged tree with
 * exact owners, ns times and xattrs (no root needed to write them) and the
 * data must be in access order. The subset: 4 KiB blocks, 64-byte extended
 * inodes, inline xattrs, directories (FLAT_PLAIN in the metadata) and regular
 * files (one chunk each, indexed on device 1; empty ones FLAT_PLAIN) only.
 * meta_blkaddr is 0: the device table and then the inodes follow the
 * superblock.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import { InvalidArgumentError } from '../errors/errors.js';

const BLOCK = 4096;
const SB_OFFSET = 1024;
const MAGIC = 0xe0f5e1e2;
/** One device slot (the data file) after the 128-byte superblock, then the inodes (nid = offset / 32, meta_blkaddr 0). */
const DEVT_SLOT = SB_OFFSET + 128;
const FIRST_INODE = DEVT_SLOT + 128;
const FEATURE_CHUNKED_FILE = 0x4;
const FEATURE_DEVICE_TABLE = 0x8;
/** i_format: extended inode, data layout FLAT_PLAIN (0) or CHUNK_BASED (4). */
const FORMAT_PLAIN = 1;
const FORMAT_CHUNKS = 1 | (4 << 1);
/** chunk format: 8-byte indexes (with a device id). */
const CHUNK_INDEXES = 0x20;
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

interface ErofsWritten {
  /** The metadata file. */
  bytes: number;
  sha256: string;
  files: number;
  /** The data file (the extra device). */
  data: { bytes: number; sha256: string };
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
  const body = Buffer.concat(parts);
  // i_xattr_icount is 16 bits; one inode's xattrs in one block at most
  if (body.length > BLOCK - INODE) throw new InvalidArgumentError(`${path || '/'}: its xattrs are too large`, 'CVMFS_THIN_BAD_EROFS_ENTRY');
  return body;
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

/** Bytes of a file's chunk index, after its inode and xattrs (8-aligned): one chunk of 2^k bytes holds it. */
const chunked = (n: Node) => n.e.type === 'file' && n.size > 0;
const chunkBits = (size: number) => Math.max(0, Math.ceil(Math.log2(size)) - 12);

/**
 * Write `entries` (every directory of every path among them, the root
 * included; files' data in the order given) as an EROFS image: its metadata
 * to `out`, its data to `data` (new files). `uuid` (16 bytes) names the
 * image (a profile records it).
 */
export async function writeErofs(entries: readonly ErofsEntry[], out: string, data: string, o: { uuid: Buffer; buildTimeNs: bigint }): Promise<ErofsWritten> {
  const byPath = new Map<string, Node>();
  for (const e of entries) {
    if (byPath.has(e.path)) throw new InvalidArgumentError(`${e.path || '/'} is listed twice`, 'CVMFS_THIN_BAD_EROFS_ENTRY');
    const name = Buffer.from(e.path.split('/').at(-1)!);
    if (e.path !== '' && (name.length === 0 || name.length > 255 || e.path.split('/').some((s) => s === '' || s === '.' || s === '..')))
      throw new InvalidArgumentError(`${e.path}: not a clean relative path`, 'CVMFS_THIN_BAD_EROFS_ENTRY');
    if (
      e.mtimeNs < 0n ||
      e.mtimeNs >= 1n << 63n ||
      !Number.isInteger(e.uid) ||
      !Number.isInteger(e.gid) ||
      e.uid < 0 ||
      e.gid < 0 ||
      e.uid > 0xffffffff ||
      e.gid > 0xffffffff
    )
      throw new InvalidArgumentError(`${e.path || '/'}: a time before 1970 or an id EROFS cannot hold`, 'CVMFS_THIN_BAD_EROFS_ENTRY');
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
    const whole = chunked(n) ? align(n.isize, 8) + 8 : n.isize;
    if ((at % BLOCK) + whole > BLOCK && whole <= BLOCK) at = align(at, BLOCK);
    n.off = at;
    at = align(at + whole, 32);
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
  // the data device: each file's blocks, in the order given
  const files = entries.filter((e) => e.type === 'file').map((e) => byPath.get(e.path)!);
  let dblk = 0;
  for (const f of files) {
    f.blkaddr = f.size > 0 ? dblk : 0;
    dblk += Math.ceil(f.size / BLOCK);
  }
  // a device of at least one block
  const dataBlocks = Math.max(1, dblk);
  if (dataBlocks > 0xffffffff) throw new InvalidArgumentError('image too large', 'CVMFS_THIN_BAD_EROFS_ENTRY');
  const meta = Buffer.alloc(metaBlocks * BLOCK);
  const sb = meta.subarray(SB_OFFSET, SB_OFFSET + 128);
  sb.writeUInt32LE(MAGIC, 0);
  sb.writeUInt8(12, 12); // blkszbits
  sb.writeUInt16LE(root.off / 32, 14);
  sb.writeBigUInt64LE(BigInt(order.length), 16);
  sb.writeBigUInt64LE(o.buildTimeNs / 1_000_000_000n, 24);
  sb.writeUInt32LE(Number(o.buildTimeNs % 1_000_000_000n), 32);
  sb.writeUInt32LE(metaBlocks, 36);
  o.uuid.copy(sb, 48, 0, 16);
  sb.writeUInt32LE(FEATURE_CHUNKED_FILE | FEATURE_DEVICE_TABLE, 80);
  sb.writeUInt16LE(1, 86); // extra devices
  sb.writeUInt16LE(DEVT_SLOT / 128, 88);
  // the device slot: no tag (the mount names the file), its blocks, not mapped into a flat address space
  meta.writeUInt32LE(dataBlocks, DEVT_SLOT + 64);
  order.forEach((n, ino) => {
    const b = meta.subarray(n.off, n.off + n.isize);
    const dir = n.e.type === 'dir';
    b.writeUInt16LE(chunked(n) ? FORMAT_CHUNKS : FORMAT_PLAIN, 0);
    b.writeUInt16LE(n.xattrs ? (n.xattrs.length - 12) / 4 + 1 : 0, 2);
    b.writeUInt16LE((dir ? S_IFDIR : S_IFREG) | (n.e.mode & 0o7777), 4);
    b.writeBigUInt64LE(BigInt(n.size), 8);
    if (chunked(n)) {
      // one chunk (2^k bytes, at least its size) on device 1 at its block
      b.writeUInt16LE(chunkBits(n.size) | CHUNK_INDEXES, 16);
      const idx = align(n.off + n.isize, 8);
      meta.writeUInt16LE(1, idx + 2);
      meta.writeUInt32LE(n.blkaddr, idx + 4);
    } else b.writeUInt32LE(n.blkaddr, 16);
    b.writeUInt32LE(ino + 1, 20);
    b.writeUInt32LE(n.e.uid >>> 0, 24);
    b.writeUInt32LE(n.e.gid >>> 0, 28);
    b.writeBigUInt64LE(n.e.mtimeNs / 1_000_000_000n, 32);
    b.writeUInt32LE(Number(n.e.mtimeNs % 1_000_000_000n), 40);
    b.writeUInt32LE(dir ? 2 + n.children.filter((c) => c.e.type === 'dir').length : 1, 44);
    n.xattrs?.copy(b, INODE);
    n.dirBlocks?.forEach((d, i) => d.copy(meta, (n.blkaddr + i) * BLOCK));
  });
  const metaHash = createHash('sha256').update(meta).digest('hex');
  await fsp.writeFile(out, meta, { flag: 'wx', mode: 0o644 });
  const hash = createHash('sha256');
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(data, 'wx', 0o644);
  } catch (e) {
    await fsp.rm(out, { force: true });
    throw e;
  }
  let pos = 0;
  const write = async (b: Buffer) => {
    hash.update(b);
    await fh.write(b, 0, b.length, pos);
    pos += b.length;
  };
  try {
    if (dblk === 0) await write(Buffer.alloc(BLOCK));
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
    for (const f of [out, data]) await fsp.rm(f, { force: true });
    throw e;
  }
  await fh.close();
  return { bytes: meta.length, sha256: metaHash, files: files.length, data: { bytes: pos, sha256: hash.digest('hex') } };
}

export interface ErofsHead {
  /** The metadata file's size, its data file's (the one extra device), its uuid (hex). */
  bytes: number;
  dataBytes: number;
  uuid: string;
}

/** What an image's first 2 KiB say of it; null if they are not the superblock and device table this writer makes. */
export function readErofsHead(head: Buffer): ErofsHead | null {
  if (head.length < FIRST_INODE) return null;
  const sb = head.subarray(SB_OFFSET, SB_OFFSET + 128);
  if (sb.readUInt32LE(0) !== MAGIC || sb.readUInt8(12) !== 12) return null;
  if (sb.readUInt16LE(86) !== 1 || sb.readUInt16LE(88) !== DEVT_SLOT / 128) return null;
  return { bytes: sb.readUInt32LE(36) * BLOCK, dataBytes: head.readUInt32LE(DEVT_SLOT + 64) * BLOCK, uuid: sb.subarray(48, 64).toString('hex') };
}

/**
 * Writing tars in Docker/OCI layer format.
 *
 * - packDirectory: a directory tree (e.g. an overlay upper dir for the graph
 *   driver's Diff), walked depth-first with each directory's names in byte
 *   order (the order of Go's filepath.Walk, as Docker writes it). PAX headers
 *   carry long/non-ASCII names, big ids and sizes, sub-second mtimes and
 *   xattrs (SCHILY.xattr.*, binary-exact; trusted.overlay.* never emitted).
 *   Hardlinks are found by (dev, ino).
 * - packEntries / packEntriesToBuffer: a tar of in-memory entries (thin.json
 *   layers), fully deterministic (uid/gid 0, mtime 0 unless given).
 */
import { promises as fsp, type BigIntStats } from 'node:fs';
import { Readable } from 'node:stream';
import { InvalidArgumentError } from '../errors/errors.js';
import { lgetxattr, llistxattr } from '../host/sys.js';
import { OPAQUE_MARKER, OVERLAY_OPAQUE_XATTR, WHITEOUT_PREFIX } from '../fs/whiteout.js';
import { ioError } from './errors.js';
import { bstr, encodeHeader, END_OF_ARCHIVE, padding, type EntryType, type TarHeader, type TarTime } from './headers.js';
import { toContainer, type IdMaps } from '../util/idmap.js';
import { cleanName, fsPath, joinRel, parentOf } from './paths.js';

interface PackChange {
  /** path relative to the directory ("/a/b" or "a/b") */
  path: string;
  kind: 'add' | 'modify' | 'delete';
}

interface PackOptions {
  /**
   * 'overlay': char devices 0/0 become `.wh.<name>` entries and directories
   * with trusted.overlay.opaque=y get a `.wh..wh..opq` entry (what the graph
   * driver's Diff returns for an overlay upper dir). 'none' (default): pack
   * what is there.
   */
  whiteouts?: 'overlay' | 'none';
  /** host → container ids (userns remap); ids outside the maps are an error */
  idMap?: IdMaps;
  /**
   * Only these paths (each one entry, not recursive), sorted; 'delete'
   * becomes a `.wh.<name>` entry (Docker's ExportChanges).
   */
  changes?: PackChange[];
  /** emit "./" for the directory itself (default false, like Docker) */
  includeRoot?: boolean;
  /** emit xattrs (default true) */
  xattrs?: boolean;
}

const READ_CHUNK = 1 << 20;

function majorOf(rdev: bigint): number {
  return Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn));
}
function minorOf(rdev: bigint): number {
  return Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn));
}
function timeOf(ns: bigint): TarTime {
  let sec = ns / 1_000_000_000n;
  let nsec = ns % 1_000_000_000n;
  if (nsec < 0n) {
    nsec += 1_000_000_000n;
    sec -= 1n;
  }
  return { sec: Number(sec), nsec: Number(nsec) };
}

function baseHeader(name: string, type: EntryType): TarHeader {
  return {
    name,
    linkname: '',
    type,
    mode: 0,
    uid: 0,
    gid: 0,
    size: 0,
    mtime: { sec: 0, nsec: 0 },
    devmajor: 0,
    devminor: 0,
    uname: '',
    gname: '',
    xattrs: null,
  };
}

/** Pack a directory tree as a layer tar stream. */
export function packDirectory(dir: string, opts: PackOptions = {}): Readable {
  return Readable.from(packGen(dir, opts), { objectMode: false, highWaterMark: 1 << 20 });
}

async function* packGen(dir: string, opts: PackOptions): AsyncGenerator<Buffer> {
  const rootB = bstr(dir.replace(/\/+$/, '') || '/');
  const abs = (rel: string): string | Buffer => fsPath(rel === '' ? rootB : rootB === '/' ? '/' + rel : rootB + '/' + rel);
  const overlay = opts.whiteouts === 'overlay';
  const withXattrs = opts.xattrs ?? true;
  const links = new Map<string, string>();
  /** the path being packed, for error messages */
  let current = '';

  const mapIds = (rel: string, uid: number, gid: number): [number, number] => {
    const m = opts.idMap;
    if (!m) return [uid, gid];
    const u = toContainer(m.uids, uid);
    const g = toContainer(m.gids, gid);
    if (u === null || g === null) {
      throw new InvalidArgumentError(
        `pack ${JSON.stringify(rel)}: host ${u === null ? `uid ${uid}` : `gid ${gid}`} is outside the id map`,
        'CVMFS_THIN_UNMAPPED_ID',
      );
    }
    return [u, g];
  };

  const readXattrs = (rel: string): Map<string, Buffer> | null => {
    if (!withXattrs) return null;
    const p = abs(rel);
    let out: Map<string, Buffer> | null = null;
    for (const n of llistxattr(p)) {
      if (n.startsWith('trusted.overlay.')) continue;
      const v = lgetxattr(p, fsPath(n));
      if (v === null) continue;
      (out ??= new Map()).set(n, Buffer.from(v));
    }
    return out;
  };

  /** Header(s) and data of one path; `rel` '' is the root. */
  async function* emit(rel: string, st: BigIntStats): AsyncGenerator<Buffer> {
    current = rel;
    const name = rel === '' ? './' : rel;
    const mode = Number(st.mode) & 0o7777;
    const [uid, gid] = mapIds(rel, Number(st.uid), Number(st.gid));
    const mtime = timeOf(st.mtimeNs);

    if (st.isCharacterDevice() && overlay && st.rdev === 0n) {
      // overlay whiteout → AUFS-style whiteout file (Docker: mode 0600, size 0)
      const h = baseHeader(joinRel(parentOf(rel), WHITEOUT_PREFIX + rel.slice(rel.lastIndexOf('/') + 1)), 'file');
      h.mode = 0o600;
      h.uid = uid;
      h.gid = gid;
      h.mtime = mtime;
      yield encodeHeader(h);
      return;
    }
    if (st.isSocket()) return; // like Docker: sockets are not archived

    let type: EntryType;
    if (st.isFile()) type = 'file';
    else if (st.isDirectory()) type = 'dir';
    else if (st.isSymbolicLink()) type = 'symlink';
    else if (st.isCharacterDevice()) type = 'char';
    else if (st.isBlockDevice()) type = 'block';
    else if (st.isFIFO()) type = 'fifo';
    else return;

    const h = baseHeader(name, type);
    h.mode = mode;
    h.uid = uid;
    h.gid = gid;
    h.mtime = mtime;
    if (type !== 'dir' && st.nlink > 1n) {
      const key = `${st.dev}:${st.ino}`;
      const first = links.get(key);
      if (first !== undefined) {
        h.type = 'link';
        h.linkname = first;
        yield encodeHeader(h);
        return;
      }
      links.set(key, rel);
    }
    h.xattrs = readXattrs(rel);
    if (type === 'symlink') h.linkname = ((await fsp.readlink(abs(rel), { encoding: 'buffer' })) as Buffer).toString('latin1');
    if (type === 'char' || type === 'block') {
      h.devmajor = majorOf(st.rdev);
      h.devminor = minorOf(st.rdev);
    }
    const opaque = type === 'dir' && overlay && lgetxattr(abs(rel), OVERLAY_OPAQUE_XATTR)?.toString() === 'y';
    if (type !== 'file') {
      yield encodeHeader(h);
      if (opaque) {
        const o = baseHeader(joinRel(rel, OPAQUE_MARKER), 'file');
        o.mode = mode & 0o777;
        o.uid = uid;
        o.gid = gid;
        yield encodeHeader(o);
      }
      return;
    }
    const size = Number(st.size);
    h.size = size;
    yield encodeHeader(h);
    const fh = await fsp.open(abs(rel), 'r');
    try {
      let done = 0;
      while (done < size) {
        const want = Math.min(READ_CHUNK, size - done);
        const buf = Buffer.allocUnsafe(want);
        const { bytesRead } = await fh.read(buf, 0, want, done);
        if (bytesRead === 0) throw new Error(`file shrank while packing: ${done} of ${size} bytes`);
        done += bytesRead;
        yield bytesRead === want ? buf : buf.subarray(0, bytesRead);
      }
    } finally {
      await fh.close();
    }
    const pad = padding(size);
    if (pad > 0) yield Buffer.alloc(pad);
  }

  async function* visit(rel: string): AsyncGenerator<Buffer> {
    const names = ((await fsp.readdir(abs(rel), { encoding: 'buffer' })) as Buffer[]).map((b) => b.toString('latin1')).sort();
    for (const n of names) {
      const child = joinRel(rel, n);
      let st: BigIntStats;
      try {
        st = await fsp.lstat(abs(child), { bigint: true });
      } catch (e) {
        if ((e as { code?: string }).code === 'ENOENT') continue; // vanished meanwhile
        throw e;
      }
      yield* emit(child, st);
      if (st.isDirectory()) yield* visit(child);
    }
  }

  try {
    if (opts.changes) {
      const sorted = opts.changes
        .map((c) => {
          const comps = cleanName(bstr(c.path));
          if (comps === null || comps.length === 0) throw new InvalidArgumentError(`pack: invalid change path ${JSON.stringify(c.path)}`);
          return { rel: comps.join('/'), kind: c.kind };
        })
        .sort((a, b) => (a.rel < b.rel ? -1 : a.rel > b.rel ? 1 : 0));
      for (const c of sorted) {
        current = c.rel;
        if (c.kind === 'delete') {
          const h = baseHeader(joinRel(parentOf(c.rel), WHITEOUT_PREFIX + c.rel.slice(c.rel.lastIndexOf('/') + 1)), 'file');
          yield encodeHeader(h);
          continue;
        }
        const st = await fsp.lstat(abs(c.rel), { bigint: true });
        yield* emit(c.rel, st);
      }
    } else {
      if (opts.includeRoot) yield* emit('', await fsp.lstat(abs(''), { bigint: true }));
      yield* visit('');
    }
  } catch (e) {
    if (e instanceof InvalidArgumentError) throw e;
    throw ioError(current, e);
  }
  yield END_OF_ARCHIVE;
}

// ------------------------------------------------------------------ in-memory

export interface MemEntry {
  /** path in the tar (UTF-8 text); a trailing '/' makes a directory */
  name: string;
  /** default: 'dir' when the name ends in '/', else 'file' */
  type?: 'file' | 'dir' | 'symlink';
  data?: string | Uint8Array;
  /** default 0644 (file), 0755 (dir), 0777 (symlink) */
  mode?: number;
  /** symlink target */
  linkname?: string;
  /** modification time in whole seconds since the epoch (default 0; negative and huge values go to PAX) */
  mtime?: number;
}

/** A deterministic tar of in-memory entries, in the given order (uid/gid 0, mtime 0 unless given). */
export function packEntries(entries: readonly MemEntry[]): Readable {
  return Readable.from([packEntriesToBuffer(entries)], { objectMode: false });
}

/** packEntries, as one buffer. */
export function packEntriesToBuffer(entries: readonly MemEntry[]): Buffer {
  const parts: Buffer[] = [];
  for (const e of entries) {
    const type = e.type ?? (e.name.endsWith('/') ? 'dir' : 'file');
    const name = bstr(type === 'dir' ? e.name.replace(/\/*$/, '/') : e.name);
    const h = baseHeader(name, type);
    h.mode = e.mode ?? (type === 'dir' ? 0o755 : type === 'symlink' ? 0o777 : 0o644);
    if (e.mtime !== undefined) {
      if (!Number.isSafeInteger(e.mtime))
        throw new InvalidArgumentError(`packEntries: ${JSON.stringify(e.name)}: mtime ${e.mtime} is not a whole number of seconds`);
      h.mtime = { sec: e.mtime, nsec: 0 };
    }
    if (type === 'symlink') {
      if (!e.linkname) throw new InvalidArgumentError(`packEntries: symlink ${JSON.stringify(e.name)} needs a linkname`);
      h.linkname = bstr(e.linkname);
    }
    const data = type === 'file' && e.data !== undefined ? (typeof e.data === 'string' ? Buffer.from(e.data, 'utf8') : Buffer.from(e.data)) : null;
    h.size = data?.length ?? 0;
    parts.push(encodeHeader(h));
    if (data) {
      parts.push(data);
      const pad = padding(data.length);
      if (pad > 0) parts.push(Buffer.alloc(pad));
    }
  }
  parts.push(END_OF_ARCHIVE);
  return Buffer.concat(parts);
}

/**
 * File-system primitives of the CVMFS publish simulator: mounts (through the
 * project's syscall layer), mountinfo, copying one entry with chosen
 * metadata, and a hard-linked copy of a tree. No CVMFS code is used.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import {
  lchown,
  lgetxattr,
  llistxattr,
  lsetxattr,
  lutimesNs,
  MNT_DETACH,
  mknod,
  mount,
  MS_BIND,
  MS_PRIVATE,
  MS_RDONLY,
  MS_REMOUNT,
  S_IFBLK,
  S_IFCHR,
  S_IFIFO,
  umount,
} from '../../../src/core/host/sys.js';

export const S_IFSOCK = 0o140000;

/** A failure the CLI reports as one line on stderr (exit 1). */
export class SimError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SimError';
  }
}

const errnoCode = (e: unknown): string | undefined => (e as { code?: string }).code;

/** Mount points in this mount namespace (mountinfo field 5, octal escapes undone). */
export function mountPoints(): string[] {
  return fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((l) => l.length > 0)
    .map((l) => l.split(' ')[4]!.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8))));
}

export function isMounted(p: string): boolean {
  let real: string;
  try {
    real = fs.realpathSync(p);
  } catch {
    return false;
  }
  return mountPoints().includes(real);
}

/** Unmount everything stacked on `p`; with `force`, detach a busy mount (MNT_DETACH) instead of failing. */
export function unmountAll(p: string, force = false): void {
  for (let i = 0; i < 64 && isMounted(p); i++) {
    try {
      umount(p);
    } catch (e) {
      if (errnoCode(e) === 'EINVAL') return;
      if (errnoCode(e) === 'EBUSY' && force) {
        umount(p, MNT_DETACH);
        continue;
      }
      if (errnoCode(e) === 'EBUSY') throw new SimError(`${p} is busy (a process has a file or its working directory there): cannot unmount it`);
      throw e;
    }
  }
}

/** A read-only, private bind mount of `source` on `target` (what /cvmfs/<repo> is outside a transaction). */
export function bindReadOnly(source: string, target: string): void {
  mount(source, target, null, MS_BIND, null);
  try {
    mount(null, target, null, MS_PRIVATE, null);
    mount(null, target, null, MS_BIND | MS_REMOUNT | MS_RDONLY, null);
  } catch (e) {
    umount(target, MNT_DETACH);
    throw e;
  }
}

/** A real kernel overlayfs union (the transaction's writable /cvmfs/<repo>), private. */
export function mountUnion(lower: string, upper: string, work: string, target: string): void {
  for (const d of [lower, upper, work]) {
    if (/[,:\\\s]/.test(d)) throw new SimError(`${d}: overlay directories must not contain commas, colons, backslashes or spaces`);
  }
  // explicit, whatever the module's defaults: renaming a lower directory fails with EXDEV
  // (no redirects), copy-up copies data (no metacopy), as with a plain CVMFS union
  mount('overlay', target, 'overlay', 0, `lowerdir=${lower},upperdir=${upper},workdir=${work},redirect_dir=off,metacopy=off,index=off`);
  try {
    mount(null, target, null, MS_PRIVATE, null);
  } catch (e) {
    umount(target, MNT_DETACH);
    throw e;
  }
}

export function remount(target: string, readOnly: boolean): void {
  try {
    mount(null, target, null, MS_REMOUNT | (readOnly ? MS_RDONLY : 0), null);
  } catch (e) {
    if (errnoCode(e) === 'EBUSY') throw new SimError(`${target} is busy (a file is open for writing): cannot make it read-only`);
    throw e;
  }
}

export function exists(p: string): boolean {
  try {
    fs.lstatSync(p);
    return true;
  } catch {
    return false;
  }
}

export function lstatOrNull(p: string): fs.BigIntStats | null {
  try {
    return fs.lstatSync(p, { bigint: true });
  } catch (e) {
    if (errnoCode(e) === 'ENOENT' || errnoCode(e) === 'ENOTDIR') return null;
    throw e;
  }
}

export function rmTree(p: string): void {
  fs.rmSync(p, { recursive: true, force: true });
}

/** A copy of `src` at `dest` sharing every non-directory inode (cheap; files are always replaced, never changed in place). */
export function linkCopy(src: string, dest: string): void {
  rmTree(dest);
  execFileSync('cp', ['-a', '--link', '--', src, dest], { stdio: ['ignore', 'ignore', 'pipe'] });
}

export function devNumbers(rdev: bigint): { major: number; minor: number } {
  const major = Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn));
  const minor = Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn));
  return { major, minor };
}

export function typeName(st: fs.BigIntStats | fs.Stats): 'dir' | 'file' | 'symlink' | 'char' | 'block' | 'fifo' | 'socket' {
  if (st.isDirectory()) return 'dir';
  if (st.isFile()) return 'file';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isCharacterDevice()) return 'char';
  if (st.isBlockDevice()) return 'block';
  if (st.isFIFO()) return 'fifo';
  return 'socket';
}

export function hasXattr(p: string, name: string): boolean {
  return lgetxattr(p, name) !== null;
}

/** The xattrs of `p` that a publish keeps: none, or all but `trusted.*`, within CVMFS's size limits (name, value ≤ 256 bytes, ≤ 256 of them). */
export function publishableXattrs(p: string, include: boolean): [string, Buffer][] {
  if (!include) return [];
  const out: [string, Buffer][] = [];
  for (const name of llistxattr(p)) {
    if (name.startsWith('trusted.')) continue;
    const v = lgetxattr(p, name);
    if (v === null || Buffer.byteLength(name, 'latin1') > 256 || v.length > 256 || out.length >= 256) continue;
    out.push([name, v]);
  }
  return out;
}

export interface Meta {
  uid: number;
  gid: number;
  /** Permission bits incl. setuid/setgid/sticky. */
  mode: number;
  mtimeSec: number;
  mtimeNsec: number;
  xattrs: [string, Buffer][];
}

export function metaOf(st: fs.BigIntStats, xattrs: [string, Buffer][], keepNs: boolean): Meta {
  return {
    uid: Number(st.uid),
    gid: Number(st.gid),
    mode: Number(st.mode) & 0o7777,
    mtimeSec: Number(st.mtimeNs / 1_000_000_000n),
    mtimeNsec: keepNs ? Number(st.mtimeNs % 1_000_000_000n) : 0,
    xattrs,
  };
}

/** Owner, then mode (a chown clears setuid), xattrs, then times (atime = mtime: a catalog has no atime). */
export function applyMeta(p: string, isSymlink: boolean, m: Meta): void {
  lchown(p, m.uid, m.gid);
  if (!isSymlink) fs.chmodSync(p, m.mode);
  for (const [n, v] of m.xattrs) lsetxattr(p, n, v);
  lutimesNs(p, m.mtimeSec, m.mtimeNsec, m.mtimeSec, m.mtimeNsec);
}

/** Create a non-directory at `dest` like `src` (a new inode: hard links are split), with metadata `m`. */
export function copyEntry(src: string, st: fs.BigIntStats, dest: string, m: Meta): void {
  const t = typeName(st);
  const perm = Number(st.mode) & 0o7777;
  switch (t) {
    case 'file':
      fs.copyFileSync(src, dest, fs.constants.COPYFILE_EXCL);
      break;
    case 'symlink':
      fs.symlinkSync(fs.readlinkSync(src, { encoding: 'buffer' }), Buffer.from(dest));
      break;
    case 'char':
    case 'block': {
      const { major, minor } = devNumbers(st.rdev);
      mknod(dest, (t === 'char' ? S_IFCHR : S_IFBLK) | perm, major, minor);
      break;
    }
    case 'fifo':
      mknod(dest, S_IFIFO | perm);
      break;
    case 'socket':
      mknod(dest, S_IFSOCK | perm);
      break;
    case 'dir':
      throw new Error(`copyEntry: ${src} is a directory`);
  }
  applyMeta(dest, t === 'symlink', m);
}

/** A fresh directory inode in place of `dir` (children moved over), so that its xattrs can be set anew. */
export function renewDirectory(dir: string): void {
  const tmp = `${dir}.renew-${process.pid}`;
  fs.mkdirSync(tmp);
  for (const c of fs.readdirSync(dir)) fs.renameSync(path.join(dir, c), path.join(tmp, c));
  fs.rmdirSync(dir);
  fs.renameSync(tmp, dir);
}

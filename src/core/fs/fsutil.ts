/** File system helpers shared by the daemons: disk usage, mount-aware removal, atomic writes. */
import { lstatSync, promises as fsp, readdirSync, readFileSync, rmdirSync, unlinkSync } from 'node:fs';
import fs from 'node:fs';
import path from 'node:path';
import { InternalError } from '../errors/errors.js';

export interface MountInfo {
  mountPoint: string;
  root: string;
  fsType: string;
  source: string;
  options: string;
  /** The file system's own options (mountinfo's last field: an overlay's `lowerdir=`, `upperdir=`), raw (octal escapes kept). */
  superOptions?: string;
  /** Mount propagation from mountinfo's optional fields: `shared:N` → shared (even when also a slave), `master:N` → slave. */
  propagation?: 'shared' | 'slave' | 'private' | 'unbindable';
}

function propagationOf(optional: readonly string[]): NonNullable<MountInfo['propagation']> {
  if (optional.some((f) => f.startsWith('shared:'))) return 'shared';
  if (optional.some((f) => f.startsWith('master:'))) return 'slave';
  return optional.includes('unbindable') ? 'unbindable' : 'private';
}

/** `\040`-style octal escapes of /proc/self/mountinfo. */
function unescapeMountinfo(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** Parse /proc/self/mountinfo text. Pure. */
function parseMountinfo(text: string): MountInfo[] {
  const out: MountInfo[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    const f = line.split(' ');
    const sep = f.indexOf('-', 6);
    if (sep < 0 || f.length < sep + 3) continue;
    out.push({
      root: unescapeMountinfo(f[3]!),
      mountPoint: unescapeMountinfo(f[4]!),
      options: f[5]!,
      fsType: f[sep + 1]!,
      source: unescapeMountinfo(f[sep + 2]!),
      superOptions: f[sep + 3] ?? '',
      propagation: propagationOf(f.slice(6, sep)),
    });
  }
  return out;
}

export function readMountinfo(): MountInfo[] {
  return parseMountinfo(readFileSync('/proc/self/mountinfo', 'utf8'));
}

/** Mount points at or below `dir`. */
function mountsUnder(dir: string, mounts: MountInfo[] = readMountinfo()): string[] {
  const d = path.resolve(dir);
  return mounts.map((m) => m.mountPoint).filter((mp) => mp === d || mp.startsWith(d + '/'));
}

/**
 * Remove a directory tree, refusing to do so while anything is mounted at or
 * below it: `rm -rf` across a mount point would delete the mounted file
 * system's content (a bind-mounted host dir, a CVMFS layer).
 * Most trees removed are empty (an unused upper or work dir): one rmdir first
 * (it cannot cross a mount point: a mount point answers EBUSY, a directory
 * with one below it ENOTEMPTY), and the mount table is consulted only when
 * that fails — `mounts` may be a function, called then. Synchronous by
 * default (no thread-pool round trip); `background` work passes
 * `{ sync: false }` so that it never holds up the event loop.
 */
export async function removeTree(dir: string, mounts?: MountInfo[] | (() => MountInfo[]), o: { sync?: boolean } = {}): Promise<void> {
  try {
    if (o.sync === false) await fsp.rmdir(dir);
    else rmdirSync(dir);
    return;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return;
    const under = mountsUnder(dir, typeof mounts === 'function' ? mounts() : mounts);
    if (under.length > 0) {
      throw new InternalError(`refusing to remove ${dir}: ${under.length} mount(s) below it (${under.slice(0, 3).join(', ')})`, 'CVMFS_THIN_MOUNTED_BELOW');
    }
    if (code !== 'ENOTEMPTY' && code !== 'EEXIST' && code !== 'ENOTDIR') throw e;
  }
  await fsp.rm(dir, { recursive: true, force: true, maxRetries: 2 });
}

/** Remove a file or symlink; a missing one is fine. */
export function unlinkIfExists(file: string): void {
  try {
    unlinkSync(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
}

export interface Usage {
  size: number;
  inodes: number;
}

/**
 * Disk usage of a tree as containerd's fs.DiskUsage counts it: every distinct
 * inode once (hard links), size = allocated blocks × 512. Does not cross into
 * other file systems. Local trees only: it walks with synchronous calls,
 * yielding to the event loop every 256 entries.
 */
export async function diskUsage(root: string): Promise<Usage> {
  const seen = new Set<number>();
  let size = 0;
  const rootStat = lstatSync(root);
  const dev = rootStat.dev;
  const stack: [string, fs.Stats][] = [[root, rootStat]];
  let budget = 256;
  while (stack.length) {
    const [p, st] = stack.pop()!;
    if (!seen.has(st.ino)) {
      seen.add(st.ino);
      size += st.blocks * 512;
    }
    if (!st.isDirectory() || st.dev !== dev) continue;
    let names: string[];
    try {
      names = readdirSync(p);
    } catch {
      continue; // removed meanwhile
    }
    for (const n of names) {
      const c = path.join(p, n);
      try {
        stack.push([c, lstatSync(c)]);
      } catch {
        /* removed meanwhile */
      }
      if (--budget === 0) {
        budget = 256;
        await new Promise<void>((r) => setImmediate(r));
      }
    }
  }
  return { size, inodes: seen.size };
}

/** Write a file durably: temp file, fsync, rename, fsync the directory. */
export async function writeFileAtomic(file: string, data: string | Uint8Array, mode = 0o644): Promise<void> {
  const dir = path.dirname(file);
  const tmp = path.join(dir, `.${path.basename(file)}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`);
  const fh = await fsp.open(tmp, 'w', mode);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await fsp.rename(tmp, file);
  await fsyncDir(dir);
}

export async function fsyncDir(dir: string): Promise<void> {
  const fh = await fsp.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Is `child` (resolved) inside `parent` (resolved)? */
export function isInside(parent: string, child: string): boolean {
  const rel = path.relative(parent, child);
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}

/** Does anything (even a dangling symlink) exist at `p`? */
export async function pathExists(p: string): Promise<boolean> {
  try {
    await fsp.lstat(p);
    return true;
  } catch {
    return false;
  }
}

/** Make `link` a symlink to `target` (recreated when missing or pointing elsewhere). Returns whether it changed. */
export async function ensureSymlink(link: string, target: string): Promise<boolean> {
  let cur: string | null = null;
  try {
    cur = await fsp.readlink(link);
  } catch {
    /* missing, or not a symlink */
  }
  if (cur === target) return false;
  await fsp.rm(link, { force: true });
  await fsp.symlink(target, link);
  return true;
}

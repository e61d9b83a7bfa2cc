/**
 * The rich test image (every kind of entry the converter must keep) and the
 * oracle: the image's file system built by applying the layers in order with
 * OCI semantics using GNU tar plus whiteout handling written here, compared
 * entry by entry with what overlayfs shows when the converted layers are
 * stacked. Needs root (devices, ownership, trusted xattrs, mounts).
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { lgetxattr, llistxattr, lsetxattr, mknod, S_IFBLK, S_IFCHR, S_IFIFO } from '../../src/core/host/sys.js';
import { type BuiltLayer, buildLayer, type Compression } from './images.js';

/** security.capability = cap_setgid,cap_setuid+ep (v2); the 0xc0 byte is not valid UTF-8. */
export const CAP_SETUID_SETGID = Buffer.from('01000002' + 'c0000000' + '00000000' + '00000000' + '00000000', 'hex');
export const LONG_DIR = `d${'irectory-with-a-long-name-'.repeat(5)}`.slice(0, 120);
export const LONG_FILE = `f${'ile-name-that-is-longer-than-one-hundred-bytes-'.repeat(5)}`.slice(0, 200);
export const UTF8_NAME = 'héllo wörld ✓.txt';

function w(root: string, rel: string, content: string | Buffer, mode = 0o644, uid = 0, gid = 0): void {
  const p = path.join(root, rel);
  fs.mkdirSync(path.dirname(p), { recursive: true });
  fs.writeFileSync(p, content);
  fs.chownSync(p, uid, gid);
  fs.chmodSync(p, mode);
}

function d(root: string, rel: string, mode = 0o755, uid = 0, gid = 0): void {
  const p = path.join(root, rel);
  fs.mkdirSync(p, { recursive: true });
  fs.chownSync(p, uid, gid);
  fs.chmodSync(p, mode);
}

/** Layer 1: the base, with every entry type and attribute. */
export function stageBase(root: string): void {
  d(root, 'bin');
  fs.copyFileSync('/bin/busybox', path.join(root, 'bin/busybox'));
  fs.chmodSync(path.join(root, 'bin/busybox'), 0o755);
  fs.symlinkSync('busybox', path.join(root, 'bin/sh'));
  fs.symlinkSync('/bin/busybox', path.join(root, 'bin/ls'));
  d(root, 'etc');
  w(root, 'etc/passwd', 'root:x:0:0:root:/root:/bin/sh\n');
  w(root, 'etc/group', 'root:x:0:\n');
  w(root, 'etc/toremove', 'to be whited out\n');
  w(root, 'etc/keep', 'kept\n');
  d(root, 'tmp', 0o1777);
  d(root, 'dev');
  mknod(path.join(root, 'dev/null'), S_IFCHR | 0o666, 1, 3);
  mknod(path.join(root, 'dev/sda'), S_IFBLK | 0o660, 8, 0);
  d(root, 'run');
  mknod(path.join(root, 'run/fifo'), S_IFIFO | 0o644);
  w(root, 'usr/bin/su', 'setuid\n', 0o4755);
  w(root, 'usr/bin/sgid', 'setgid\n', 0o2755);
  w(root, 'usr/bin/ping', 'capable\n', 0o755);
  lsetxattr(path.join(root, 'usr/bin/ping'), 'security.capability', CAP_SETUID_SETGID);
  w(root, 'usr/share/a', 'hardlinked\n');
  fs.linkSync(path.join(root, 'usr/share/a'), path.join(root, 'usr/share/b'));
  w(root, 'data/xattr', 'has a user xattr\n');
  lsetxattr(path.join(root, 'data/xattr'), 'user.comment', Buffer.from('héllo', 'utf8'));
  w(root, 'data/owned', 'owned by 1234:5678\n', 0o640, 1234, 5678);
  w(root, path.join('data', LONG_DIR, LONG_FILE), 'long names\n');
  w(root, path.join('data', UTF8_NAME), 'utf-8 name v1\n');
  fs.symlinkSync('/nonexistent/target', path.join(root, 'data/dangling'));
  w(root, 'opt/tree/x', 'x\n');
  w(root, 'opt/tree/y/z', 'z\n');
  w(root, 'var/cache/dir/f1', '1\n');
  w(root, 'var/cache/dir/f2', '2\n');
  w(root, 'replace/file_to_dir', 'a file that becomes a dir\n');
  w(root, 'replace/dir_to_file/child', 'a dir that becomes a file\n');
  d(root, 'setgid_dir', 0o2775, 0, 100);
  w(root, 'big/random.bin', createHash('sha512').update('seed').digest().toString('hex').repeat(2000));
}

/** Layer 2: whiteouts, an opaque directory, type changes, new hardlinks. */
export function stageSecond(root: string): void {
  d(root, 'etc');
  w(root, 'etc/.wh.toremove', '');
  w(root, 'etc/passwd', 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n');
  d(root, 'var');
  d(root, 'var/cache');
  w(root, 'var/cache/.wh.dir', '');
  d(root, 'opt');
  d(root, 'opt/tree');
  w(root, 'opt/tree/.wh..wh..opq', '');
  w(root, 'opt/tree/new', 'only this remains\n');
  d(root, 'replace');
  w(root, 'replace/file_to_dir/c', 'now a dir\n');
  w(root, 'replace/dir_to_file', 'now a file\n');
  d(root, 'usr');
  d(root, 'usr/share');
  w(root, 'usr/share/c', 'second pair\n');
  fs.linkSync(path.join(root, 'usr/share/c'), path.join(root, 'usr/share/d'));
  d(root, 'bin');
  w(root, 'bin/ls', 'no longer a symlink\n', 0o755);
  d(root, 'data');
  w(root, path.join('data', UTF8_NAME), 'utf-8 name v2\n');
}

/** Layer 3: removes one name of a hardlink pair, changes modes and owners, adds a directory. */
export function stageThird(root: string): void {
  d(root, 'usr');
  d(root, 'usr/share');
  w(root, 'usr/share/.wh.a', '');
  d(root, 'data');
  w(root, 'data/owned', 'new owner\n', 0o600, 4321, 8765);
  d(root, 'etc', 0o750);
  w(root, 'new/x', 'x3\n');
  fs.linkSync(path.join(root, 'new/x'), path.join(root, 'new/y'));
  w(root, 'new/.hidden', 'dotfile\n');
}

export interface RichImage {
  layers: BuiltLayer[];
}

export function buildRichLayers(work: string, compressions: [Compression, Compression, Compression] = ['gzip', 'zstd', 'gzip']): RichImage {
  const stages = [stageBase, stageSecond, stageThird];
  const layers = stages.map((stage, i) => {
    const dir = path.join(work, `stage${i + 1}`);
    fs.mkdirSync(dir, { recursive: true });
    fs.chmodSync(dir, 0o755);
    stage(dir);
    return buildLayer(dir, compressions[i]!, path.join(work, 'blobs'), `layer${i + 1}`);
  });
  return { layers };
}

// ---------------------------------------------------------------- oracle

function lstatOrNull(p: string): fs.Stats | null {
  try {
    return fs.lstatSync(p);
  } catch {
    return null;
  }
}

function copyDirAttrs(src: string, dst: string): void {
  const st = fs.lstatSync(src);
  fs.lchownSync(dst, st.uid, st.gid);
  fs.chmodSync(dst, st.mode & 0o7777);
  for (const n of llistxattr(src)) {
    const v = lgetxattr(src, n);
    if (v) lsetxattr(dst, n, v);
  }
}

function merge(stage: string, target: string, rel: string): void {
  const sdir = path.join(stage, rel);
  const tdir = path.join(target, rel);
  const names = fs.readdirSync(sdir);
  if (names.includes('.wh..wh..opq')) {
    for (const n of fs.readdirSync(tdir)) fs.rmSync(path.join(tdir, n), { recursive: true, force: true });
  }
  for (const n of names) {
    if (!n.startsWith('.wh.')) continue;
    if (n !== '.wh..wh..opq') fs.rmSync(path.join(tdir, n.slice(4)), { recursive: true, force: true });
  }
  for (const n of names) {
    if (n.startsWith('.wh.')) continue;
    const s = path.join(sdir, n);
    const t = path.join(tdir, n);
    const st = fs.lstatSync(s);
    const tt = lstatOrNull(t);
    if (st.isDirectory()) {
      if (tt && !tt.isDirectory()) fs.rmSync(t, { recursive: true, force: true });
      if (!tt || !tt.isDirectory()) fs.mkdirSync(t);
      merge(stage, target, path.join(rel, n));
      copyDirAttrs(s, t);
    } else {
      if (tt) fs.rmSync(t, { recursive: true, force: true });
      fs.renameSync(s, t);
    }
  }
}

/** Apply uncompressed layer tars in order onto `target` with OCI semantics (GNU tar + whiteouts handled here). */
export function applyLayersOracle(tars: string[], target: string, work: string): void {
  fs.mkdirSync(target, { recursive: true });
  tars.forEach((tar, i) => {
    const stage = path.join(work, `oracle-stage-${i}`);
    fs.rmSync(stage, { recursive: true, force: true });
    fs.mkdirSync(stage, { recursive: true });
    execFileSync('tar', ['--xattrs', '--xattrs-include=*', '--numeric-owner', '-p', '-C', stage, '-xf', tar]);
    merge(stage, target, '');
    fs.rmSync(stage, { recursive: true, force: true });
  });
}

// ---------------------------------------------------------------- comparing trees

export interface Entry {
  type: string;
  mode: number;
  uid: number;
  gid: number;
  size?: number;
  sha256?: string;
  target?: string;
  rdev?: number;
  /** Whole seconds, for everything but directories (whose mtimes change as entries are added). */
  mtime?: number;
  xattrs: string[];
}

export interface Snapshot {
  entries: Map<string, Entry>;
  /** Hardlink groups: sorted path lists of files sharing an inode. */
  links: string[][];
}

function typeOf(st: fs.Stats): string {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isCharacterDevice()) return st.rdev === 0 ? 'whiteout' : 'char';
  if (st.isBlockDevice()) return 'block';
  if (st.isFIFO()) return 'fifo';
  return 'other';
}

/** Everything about a tree except times; `exclude` drops paths (relative, and their subtrees). */
export function snapshot(root: string, exclude: (rel: string) => boolean = () => false, opts: { mtimes?: boolean } = {}): Snapshot {
  const entries = new Map<string, Entry>();
  const inodes = new Map<string, string[]>();
  const visit = (rel: string) => {
    const dir = path.join(root, rel);
    for (const n of fs.readdirSync(dir).sort()) {
      const r = rel === '' ? n : `${rel}/${n}`;
      if (exclude(r)) continue;
      const p = path.join(root, r);
      const st = fs.lstatSync(p);
      const e: Entry = { type: typeOf(st), mode: st.mode & 0o7777, uid: st.uid, gid: st.gid, xattrs: [] };
      for (const x of llistxattr(p).sort()) {
        if (x.startsWith('trusted.overlay.') || x === 'security.selinux') continue;
        e.xattrs.push(`${x}=${lgetxattr(p, x)?.toString('hex')}`);
      }
      if (e.type === 'file') {
        e.size = st.size;
        e.sha256 = createHash('sha256').update(fs.readFileSync(p)).digest('hex');
        if (st.nlink > 1) {
          const k = `${st.dev}:${st.ino}`;
          inodes.set(k, [...(inodes.get(k) ?? []), r]);
        }
      }
      if (e.type === 'symlink') e.target = fs.readlinkSync(p);
      if (e.type === 'char' || e.type === 'block') e.rdev = st.rdev;
      if (e.type === 'symlink') e.mode = 0;
      if (e.type !== 'dir' && opts.mtimes !== false) e.mtime = Math.floor(st.mtimeMs / 1000);
      entries.set(r, e);
      if (e.type === 'dir') visit(r);
    }
  };
  visit('');
  const links = [...inodes.values()].filter((g) => g.length > 1).map((g) => g.sort());
  links.sort((a, b) => a[0]!.localeCompare(b[0]!));
  return { entries, links };
}

/** Human-readable differences (empty when equal). */
export function diffSnapshots(a: Snapshot, b: Snapshot, labels = ['expected', 'actual']): string[] {
  const out: string[] = [];
  for (const [p, e] of a.entries) {
    const f = b.entries.get(p);
    if (!f) out.push(`${p}: only in ${labels[0]}`);
    else if (JSON.stringify(e) !== JSON.stringify(f)) out.push(`${p}: ${labels[0]} ${JSON.stringify(e)} != ${labels[1]} ${JSON.stringify(f)}`);
  }
  for (const p of b.entries.keys()) if (!a.entries.has(p)) out.push(`${p}: only in ${labels[1]}`);
  if (JSON.stringify(a.links) !== JSON.stringify(b.links))
    out.push(`hardlinks: ${labels[0]} ${JSON.stringify(a.links)} != ${labels[1]} ${JSON.stringify(b.links)}`);
  return out;
}

/** Stack directories (top first) read-only with overlayfs at `mnt`; returns the unmount function. */
export function mountOverlay(lowersTopFirst: string[], mnt: string): () => void {
  fs.mkdirSync(mnt, { recursive: true });
  const lower = lowersTopFirst.map((l) => l.replace(/\\/g, '\\\\').replace(/:/g, '\\:').replace(/,/g, '\\,')).join(':');
  if (lowersTopFirst.length === 1) {
    execFileSync('mount', ['--bind', '-o', 'ro', lowersTopFirst[0]!, mnt]);
  } else {
    execFileSync('mount', ['-t', 'overlay', 'overlay', '-o', `ro,lowerdir=${lower}`, mnt]);
  }
  return () => execFileSync('umount', [mnt]);
}

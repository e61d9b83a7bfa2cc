/**
 * Path resolution below the extraction destination, for LayerWriter: the
 * cache of resolved directories, parents resolved *inside dest* (symlinks met
 * on the way followed with dest as the root, `..` never above it, missing
 * plain parents created exactly 0755, owned by the mapped root with an id map), removal of whatever
 * an entry replaces (dropping cached resolutions and deferred directory
 * metadata it invalidates), and the apply-mode bookkeeping of what this
 * layer wrote (opaque directories). Also the writer's options.
 */
import fs from 'node:fs';
import { lchmod } from '../host/sys.js';
import { unsafe } from './errors.js';
import type { TarTime } from './headers.js';
import { toHost, type IdMaps } from '../util/idmap.js';
import { fsPath, joinRel, parentOf } from './paths.js';

export type WhiteoutMode = 'overlay' | 'apply' | 'keep' | 'record';

export interface WriterOptions {
  /** absolute, symlink-free path of an existing directory */
  dest: string;
  whiteouts: WhiteoutMode;
  idMap?: IdMaps | undefined;
  preserveOwnership: boolean;
  /** the process umask (workers cannot read it) */
  umask: number;
  maxNameBytes: number;
  maxEntries: number;
}

export interface DirInfo {
  /** real (symlink-free) path relative to dest, '' = dest */
  real: string;
  /** has S_ISGID now (new children inherit its gid) */
  sgid: boolean;
  uid: number;
  gid: number;
}

interface Deferred {
  mode: number;
  atime: TarTime;
  mtime: TarTime;
}

const S_ISGID = 0o2000;
const MAX_SYMLINK_HOPS = 40;

export class DestTree {
  /** dest as a byte string */
  protected readonly destB: string;
  protected readonly root: DirInfo;
  /** logical (as named in the tar, cleaned) dir path → resolved info */
  protected readonly dirs = new Map<string, DirInfo>();
  protected readonly deferred = new Map<string, Deferred>();
  /** apply mode: real paths this layer wrote (for opaque dirs) */
  protected readonly layer: Set<string> | null;
  protected readonly euid: number;
  protected readonly egid: number;

  constructor(protected readonly o: WriterOptions) {
    this.destB = Buffer.from(o.dest, 'utf8').toString('latin1');
    const st = fs.lstatSync(o.dest);
    if (!st.isDirectory()) throw new Error(`${o.dest} is not a directory`);
    this.root = { real: '', sgid: (st.mode & S_ISGID) !== 0, uid: st.uid, gid: st.gid };
    this.dirs.set('', this.root);
    this.layer = o.whiteouts === 'apply' ? new Set() : null;
    this.euid = process.geteuid?.() ?? 0;
    this.egid = process.getegid?.() ?? 0;
  }

  // ------------------------------------------------------------ resolution

  protected abs(rel: string): string | Buffer {
    return fsPath(rel === '' ? this.destB : this.destB + '/' + rel);
  }

  /**
   * Resolve the directory named by comps[0, n) inside dest. Creates missing
   * plain directories when `create`; returns null when one is missing and
   * !create. Follows symlinks in scope (dest is the root).
   */
  protected resolveDir(comps: string[], n: number, create: boolean, bname: string): DirInfo | null {
    if (n === 0) return this.root;
    const key = n === comps.length ? comps.join('/') : comps.slice(0, n).join('/');
    const hit = this.dirs.get(key);
    if (hit) return hit;
    const parent = this.resolveDir(comps, n - 1, create, bname);
    if (!parent) return null;
    const info = this.step(parent, comps[n - 1]!, create, bname, { hops: 0 });
    if (info) this.dirs.set(key, info);
    return info;
  }

  /** Resolve child `name` of the real directory `parent`. */
  protected step(parent: DirInfo, name: string, create: boolean, bname: string, ctx: { hops: number }): DirInfo | null {
    const rel = joinRel(parent.real, name);
    const hit = this.dirs.get(rel);
    if (hit) return hit;
    const p = this.abs(rel);
    const st = fs.lstatSync(p, { throwIfNoEntry: false });
    if (!st) {
      if (!create) return null;
      fs.mkdirSync(p, 0o755);
      // exactly 0755 like containerd's mkparent (mkdir + chmod): whatever the umask, no inherited setgid
      if ((this.o.umask & 0o755) !== 0 || parent.sgid) lchmod(p, 0o755);
      const info: DirInfo = { real: rel, sgid: false, uid: this.euid, gid: parent.sgid ? parent.gid : this.egid };
      const m = this.o.idMap;
      if (this.o.preserveOwnership && m) {
        // with an id map, implicit parents belong to the mapped root, like Docker's MkdirAllAndChown;
        // without one they keep the creator and the inherited group, like containerd's mkparent
        const uid = toHost(m.uids, 0);
        const gid = toHost(m.gids, 0);
        if (uid !== null && gid !== null && (uid !== this.euid || gid !== info.gid)) {
          fs.lchownSync(p, uid, gid);
          info.uid = uid;
          info.gid = gid;
        }
      }
      if (this.layer) this.mark(rel);
      this.dirs.set(rel, info);
      return info;
    }
    if (st.isDirectory()) {
      const info: DirInfo = { real: rel, sgid: (st.mode & S_ISGID) !== 0, uid: st.uid, gid: st.gid };
      this.dirs.set(rel, info);
      return info;
    }
    if (st.isSymbolicLink()) {
      if (++ctx.hops > MAX_SYMLINK_HOPS) throw unsafe(bname, 'symlink-loop', `too many levels of symbolic links below ${JSON.stringify(rel)}`);
      const target = (fs.readlinkSync(p, { encoding: 'buffer' }) as Buffer).toString('latin1');
      return this.walk(target.startsWith('/') ? this.root : parent, target, bname, ctx, rel);
    }
    throw unsafe(bname, 'parent-not-directory', `parent ${JSON.stringify(rel)} exists and is not a directory`);
  }

  /** Follow a symlink target path from `start`, never above dest. */
  protected walk(start: DirInfo, target: string, bname: string, ctx: { hops: number }, via: string): DirInfo {
    let cur = start;
    for (const c of target.split('/')) {
      if (c === '' || c === '.') continue;
      if (c === '..') {
        if (cur.real !== '') cur = this.realDir(parentOf(cur.real));
        continue;
      }
      const next = this.step(cur, c, false, bname, ctx);
      if (!next)
        throw unsafe(
          bname,
          'symlink-parent',
          `parent symlink ${JSON.stringify(via)} -> ${JSON.stringify(target)} does not resolve to a directory inside the destination`,
        );
      cur = next;
    }
    return cur;
  }

  protected realDir(rel: string): DirInfo {
    if (rel === '') return this.root;
    const hit = this.dirs.get(rel);
    if (hit && hit.real === rel) return hit;
    const st = fs.lstatSync(this.abs(rel));
    const info: DirInfo = { real: rel, sgid: (st.mode & S_ISGID) !== 0, uid: st.uid, gid: st.gid };
    this.dirs.set(rel, info);
    return info;
  }

  // ------------------------------------------------------------ removal

  /** Remove whatever is at rel (not following it). */
  protected remove(rel: string): void {
    const p = this.abs(rel);
    const st = fs.lstatSync(p, { throwIfNoEntry: false });
    if (!st) return;
    if (st.isDirectory()) {
      fs.rmSync(p, { recursive: true, force: true });
      this.invalidate();
      const prefix = rel + '/';
      for (const k of this.deferred.keys()) if (k === rel || k.startsWith(prefix)) this.deferred.delete(k);
    } else {
      fs.unlinkSync(p);
      if (st.isSymbolicLink()) this.invalidate();
    }
  }

  /** Something a cached resolution may go through changed: forget them all. */
  protected invalidate(): void {
    this.dirs.clear();
    this.dirs.set('', this.root);
  }

  /** apply mode: remember rel and its ancestors as written by this layer. */
  protected mark(rel: string): void {
    const l = this.layer;
    if (!l) return;
    while (rel !== '' && !l.has(rel)) {
      l.add(rel);
      rel = parentOf(rel);
    }
  }

  /** apply mode: delete everything below dir that this layer did not write. */
  protected emptyOpaque(rel: string): void {
    const names = fs.readdirSync(this.abs(rel), { encoding: 'buffer' }) as Buffer[];
    for (const n of names) {
      const child = joinRel(rel, n.toString('latin1'));
      if (!this.layer!.has(child)) {
        this.remove(child);
      } else {
        const st = fs.lstatSync(this.abs(child));
        if (st.isDirectory()) this.emptyOpaque(child);
      }
    }
  }
}

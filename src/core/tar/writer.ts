/**
 * The synchronous file-system side of extraction: a TarParserHandler that
 * materialises entries below `dest`. Runs inside the extract worker (or
 * inline); every call is a sync fs/libc call.
 *
 * Safety model (see README-style notes in extract.ts):
 * - names are cleaned like Docker (`cleanName`); escaping names are refused;
 * - parent directories are resolved *inside dest*: symlinks met on the way
 *   are followed with dest as the root (chroot semantics, like Docker's
 *   chrootarchive and containerd's fs.RootPath): `a -> /etc` then `a/passwd`
 *   lands in `dest/etc/passwd`; `..` never climbs above dest; a resolution
 *   that ends at nothing or a non-directory, or loops, is refused. Missing
 *   plain parent directories are created (0755, mapped root);
 * - the final component is never followed: whatever is there is replaced
 *   (files are created O_EXCL; an existing dir is merged only by a dir);
 * - metadata is set through fds or l* calls (lchown, fchmodat NOFOLLOW,
 *   utimensat NOFOLLOW, lsetxattr); directory modes and times are applied
 *   at the end, and dropped for any directory replaced meanwhile;
 * - hardlink targets must already exist inside dest and not be directories.
 */
import fs from 'node:fs';
import { ThinError } from '../errors.js';
import { lchmod, lsetxattr, lutimesNs, futimesNs, mknod, mkWhiteout, S_IFBLK, S_IFCHR, S_IFIFO, lgetxattr } from '../sys.js';
import { classifyWhiteout, AUFS_META_PREFIX, OVERLAY_OPAQUE_XATTR, WHITEOUT_PREFIX } from '../whiteout.js';
import { ioError, unsafe } from './errors.js';
import type { TarHeader, TarTime } from './headers.js';
import { toHost, type IdMaps } from './idmap.js';
import type { TarParserHandler } from './parser.js';
import { cleanName, fsPath, joinRel, parentOf } from './paths.js';

export type WhiteoutMode = 'overlay' | 'apply' | 'keep';

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

export interface WriterStats {
  /** tar entries seen (PAX/GNU meta headers not counted) */
  entries: number;
  /** regular files written (hardlinks and whiteouts not included) */
  files: number;
  dirs: number;
  symlinks: number;
  hardlinks: number;
  /** char/block devices and fifos (whiteout devices not included) */
  devices: number;
  /** `.wh.<name>` entries */
  whiteouts: number;
  /** `.wh..wh..opq` entries */
  opaques: number;
  /** AUFS metadata entries (`.wh..wh.plnk` …) skipped in overlay/apply mode */
  skipped: number;
  /** xattrs not applied: `trusted.overlay.*` from the tar, `user.*` on symlinks/devices */
  droppedXattrs: number;
}

interface DirInfo {
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

const O_FILE = fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW;
const S_ISGID = 0o2000;
const MAX_SYMLINK_HOPS = 40;
const NAME_MAX = 255;

function errCode(e: unknown): string | undefined {
  return (e as { code?: string } | null)?.code;
}

export class LayerWriter implements TarParserHandler {
  readonly stats: WriterStats = {
    entries: 0,
    files: 0,
    dirs: 0,
    symlinks: 0,
    hardlinks: 0,
    devices: 0,
    whiteouts: 0,
    opaques: 0,
    skipped: 0,
    droppedXattrs: 0,
  };
  /** dest as a byte string */
  private readonly destB: string;
  private readonly root: DirInfo;
  /** logical (as named in the tar, cleaned) dir path → resolved info */
  private readonly dirs = new Map<string, DirInfo>();
  private readonly deferred = new Map<string, Deferred>();
  /** apply mode: real paths this layer wrote (for opaque dirs) */
  private readonly layer: Set<string> | null;
  private readonly euid: number;
  private readonly egid: number;
  /** umask/ACL model no longer trustworthy: always chmod */
  private forceChmod = false;
  /** the open regular file of the current entry */
  private fd = -1;
  private fdRel = '';
  private cur: TarHeader | null = null;
  private curName = '';

  constructor(private readonly o: WriterOptions) {
    this.destB = Buffer.from(o.dest, 'utf8').toString('latin1');
    const st = fs.lstatSync(o.dest);
    if (!st.isDirectory()) throw new Error(`${o.dest} is not a directory`);
    this.root = { real: '', sgid: (st.mode & S_ISGID) !== 0, uid: st.uid, gid: st.gid };
    this.dirs.set('', this.root);
    this.layer = o.whiteouts === 'apply' ? new Set() : null;
    this.euid = process.geteuid?.() ?? 0;
    this.egid = process.getegid?.() ?? 0;
    // default ACLs override the umask for new files: then never trust the creation mode
    try {
      if (lgetxattr(o.dest, 'system.posix_acl_default')) this.forceChmod = true;
    } catch {
      this.forceChmod = true;
    }
  }

  // ------------------------------------------------------------ handler

  entry(h: TarHeader): void {
    this.cur = null;
    this.curName = h.name;
    try {
      this.handleEntry(h);
    } catch (e) {
      if (this.fd >= 0) this.closeFd();
      throw ThinError.is(e) ? e : ioError(h.name, e);
    }
  }

  data(buf: Buffer, start: number, end: number): void {
    if (this.fd < 0) return;
    try {
      let off = start;
      while (off < end) off += fs.writeSync(this.fd, buf, off, end - off);
    } catch (e) {
      this.closeFd();
      throw ioError(this.curName, e);
    }
  }

  entryEnd(): void {
    if (this.fd < 0) return;
    const h = this.cur!;
    try {
      this.finishFile(h);
    } catch (e) {
      throw ThinError.is(e) ? e : ioError(h.name, e);
    } finally {
      this.closeFd();
    }
  }

  /** Apply deferred directory modes and times. Call once, after the parser ended. */
  finish(): void {
    for (const [rel, d] of this.deferred) {
      const p = this.abs(rel);
      try {
        lchmod(p, d.mode);
        lutimesNs(p, d.atime.sec, d.atime.nsec, d.mtime.sec, d.mtime.nsec);
      } catch (e) {
        throw ioError(rel, e);
      }
    }
    this.deferred.clear();
  }

  /** Release the open file, if any (after an error). */
  abort(): void {
    if (this.fd >= 0) this.closeFd();
  }

  // ------------------------------------------------------------ entries

  private handleEntry(h: TarHeader): void {
    const s = this.stats;
    s.entries++;
    if (s.entries > this.o.maxEntries) throw unsafe(h.name, 'too-many-entries', `more than ${this.o.maxEntries} entries`);
    if (h.name.includes('\0')) throw unsafe(h.name, 'nul-in-name', 'NUL byte in name');
    if (h.name.length > this.o.maxNameBytes) throw unsafe(h.name.slice(0, 256) + '…', 'name-too-long', `name of ${h.name.length} bytes exceeds ${this.o.maxNameBytes}`);
    const comps = cleanName(h.name);
    if (comps === null) throw unsafe(h.name, 'path-escape', 'name escapes the destination');
    for (const c of comps) if (c.length > NAME_MAX) throw unsafe(h.name, 'name-too-long', `path component of ${c.length} bytes exceeds ${NAME_MAX}`);
    if (h.type === 'link' || h.type === 'symlink') {
      if (h.linkname.includes('\0')) throw unsafe(h.name, 'nul-in-name', 'NUL byte in link name');
      if (h.linkname.length > this.o.maxNameBytes) throw unsafe(h.name, 'name-too-long', `link name of ${h.linkname.length} bytes exceeds ${this.o.maxNameBytes}`);
      if (h.linkname.length === 0) throw unsafe(h.name, 'bad-header', 'empty link name');
    }

    if (comps.length === 0) {
      if (h.type !== 'dir') throw unsafe(h.name, 'replace-root', `a ${h.type} entry cannot replace the destination directory itself`);
      this.dirEntry(h, this.root, '');
      return;
    }

    const base = comps[comps.length - 1]!;
    const mode = this.o.whiteouts;
    if (mode !== 'keep') {
      for (let i = 0; i < comps.length - 1; i++) {
        const c = comps[i]!;
        if (c.startsWith(WHITEOUT_PREFIX)) {
          if (c.startsWith(AUFS_META_PREFIX)) {
            s.skipped++;
            return;
          }
          throw unsafe(h.name, 'bad-whiteout', `whiteout ${JSON.stringify(c)} used as a directory`);
        }
      }
    }
    if (base.startsWith(WHITEOUT_PREFIX)) {
      const w = classifyWhiteout(base);
      if (w === null) throw unsafe(h.name, 'bad-whiteout', `invalid whiteout name ${JSON.stringify(base)}`);
      if (w.kind === 'opaque') {
        s.opaques++;
        if (mode === 'overlay') {
          const d = this.resolveDir(comps, comps.length - 1, true, h.name)!;
          lsetxattr(this.abs(d.real), OVERLAY_OPAQUE_XATTR, 'y');
          return;
        }
        if (mode === 'apply') {
          const d = this.resolveDir(comps, comps.length - 1, true, h.name)!;
          this.mark(d.real);
          this.emptyOpaque(d.real);
          return;
        }
      } else if (w.kind === 'whiteout') {
        s.whiteouts++;
        if (mode === 'overlay') {
          const parent = this.resolveDir(comps, comps.length - 1, true, h.name)!;
          const rel = joinRel(parent.real, w.target);
          this.remove(rel);
          const p = this.abs(rel);
          mkWhiteout(p);
          // owner and times of the whiteout entry (overlayfs ignores them; a Diff packs them back)
          const chowned = this.chownNeeded(h, parent);
          if (chowned) fs.lchownSync(p, chowned[0], chowned[1]);
          const at = h.atime ?? h.mtime;
          lutimesNs(p, at.sec, at.nsec, h.mtime.sec, h.mtime.nsec);
          return;
        }
        if (mode === 'apply') {
          const parent = this.resolveDir(comps, comps.length - 1, true, h.name)!;
          this.mark(parent.real);
          this.remove(joinRel(parent.real, w.target));
          return;
        }
      } else if (mode !== 'keep') {
        s.skipped++;
        return;
      }
      // keep: an ordinary entry
    }

    const parent = this.resolveDir(comps, comps.length - 1, true, h.name)!;
    const rel = joinRel(parent.real, base);
    if (this.layer) this.mark(rel);
    switch (h.type) {
      case 'file':
        this.openFile(h, parent, rel, !base.startsWith(WHITEOUT_PREFIX));
        break;
      case 'dir': {
        this.dirEntry(h, parent, rel);
        // later entries below it resolve through the cache
        const key = comps.join('/');
        const info = this.dirs.get(rel);
        if (info) this.dirs.set(key, info);
        break;
      }
      case 'symlink':
        this.symlinkEntry(h, parent, rel);
        break;
      case 'link':
        this.linkEntry(h, rel);
        break;
      case 'char':
      case 'block':
      case 'fifo':
        this.nodeEntry(h, parent, rel);
        break;
    }
  }

  private openFile(h: TarHeader, parent: DirInfo, rel: string, count: boolean): void {
    const p = this.abs(rel);
    const perm = h.mode & 0o777;
    let fd: number;
    try {
      fd = fs.openSync(p, O_FILE, perm);
    } catch (e) {
      if (errCode(e) !== 'EEXIST') throw e;
      this.remove(rel);
      fd = fs.openSync(p, O_FILE, perm);
    }
    this.fd = fd;
    this.fdRel = rel;
    this.cur = h;
    this.parentOfCur = parent;
    if (count) this.stats.files++;
  }

  private parentOfCur: DirInfo = { real: '', sgid: false, uid: 0, gid: 0 };

  private finishFile(h: TarHeader): void {
    const fd = this.fd;
    const chowned = this.chownNeeded(h, this.parentOfCur);
    if (chowned) fs.fchownSync(fd, chowned[0], chowned[1]);
    if (this.chmodNeeded(h.mode, chowned !== null)) fs.fchmodSync(fd, h.mode);
    if (h.xattrs) this.setXattrs(this.abs(this.fdRel), h, true);
    const at = h.atime ?? h.mtime;
    futimesNs(fd, at.sec, at.nsec, h.mtime.sec, h.mtime.nsec);
  }

  private closeFd(): void {
    const fd = this.fd;
    this.fd = -1;
    fs.closeSync(fd);
  }

  private dirEntry(h: TarHeader, parent: DirInfo, rel: string): void {
    let info: DirInfo;
    if (rel === '') {
      info = this.root;
    } else {
      const p = this.abs(rel);
      let created = true;
      try {
        fs.mkdirSync(p, (h.mode & 0o777) | 0o700);
      } catch (e) {
        if (errCode(e) !== 'EEXIST') throw e;
        const st = fs.lstatSync(p);
        if (st.isDirectory()) {
          created = false;
        } else {
          this.remove(rel);
          fs.mkdirSync(p, (h.mode & 0o777) | 0o700);
        }
      }
      if (created) {
        info = { real: rel, sgid: parent.sgid, uid: this.euid, gid: parent.sgid ? parent.gid : this.egid };
        this.dirs.set(rel, info);
      } else {
        info = this.realDir(rel);
      }
      this.stats.dirs++;
    }
    const p = this.abs(rel);
    const own = this.ownerOf(h);
    if (own && (own[0] !== info.uid || own[1] !== info.gid)) {
      fs.lchownSync(p, own[0], own[1]);
      info.uid = own[0];
      info.gid = own[1];
    }
    if (h.xattrs) this.setXattrs(p, h, true);
    this.deferred.set(rel, { mode: h.mode, atime: h.atime ?? h.mtime, mtime: h.mtime });
  }

  private symlinkEntry(h: TarHeader, parent: DirInfo, rel: string): void {
    const p = this.abs(rel);
    const target = fsPath(h.linkname);
    try {
      fs.symlinkSync(target, p);
    } catch (e) {
      if (errCode(e) !== 'EEXIST') throw e;
      this.remove(rel);
      fs.symlinkSync(target, p);
    }
    this.stats.symlinks++;
    const chowned = this.chownNeeded(h, parent);
    if (chowned) fs.lchownSync(p, chowned[0], chowned[1]);
    if (h.xattrs) this.setXattrs(p, h, false);
    const at = h.atime ?? h.mtime;
    lutimesNs(p, at.sec, at.nsec, h.mtime.sec, h.mtime.nsec);
  }

  private linkEntry(h: TarHeader, rel: string): void {
    const t = cleanName(h.linkname);
    if (t === null) throw unsafe(h.name, 'hardlink-escape', `hardlink target ${JSON.stringify(h.linkname)} escapes the destination`);
    if (t.length === 0) throw unsafe(h.name, 'hardlink-to-directory', 'hardlink to the destination directory');
    for (const c of t) if (c.length > NAME_MAX) throw unsafe(h.name, 'name-too-long', `hardlink target component of ${c.length} bytes exceeds ${NAME_MAX}`);
    const tparent = this.resolveDir(t, t.length - 1, false, h.name);
    if (!tparent) throw unsafe(h.name, 'hardlink-target-missing', `hardlink target ${JSON.stringify(h.linkname)} does not exist (yet)`);
    const trel = joinRel(tparent.real, t[t.length - 1]!);
    const st = fs.lstatSync(this.abs(trel), { throwIfNoEntry: false });
    if (!st) throw unsafe(h.name, 'hardlink-target-missing', `hardlink target ${JSON.stringify(h.linkname)} does not exist (yet)`);
    if (st.isDirectory()) throw unsafe(h.name, 'hardlink-to-directory', `hardlink target ${JSON.stringify(h.linkname)} is a directory`);
    this.stats.hardlinks++;
    if (trel === rel) return; // a link to itself
    const tp = this.abs(trel);
    const p = this.abs(rel);
    try {
      fs.linkSync(tp, p);
    } catch (e) {
      if (errCode(e) !== 'EEXIST') throw e;
      this.remove(rel);
      fs.linkSync(tp, p);
    }
  }

  private nodeEntry(h: TarHeader, parent: DirInfo, rel: string): void {
    const p = this.abs(rel);
    const fmt = h.type === 'char' ? S_IFCHR : h.type === 'block' ? S_IFBLK : S_IFIFO;
    const make = (): void => mknod(p, fmt | (h.mode & 0o777), h.devmajor, h.devminor);
    try {
      make();
    } catch (e) {
      if (errCode(e) !== 'EEXIST') throw e;
      this.remove(rel);
      make();
    }
    this.stats.devices++;
    const chowned = this.chownNeeded(h, parent);
    if (chowned) fs.lchownSync(p, chowned[0], chowned[1]);
    if (this.chmodNeeded(h.mode, chowned !== null)) lchmod(p, h.mode);
    if (h.xattrs) this.setXattrs(p, h, false);
    const at = h.atime ?? h.mtime;
    lutimesNs(p, at.sec, at.nsec, h.mtime.sec, h.mtime.nsec);
  }

  // ------------------------------------------------------------ metadata

  /** Host owner of an entry, or null when ownership is not preserved. */
  private ownerOf(h: TarHeader): [number, number] | null {
    if (!this.o.preserveOwnership) return null;
    const m = this.o.idMap;
    if (!m) return [h.uid, h.gid];
    const uid = toHost(m.uids, h.uid);
    const gid = toHost(m.gids, h.gid);
    if (uid === null) throw unsafe(h.name, 'unmapped-id', `uid ${h.uid} is outside the uid map`);
    if (gid === null) throw unsafe(h.name, 'unmapped-id', `gid ${h.gid} is outside the gid map`);
    return [uid, gid];
  }

  /** The owner to set on a new node in `parent`, or null when creation already gave it. */
  private chownNeeded(h: TarHeader, parent: DirInfo): [number, number] | null {
    const own = this.ownerOf(h);
    if (!own) return null;
    const gotGid = parent.sgid ? parent.gid : this.egid;
    return own[0] === this.euid && own[1] === gotGid ? null : own;
  }

  private chmodNeeded(mode: number, chowned: boolean): boolean {
    if (this.forceChmod) return true;
    if (chowned && (mode & 0o6000) !== 0) return true; // chown cleared them
    return (mode & 0o7777) !== (mode & 0o777 & ~this.o.umask);
  }

  private setXattrs(p: string | Buffer, h: TarHeader, userAllowed: boolean): void {
    for (const [name, value] of h.xattrs!) {
      if (name.startsWith('trusted.overlay.')) {
        this.stats.droppedXattrs++;
        continue;
      }
      if (!userAllowed && name.startsWith('user.')) {
        // the kernel refuses user.* on symlinks and device nodes
        this.stats.droppedXattrs++;
        continue;
      }
      lsetxattr(p, fsPath(name), value);
      if (name.startsWith('system.posix_acl_')) this.forceChmod = true;
    }
  }

  // ------------------------------------------------------------ resolution

  private abs(rel: string): string | Buffer {
    return fsPath(rel === '' ? this.destB : this.destB + '/' + rel);
  }

  /**
   * Resolve the directory named by comps[0, n) inside dest. Creates missing
   * plain directories when `create`; returns null when one is missing and
   * !create. Follows symlinks in scope (dest is the root).
   */
  private resolveDir(comps: string[], n: number, create: boolean, bname: string): DirInfo | null {
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
  private step(parent: DirInfo, name: string, create: boolean, bname: string, ctx: { hops: number }): DirInfo | null {
    const rel = joinRel(parent.real, name);
    const hit = this.dirs.get(rel);
    if (hit) return hit;
    const p = this.abs(rel);
    const st = fs.lstatSync(p, { throwIfNoEntry: false });
    if (!st) {
      if (!create) return null;
      fs.mkdirSync(p, 0o755);
      const info: DirInfo = { real: rel, sgid: parent.sgid, uid: this.euid, gid: parent.sgid ? parent.gid : this.egid };
      if (this.o.preserveOwnership) {
        // implicit parents belong to (mapped) root, like Docker's MkdirAllAndChown
        const m = this.o.idMap;
        const uid = m ? toHost(m.uids, 0) : 0;
        const gid = m ? toHost(m.gids, 0) : 0;
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
  private walk(start: DirInfo, target: string, bname: string, ctx: { hops: number }, via: string): DirInfo {
    let cur = start;
    for (const c of target.split('/')) {
      if (c === '' || c === '.') continue;
      if (c === '..') {
        if (cur.real !== '') cur = this.realDir(parentOf(cur.real));
        continue;
      }
      const next = this.step(cur, c, false, bname, ctx);
      if (!next) throw unsafe(bname, 'symlink-parent', `parent symlink ${JSON.stringify(via)} -> ${JSON.stringify(target)} does not resolve to a directory inside the destination`);
      cur = next;
    }
    return cur;
  }

  private realDir(rel: string): DirInfo {
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
  private remove(rel: string): void {
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
  private invalidate(): void {
    this.dirs.clear();
    this.dirs.set('', this.root);
  }

  /** apply mode: remember rel and its ancestors as written by this layer. */
  private mark(rel: string): void {
    const l = this.layer;
    if (!l) return;
    while (rel !== '' && !l.has(rel)) {
      l.add(rel);
      rel = parentOf(rel);
    }
  }

  /** apply mode: delete everything below dir that this layer did not write. */
  private emptyOpaque(rel: string): void {
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

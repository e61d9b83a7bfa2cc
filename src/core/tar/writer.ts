/**
 * The synchronous file-system side of extraction: a TarParserHandler that
 * materialises entries below `dest`. Runs inside the extract worker (or
 * inline); every call is a sync fs/libc call.
 *
 * The entry writers live here; metadata application (owners, modes, times,
 * xattrs) is in writer-meta.ts and path resolution inside dest in
 * writer-tree.ts, which LayerWriter builds on.
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
 * - hardlink targets must already exist inside dest and not be directories;
 *   a hardlink entry's owner, xattrs, mode and times are applied to the
 *   shared inode (the last entry wins), like containerd's archive.Apply.
 */
import fs from 'node:fs';
import { ThinError } from '../errors/errors.js';
import { lchmod, lsetxattr, lutimesNs, futimesNs, mknod, mkWhiteout, S_IFBLK, S_IFCHR, S_IFIFO } from '../host/sys.js';
import { classifyWhiteout, AUFS_META_PREFIX, OVERLAY_OPAQUE_XATTR, WHITEOUT_PREFIX } from '../fs/whiteout.js';
import { ioError, unsafe } from './errors.js';
import type { TarHeader } from './headers.js';
import type { TarParserHandler } from './parser.js';
import { cleanName, entryComponents, fsPath, joinRel, NAME_MAX } from './paths.js';
import { MetadataWriter } from './writer-meta.js';
import type { DirInfo } from './writer-tree.js';

export type { WriterStats } from './writer-meta.js';
export type { WhiteoutMode, WriterOptions } from './writer-tree.js';

const O_FILE = fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW;
const S_ISGID = 0o2000;

function errCode(e: unknown): string | undefined {
  return (e as { code?: string } | null)?.code;
}

export class LayerWriter extends MetadataWriter implements TarParserHandler {
  /** the open regular file of the current entry */
  private fd = -1;
  private fdRel = '';
  private cur: TarHeader | null = null;
  private curName = '';

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

  /** Release the open file, if any (after an error). */
  abort(): void {
    if (this.fd >= 0) this.closeFd();
  }

  // ------------------------------------------------------------ entries

  private handleEntry(h: TarHeader): void {
    const s = this.stats;
    s.entries++;
    if (s.entries > this.o.maxEntries) throw unsafe(h.name, 'too-many-entries', `more than ${this.o.maxEntries} entries`);
    const comps = entryComponents(h, this.o.maxNameBytes);

    if (comps.length === 0) {
      if (h.type !== 'dir') throw unsafe(h.name, 'replace-root', `a ${h.type} entry cannot replace the destination directory itself`);
      this.dirEntry(h, this.root, '');
      return;
    }

    const base = comps[comps.length - 1]!;
    const mode = this.o.whiteouts;
    if (mode === 'record') {
      // record mode writes what a CVMFS transaction publishes, and its publisher takes any name starting
      // with ".wh." in any case for a deletion: such a name would silently vanish
      for (const c of comps) {
        if (c.length >= 4 && !c.startsWith(WHITEOUT_PREFIX) && c.slice(0, 4).toLowerCase() === WHITEOUT_PREFIX) {
          throw unsafe(
            h.name,
            'unpublishable-name',
            `${JSON.stringify(c)} would be taken for a whiteout by a CVMFS transaction's publisher and lost; publish this image with --ingest, which keeps it`,
          );
        }
      }
    }
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
        if (mode === 'record') {
          const d = this.resolveDir(comps, comps.length - 1, true, h.name)!;
          this.rec!.opaque.add(this.recordName(d.real, h.name));
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
          this.setTimes(p, h);
          return;
        }
        if (mode === 'apply') {
          const parent = this.resolveDir(comps, comps.length - 1, true, h.name)!;
          this.mark(parent.real);
          this.remove(joinRel(parent.real, w.target));
          return;
        }
        if (mode === 'record') {
          // as overlay mode, without the device: the deletion is recorded for the layers below
          const parent = this.resolveDir(comps, comps.length - 1, true, h.name)!;
          const rel = joinRel(parent.real, w.target);
          this.remove(rel);
          this.rec!.deleted.add(this.recordName(rel, h.name));
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
    if (h.xattrs) this.setXattrs(this.abs(this.fdRel), h, true, this.fdRel);
    const [at, mt] = this.timesOf(h);
    futimesNs(fd, at.sec, at.nsec, mt.sec, mt.nsec);
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
    // the setgid bit now (the rest of the mode waits for the end): what is created below
    // inherits the group as with containerd, which sets a directory's mode at once
    const sgid = (h.mode & S_ISGID) !== 0;
    if (info.sgid !== sgid) {
      const cur = fs.lstatSync(p).mode & 0o7777;
      lchmod(p, sgid ? cur | S_ISGID : cur & ~S_ISGID);
      info.sgid = sgid;
    }
    if (h.xattrs) this.setXattrs(p, h, true, rel);
    const [atime, mtime] = this.timesOf(h);
    this.deferred.set(rel, { mode: h.mode, atime, mtime });
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
    if (h.xattrs) this.setXattrs(p, h, false, rel);
    this.setTimes(p, h);
  }

  private setTimes(p: string | Buffer, h: TarHeader): void {
    const [at, mt] = this.timesOf(h);
    lutimesNs(p, at.sec, at.nsec, mt.sec, mt.nsec);
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
    const p = this.abs(rel);
    // a link to itself only gets its metadata (containerd fails on it: it removes the target first)
    if (trel !== rel) {
      const tp = this.abs(trel);
      try {
        fs.linkSync(tp, p);
      } catch (e) {
        if (errCode(e) !== 'EEXIST') throw e;
        this.remove(rel);
        fs.linkSync(tp, p);
      }
    }
    // The link entry's own metadata goes onto the shared inode (the last entry wins), in
    // containerd's order: lchown (always: like containerd's, it clears setuid/setgid and
    // security.capability of the inode), xattrs, chmod (not on a symlink), times.
    const own = this.ownerOf(h);
    if (own) fs.lchownSync(p, own[0], own[1]);
    if (h.xattrs) this.setXattrs(p, h, st.isFile(), rel);
    // record mode: the shared inode's xattrs (the lchown may have cleared a capability) under both names
    if (this.rec && (h.xattrs || this.rec.xattrs.has(trel))) {
      this.rec.xattrs.add(rel);
      this.rec.xattrs.add(trel);
    }
    if (!st.isSymbolicLink()) lchmod(p, h.mode);
    this.setTimes(p, h);
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
    if (h.xattrs) this.setXattrs(p, h, false, rel);
    this.setTimes(p, h);
  }
}

/**
 * Metadata application for LayerWriter: the owner of each entry (the tar's
 * ids, mapped through the userns maps, or none when ownership is not
 * preserved) and whether a chown or chmod is needed after creation (umask,
 * setgid parents, default ACLs), xattrs (dropping `trusted.*` and
 * `user.*` where the kernel refuses them), the writer's statistics, and the
 * deferred directory modes and times applied once the parser ended.
 */
import { lchmod, lsetxattr, lutimesNs, lgetxattr, llistxattr } from '../host/sys.js';
import { ioError, unsafe } from './errors.js';
import type { TarHeader, TarTime } from './headers.js';
import { toHost } from '../util/idmap.js';
import { fsPath, recordPath } from './paths.js';
import { DestTree, type DirInfo, type WriterOptions } from './writer-tree.js';

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
  /** xattrs not applied: `trusted.*` from the tar, `user.*` on symlinks/devices, any the file system does not support */
  droppedXattrs: number;
  /** record mode: what the layer's whiteouts and xattrs say, for a per-layer record (see LayerRecordData) */
  record?: LayerRecordData;
}

/**
 * What a layer extracted in `record` mode leaves out of its directory or may
 * lose on the way to a CVMFS repository (UTF-8 paths relative to the layer
 * root, the layer's own resolved paths): OCI deletions and opaque
 * directories, and every xattr its entries carry (a publish may drop them).
 */
export interface LayerRecordData {
  /** `dir/.wh.name` → `dir/name` */
  deleted: string[];
  /** directories holding `.wh..wh..opq` ('' = the layer root) */
  opaque: string[];
  /** xattrs on the extracted entries (`trusted.*` never), values base64 */
  xattrs: { path: string; name: string; value: string }[];
}

/** The latest time a 64-bit nanosecond count since 1970 holds (Go's time bound in archive.Apply). */
const MAX_SEC = 9_223_372_036;
const MAX_SEC_NSEC = 854_775_807;
const EPOCH: TarTime = { sec: 0, nsec: 0 };

function boundTime(t: TarTime): TarTime {
  if (t.sec < 0 || t.sec > MAX_SEC || (t.sec === MAX_SEC && t.nsec > MAX_SEC_NSEC)) return EPOCH;
  return t;
}

export class MetadataWriter extends DestTree {
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
  /** umask/ACL model no longer trustworthy: always chmod */
  protected forceChmod = false;

  constructor(o: WriterOptions) {
    super(o);
    // default ACLs override the umask for new files: then never trust the creation mode
    try {
      if (lgetxattr(o.dest, 'system.posix_acl_default')) this.forceChmod = true;
    } catch {
      this.forceChmod = true;
    }
  }

  /** record mode: deletions, opaque dirs, paths that got xattrs (read back at the end) */
  protected readonly rec: { deleted: Set<string>; opaque: Set<string>; xattrs: Set<string> } | null =
    this.o.whiteouts === 'record' ? { deleted: new Set(), opaque: new Set(), xattrs: new Set() } : null;

  protected recordName(rel: string, entry: string): string {
    return recordPath(rel, entry);
  }

  /** The record of a record-mode extraction: xattrs as they are on disk now (last entry won, removed paths gone). */
  private collectRecord(): LayerRecordData {
    const r = this.rec!;
    const xattrs: LayerRecordData['xattrs'] = [];
    for (const rel of [...r.xattrs].sort()) {
      const p = this.abs(rel);
      let names: string[];
      try {
        names = llistxattr(p);
      } catch {
        continue; // removed or replaced by a later entry
      }
      for (const name of names.sort()) {
        if (name.startsWith('trusted.')) continue;
        const v = lgetxattr(p, name);
        if (v) xattrs.push({ path: this.recordName(rel, rel), name, value: v.toString('base64') });
      }
    }
    return { deleted: [...r.deleted].sort(), opaque: [...r.opaque].sort(), xattrs };
  }

  /** Apply deferred directory modes and times. Call once, after the parser ended. */
  finish(): void {
    if (this.rec) this.stats.record = this.collectRecord();
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

  // ------------------------------------------------------------ metadata

  /** Host owner of an entry, or null when ownership is not preserved. */
  protected ownerOf(h: TarHeader): [number, number] | null {
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
  protected chownNeeded(h: TarHeader, parent: DirInfo): [number, number] | null {
    const own = this.ownerOf(h);
    if (!own) return null;
    const gotGid = parent.sgid ? parent.gid : this.egid;
    return own[0] === this.euid && own[1] === gotGid ? null : own;
  }

  protected chmodNeeded(mode: number, chowned: boolean): boolean {
    if (this.forceChmod) return true;
    if (chowned && (mode & 0o6000) !== 0) return true; // chown cleared them
    return (mode & 0o7777) !== (mode & 0o777 & ~this.o.umask);
  }

  /**
   * Set the entry's xattrs on p. Like containerd's archive.Apply: `trusted.*`
   * is never set (a layer must not steer overlayfs: opaque, redirect,
   * metacopy), `user.*` is dropped where the kernel refuses it (symlinks,
   * devices, fifos), and an xattr the file system does not support is
   * dropped; each one dropped is counted.
   */
  protected setXattrs(p: string | Buffer, h: TarHeader, userAllowed: boolean, rel: string): void {
    this.rec?.xattrs.add(rel);
    for (const [name, value] of h.xattrs!) {
      if (name.startsWith('trusted.') || (!userAllowed && name.startsWith('user.'))) {
        this.stats.droppedXattrs++;
        continue;
      }
      try {
        lsetxattr(p, fsPath(name), value);
      } catch (e) {
        const code = (e as { code?: string }).code;
        if (code !== 'ENOTSUP' && code !== 'EOPNOTSUPP') throw e;
        this.stats.droppedXattrs++;
        continue;
      }
      if (name.startsWith('system.posix_acl_')) this.forceChmod = true;
    }
  }

  /**
   * [atime, mtime] to set for an entry, as containerd's archive.Apply does:
   * atime is the later of the entry's atime and mtime (mtime when it has
   * none), and a time before 1970 or after 2262 (outside a 64-bit
   * nanosecond count) becomes 1970-01-01.
   */
  protected timesOf(h: TarHeader): [TarTime, TarTime] {
    const m = h.mtime;
    const a = h.atime && (h.atime.sec > m.sec || (h.atime.sec === m.sec && h.atime.nsec > m.nsec)) ? h.atime : m;
    return [boundTime(a), boundTime(m)];
  }
}

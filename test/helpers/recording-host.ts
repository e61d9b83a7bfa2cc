/**
 * A Host (src/core/host/host.ts) that does no system call: it records every call
 * and keeps a simulated mount table, so the daemons' semantics can be tested
 * as an ordinary user. Plain file I/O still happens for real (in temp dirs).
 *
 * The simulation follows the kernel where test/core/host-contract.test.ts
 * checks it against the real host: ENOENT for a missing path, EINVAL for a
 * path that is no mount point, EBUSY for a mount with mounts on it, a bind
 * taking the file system (type, source, root) of its source, propagation
 * inherited from a shared parent, MS_REC changes of propagation, overlay
 * super options as the kernel lists them, EEXIST for mknod, flock conflicts
 * between open file descriptions, watches of file opens (the opens a test
 * reports with `opened`). Device nodes are placeholder files (`nodes` says
 * what they are), owners are remembered in `owners`.
 */
import { constants as fsConstants, existsSync, fstatSync, lstatSync, lutimesSync, promises as fsp, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import {
  bindSteps,
  type ExecOptions,
  type ExecResult,
  FS_MAGIC,
  type FsProbeOp,
  type FsProbeResult,
  type Host,
  type MountInfo,
  type OpenEvent,
  type OpenWatch,
  type OverlayMount,
  type PathArg,
  type StreamingResult,
  type UsernsHandle,
} from '../../src/core/host/host.js';
import { OpenWatchError } from '../../src/core/host/open-watch.js';
import {
  LOCK_EX,
  LOCK_NB,
  LOCK_SH,
  LOCK_UN,
  MNT_DETACH,
  MS_BIND,
  MS_NODEV,
  MS_NOSUID,
  MS_PRIVATE,
  MS_RDONLY,
  MS_REC,
  MS_REMOUNT,
  MS_SHARED,
  MS_SLAVE,
} from '../../src/core/host/sys.js';
import type { IdMap } from '../../src/core/util/idmap.js';

export interface HostCall {
  op: string;
  args: unknown[];
}

function errno(code: string, what: string): Error {
  return Object.assign(new Error(`${what}: ${code}`), { code });
}

export interface SimMount extends MountInfo {
  readonly: boolean;
  propagation: 'private' | 'slave' | 'shared';
  nosuid?: boolean;
  nodev?: boolean;
  /** A bind's source path as given (the kernel lists only `root`, the path below the file system's root). */
  from?: string;
  /** Peer group of a shared mount. */
  peer?: number;
  /** Peer group a slave receives from. */
  master?: number;
}

/** A path as the sim keys it: absolute, bytes kept (latin1) for Buffer paths. */
const key = (p: PathArg): string => path.resolve(typeof p === 'string' ? p : p.toString('latin1'));
/** A PathArg for node:fs. */
const fsPath = (p: PathArg): string | Buffer => p;

function lexists(p: PathArg): boolean {
  try {
    lstatSync(fsPath(p));
    return true;
  } catch {
    return false;
  }
}

const XATTR_NAMESPACES = ['user.', 'trusted.', 'security.', 'system.'];

export class RecordingHost implements Host {
  readonly calls: HostCall[] = [];
  readonly mounts: SimMount[] = [];
  /** Paths whose statfs answers ENOTCONN (a dead FUSE process). */
  readonly broken = new Set<string>();
  /** A `copy` probe writes its file this many bytes at a time, waiting between pieces (a slow client); default: at once. */
  copyPace: { bytes: number; ms: number } | undefined;
  /** The `copy` probes asked (`to` undefined: read ahead, nothing written). */
  readonly copyProbes: { path: string; to: string | undefined }[] = [];
  /** Paths whose probes never answer until `unstall` (a stalled FUSE process). */
  readonly stalled = new Set<string>();
  private readonly stallWaiters: (() => void)[] = [];
  /** statfs magic per path (default: ext4-like 0xef53). */
  readonly magic = new Map<string, number>();
  /** Failure to inject: op name → error code thrown on the next call (then cleared). */
  readonly failNext = new Map<string, string>();
  /** Program runner for exec(); default: exit 0. */
  execHandler: (file: string, args: readonly string[], opts?: ExecOptions) => ExecResult | Promise<ExecResult> = () => ({ code: 0, stdout: '', stderr: '' });
  /** Program runner for execStreaming(); default: the input read to its end, exit 0. */
  streamHandler: (file: string, args: readonly string[], input?: Readable) => StreamingResult | Promise<StreamingResult> = drain;
  readonly xattrs = new Map<string, Map<string, Buffer>>();
  /** flock holders per file (dev:ino): the fd and LOCK_SH or LOCK_EX. */
  readonly locks = new Map<string, { fd: number; op: number }[]>();
  /** What mknod made at a path (the file there is a placeholder). */
  readonly nodes = new Map<string, { mode: number; major: number; minor: number }>();
  /** Owners set by lchown. */
  readonly owners = new Map<string, { uid: number; gid: number }>();
  /** The answer of overlayIndexParam (the overlay module's `index` parameter exists). */
  overlayIndex = true;
  /** User namespaces handed out by createUserns, with their maps. */
  readonly userns: { fd: number; uidMaps: readonly IdMap[]; gidMaps: readonly IdMap[]; closed: boolean }[] = [];
  /** Watches handed out by watchOpens: the opens reported by `opened` that they have not read yet. */
  readonly watches: { mountPoint: string; mount: SimMount; queue: OpenEvent[]; lost: number; closed: boolean }[] = [];

  private record(op: string, ...args: unknown[]): void {
    this.calls.push({ op, args });
    const f = this.failNext.get(op);
    if (f) {
      this.failNext.delete(op);
      throw errno(f, op);
    }
  }

  ops(op?: string): HostCall[] {
    return op ? this.calls.filter((c) => c.op === op) : this.calls;
  }

  mountedAt(target: string): SimMount | undefined {
    const t = path.resolve(target);
    for (let i = this.mounts.length - 1; i >= 0; i--) if (this.mounts[i]!.mountPoint === t) return this.mounts[i];
    return undefined;
  }

  /** The mount a path is on: the topmost one at the longest mount point above it (none: the root file system). */
  mountOf(p: string): SimMount | undefined {
    const r = path.resolve(p);
    let best: SimMount | undefined;
    for (const m of this.mounts) {
      if ((r === m.mountPoint || r.startsWith(m.mountPoint === '/' ? '/' : `${m.mountPoint}/`)) && (!best || m.mountPoint.length >= best.mountPoint.length))
        best = m;
    }
    return best;
  }

  /** ENOENT for a path that does not exist, unless a mount stands there. */
  private mustExist(p: string, what: string): void {
    if (!existsSync(p) && !this.mountedAt(p)) throw errno('ENOENT', `${what} ${p}`);
  }

  private groups = 0;

  /**
   * Propagation of a new mount at `t` (bind: of the mount `from`), from
   * mount_namespaces(7): a bind of a shared mount joins its peer group, one
   * of a slave is a slave of the same master, and a mount under a shared
   * parent is shared (a new peer group; the copies in the parent's peers
   * are not simulated).
   */
  private inherited(t: string, from?: SimMount): Pick<SimMount, 'propagation' | 'peer' | 'master'> {
    const parent = this.mountOf(t);
    if (parent) this.normalize(parent);
    if (from) this.normalize(from);
    const parentShared = parent?.propagation === 'shared';
    const master = from?.master !== undefined ? { master: from.master } : {};
    if (from?.peer !== undefined) return { propagation: 'shared', peer: from.peer };
    if (parentShared) return { propagation: 'shared', peer: ++this.groups, ...master };
    return from?.master !== undefined ? { propagation: 'slave', master: from.master } : { propagation: 'private' };
  }

  /** A mount a test pushed as shared gets a peer group of its own. */
  private normalize(m: SimMount): void {
    if (m.propagation === 'shared' && m.peer === undefined) m.peer = ++this.groups;
  }

  /** MS_SHARED / MS_SLAVE / MS_PRIVATE on one mount, as change_mnt_propagation does. */
  private propagate(m: SimMount, p: 'shared' | 'slave' | 'private'): void {
    for (const x of this.mounts) this.normalize(x);
    if (p === 'shared') {
      m.peer ??= ++this.groups;
    } else if (p === 'private') {
      delete m.peer;
      delete m.master;
    } else if (m.peer !== undefined) {
      // a slave of its peer group, if that has other members; alone in it: private
      const others = this.mounts.some((x) => x !== m && x.peer === m.peer);
      if (others) m.master = m.peer;
      delete m.peer;
    }
    m.propagation = m.peer !== undefined ? 'shared' : m.master !== undefined ? 'slave' : 'private';
  }

  mount(source: string | null, target: string, fstype: string | null, flags: number, data: string | null): void {
    this.record('mount', source, target, fstype, flags, data);
    const t = path.resolve(target);
    if (flags & (MS_SHARED | MS_SLAVE | MS_PRIVATE)) {
      this.mustExist(t, 'mount');
      const m = this.mountedAt(t);
      if (!m) throw errno('EINVAL', `mount ${t}: not a mount point`);
      const p = flags & MS_SHARED ? 'shared' : flags & MS_SLAVE ? 'slave' : 'private';
      // MS_REC: the whole tree of mounts on it
      const i = this.mounts.lastIndexOf(m);
      for (const x of flags & MS_REC ? this.mounts.filter((x, j) => x === m || (j > i && x.mountPoint.startsWith(`${t}/`))) : [m]) this.propagate(x, p);
      return;
    }
    if (flags & MS_REMOUNT) {
      this.mustExist(t, 'remount');
      const m = this.mountedAt(t);
      if (!m) throw errno('EINVAL', `remount ${t}: not a mount point`);
      m.readonly = (flags & MS_RDONLY) !== 0;
      if (flags & MS_BIND) {
        m.nosuid = (flags & MS_NOSUID) !== 0;
        m.nodev = (flags & MS_NODEV) !== 0;
      }
      m.options = m.readonly ? 'ro' : 'rw';
      return;
    }
    if (flags & MS_BIND) {
      const src = path.resolve(source ?? '');
      this.mustExist(src, 'mount --bind');
      this.mustExist(t, 'mount --bind');
      const below = this.mounts.length;
      this.mounts.push(this.bound(src, t));
      if (flags & MS_REC) {
        for (const m of this.mounts.slice(0, below)) {
          if (m.mountPoint.startsWith(`${src}/`) && this.mountOf(m.mountPoint) === m)
            this.mounts.push(this.bound(m.mountPoint, t + m.mountPoint.slice(src.length)));
        }
      }
      return;
    }
    this.mustExist(t, 'mount');
    this.mounts.push({
      mountPoint: t,
      root: '/',
      fsType: fstype ?? 'none',
      source: source ?? 'none',
      options: (flags & MS_RDONLY) !== 0 ? 'ro' : 'rw',
      readonly: (flags & MS_RDONLY) !== 0,
      nosuid: (flags & MS_NOSUID) !== 0,
      nodev: (flags & MS_NODEV) !== 0,
      ...this.inherited(t),
      superOptions: [(flags & MS_RDONLY) !== 0 ? 'ro' : 'rw', ...(data ? [data] : [])].join(','),
    });
  }

  /** A bind of `src` (on its file system: type, source, root below that file system's root) at `t`. */
  private bound(src: string, t: string): SimMount {
    const under = this.mountOf(src);
    const root = under ? path.join(under.root, path.relative(under.mountPoint, src)) : src;
    return {
      mountPoint: t,
      root,
      from: src,
      fsType: under?.fsType ?? 'bind',
      source: under?.source ?? src,
      options: 'rw',
      readonly: false,
      nosuid: under?.nosuid ?? false,
      nodev: under?.nodev ?? false,
      ...this.inherited(t, under),
      ...(under?.superOptions !== undefined ? { superOptions: under.superOptions } : {}),
    };
  }

  umount(target: string, flags = 0): void {
    this.record('umount', target, flags);
    const t = path.resolve(target);
    const i = this.mounts.findLastIndex((m) => m.mountPoint === t);
    if (i < 0) {
      this.mustExist(t, 'umount2');
      throw errno('EINVAL', `umount2 ${t}`);
    }
    // the mounts on this one: mounted later, below its mount point
    const children = (j: number) => j > i && this.mounts[j]!.mountPoint.startsWith(`${t}/`);
    if (!(flags & MNT_DETACH) && this.mounts.some((_, j) => children(j))) throw errno('EBUSY', `umount2 ${t}`);
    // detach takes the mounts on it along
    for (let j = this.mounts.length - 1; j > i; j--) if (children(j)) this.mounts.splice(j, 1);
    this.mounts.splice(i, 1);
  }

  bind(source: string, target: string, opts: Parameters<Host['bind']>[2] = {}): void {
    const before = this.mounts.length;
    for (const s of bindSteps(source, target, opts)) this.mount(...s);
    // the real host attaches a recursive read-only bind read-only as a whole (mount_setattr AT_RECURSIVE)
    if (opts.readonly && opts.recursive) {
      for (const m of this.mounts.slice(before)) Object.assign(m, { readonly: true, nosuid: true, nodev: true, options: 'ro' });
    }
  }

  mountinfo(): MountInfo[] {
    this.calls.push({ op: 'mountinfo', args: [] });
    return this.mounts.map((m) => ({
      mountPoint: m.mountPoint,
      root: m.root,
      fsType: m.fsType,
      source: m.source,
      options: [m.readonly ? 'ro' : 'rw', ...(m.nosuid ? ['nosuid'] : []), ...(m.nodev ? ['nodev'] : [])].join(','),
      superOptions: m.superOptions ?? '',
      propagation: m.propagation,
    }));
  }

  private under(set: ReadonlySet<string>, p: string): boolean {
    const r = path.resolve(p);
    for (const b of set) if (r === b || r.startsWith(`${b}/`)) return true;
    return false;
  }

  /** A stalled path answers again: its waiting probes run. */
  unstall(p?: string): void {
    if (p === undefined) this.stalled.clear();
    else this.stalled.delete(p);
    for (const w of this.stallWaiters.splice(0)) w();
  }

  /** Probes run here, on real paths: `broken` answers ENOTCONN, `stalled` waits for `unstall`. */
  async probeFs(ops: readonly FsProbeOp[]): Promise<FsProbeResult[]> {
    this.calls.push({ op: 'probeFs', args: ops.map((o) => `${o.op} ${o.path}`) });
    const out: FsProbeResult[] = [];
    for (const o of ops) {
      while (this.under(this.stalled, o.path)) await new Promise<void>((r) => this.stallWaiters.push(r));
      let r: FsProbeResult;
      try {
        if (this.under(this.broken, o.path)) throw errno('ENOTCONN', `${o.op} ${o.path}`);
        if (o.op === 'statfs') r = { ok: true, type: this.statfsType(o.path) };
        else if (o.op === 'stat') {
          const st = await fsp.stat(o.path);
          r = { ok: true, uid: st.uid, gid: st.gid, dev: st.dev, dir: st.isDirectory(), bytes: st.size };
        } else if (o.op === 'realpath') {
          const real = await fsp.realpath(o.path);
          r = { ok: true, real, dir: (await fsp.stat(real)).isDirectory() };
        } else if (o.op === 'read' && o.head !== undefined) {
          const b = (await fsp.readFile(o.path)).subarray(0, o.head);
          r = { ok: true, bytes: b.length, text: b.toString('base64') };
        } else if (o.op === 'read') {
          const b = await fsp.readFile(o.path);
          r = o.text ? { ok: true, bytes: b.length, text: b.toString('utf8') } : { ok: true, bytes: Math.min(b.length, o.max ?? b.length) };
        } else if (o.op === 'counters') {
          // as the probe helper: getfattr's output, through the program runner
          const x = await this.execHandler('getfattr', ['--absolute-names', '-d', '-m', '^user\\.(rx|ndownload|nclg)$', o.path]);
          if (x.code !== 0) throw errno('EIO', `getfattr ${o.path}: exit ${x.code}`);
          r = { ok: true, text: x.stdout };
        } else if (o.op === 'copy' && o.copy) {
          // as the probe helper: an exactly sized regular file, in pieces
          const { to, size, count } = o.copy;
          const st = await fsp.lstat(o.path);
          if (!st.isFile()) throw errno('EINVAL', `${o.path} is not a regular file`);
          if (st.size !== size) throw errno('EFBIG', `${o.path} has ${st.size} bytes, not ${size}`);
          const data = await fsp.readFile(o.path);
          const per = Math.ceil(size / count);
          const pace = this.copyPace ?? { bytes: Infinity, ms: 0 };
          this.copyProbes.push({ path: o.path, to });
          await Promise.all(
            Array.from({ length: to === undefined ? 0 : count }, async (_, i) => {
              const piece = data.subarray(Math.min(size, i * per), Math.min(size, (i + 1) * per));
              const out = await fsp.open(`${to}.${i}`, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL, 0o600);
              try {
                // written a little at a time when paced, as a client fetching a chunked file does
                for (let at = 0; at < piece.length; at += pace.bytes) {
                  await out.write(piece, at, Math.min(pace.bytes, piece.length - at), at);
                  if (pace.ms) await new Promise((res) => setTimeout(res, pace.ms));
                }
              } finally {
                await out.close();
              }
            }),
          );
          r = { ok: true, bytes: size };
        } else r = { ok: true, entries: (await fsp.readdir(o.path)).length };
      } catch (e) {
        r = { ok: false, code: (e as NodeJS.ErrnoException).code ?? 'EIO', message: (e as Error).message };
      }
      out.push(r);
      if (!r.ok && o.required) break;
    }
    return out;
  }

  statfsType(p: string): number {
    this.record('statfs', p);
    const r = path.resolve(p);
    for (const b of this.broken) if (r === b || r.startsWith(`${b}/`)) throw errno('ENOTCONN', `statfs ${r}`);
    const magic = this.magic.get(r);
    if (magic !== undefined) return magic;
    this.mustExist(r, 'statfs');
    const fs = this.mountOf(r)?.fsType;
    return fs === undefined ? 0xef53 : fs === 'fuse' || fs.startsWith('fuse.') ? FS_MAGIC.FUSE : (FS_BY_TYPE[fs] ?? 0xef53);
  }

  /** An overlay mount: recorded with its lowers resolved, and added to the mount table as `overlay`. */
  mountOverlay(o: OverlayMount): void {
    const abs = (p: string) => path.resolve(o.relativeTo ?? process.cwd(), p);
    this.record('mountOverlay', {
      target: path.resolve(o.target),
      lowers: o.lowers.map(abs),
      upper: o.upper && abs(o.upper),
      work: o.work && abs(o.work),
      options: [...(o.options ?? [])],
    });
    const t = path.resolve(o.target);
    this.mustExist(t, 'mount overlay');
    for (const d of [...o.lowers, ...(o.upper ? [o.upper, o.work ?? ''] : [])]) this.mustExist(abs(d), 'mount overlay');
    // overlayfs: a read-only overlay needs two lowers
    if (!o.upper && o.lowers.length < 2) throw errno('EINVAL', `mount overlay ${t}: one lower and no upper`);
    // as the kernel lists them: the super block's ro/rw, each lower, upper and work, then the options that
    // are not the default (index=off is, in the usual CONFIG_OVERLAY_FS_INDEX=n kernels)
    const superOptions = [
      o.upper ? 'rw' : 'ro',
      ...o.lowers.map((l) => `lowerdir+=${abs(l)}`),
      ...(o.upper ? [`upperdir=${abs(o.upper)}`, `workdir=${abs(o.work ?? '')}`] : []),
      ...(o.options ?? []).filter((x) => x !== 'index=off'),
    ].join(',');
    this.mounts.push({
      mountPoint: t,
      root: '/',
      fsType: 'overlay',
      source: 'overlay',
      options: 'rw',
      readonly: false,
      ...this.inherited(t),
      superOptions,
    });
  }

  idmappedBindMount(source: string, target: string, usernsFd: number): void {
    this.record('idmappedBindMount', source, target, usernsFd);
    // a recursive bind of the source's file system (open_tree AT_RECURSIVE), its ids mapped
    this.mount(source, target, null, MS_BIND | MS_REC, null);
    this.calls.pop();
  }

  mknod(p: PathArg, mode: number, major = 0, minor = 0): void {
    this.record('mknod', String(p), mode, major, minor);
    if (!existsSync(path.dirname(key(p)))) throw errno('ENOENT', `mknod ${String(p)}`);
    if (lexists(p)) throw errno('EEXIST', `mknod ${String(p)}`);
    // a regular placeholder file stands in for the device node
    writeFileSync(fsPath(p), '');
    this.nodes.set(key(p), { mode, major, minor });
  }

  mkWhiteout(p: PathArg): void {
    this.mknod(p, 0o020000, 0, 0);
  }

  private xattrTarget(op: string, p: PathArg, name?: PathArg): Map<string, Buffer> | undefined {
    if (!lexists(p)) throw errno('ENOENT', `${op} ${String(p)}`);
    if (name !== undefined && !XATTR_NAMESPACES.some((n) => String(name).startsWith(n))) throw errno('EOPNOTSUPP', `${op} ${String(p)} ${String(name)}`);
    return this.xattrs.get(key(p));
  }

  lsetxattr(p: PathArg, name: PathArg, value: Buffer | string): void {
    this.record('lsetxattr', String(p), String(name));
    const m = this.xattrTarget('lsetxattr', p, name) ?? new Map<string, Buffer>();
    m.set(String(name), typeof value === 'string' ? Buffer.from(value) : value);
    this.xattrs.set(key(p), m);
  }

  lgetxattr(p: PathArg, name: PathArg): Buffer | null {
    return this.xattrTarget('lgetxattr', p)?.get(String(name)) ?? null;
  }

  llistxattr(p: PathArg): string[] {
    return [...(this.xattrTarget('llistxattr', p)?.keys() ?? [])];
  }

  lchown(p: PathArg, uid: number, gid: number): void {
    this.record('lchown', String(p), uid, gid);
    if (!lexists(p)) throw errno('ENOENT', `lchown ${String(p)}`);
    const was = this.owners.get(key(p));
    // -1 leaves an id as it is
    this.owners.set(key(p), { uid: uid === -1 ? (was?.uid ?? -1) : uid, gid: gid === -1 ? (was?.gid ?? -1) : gid });
  }

  lutimesNs(p: PathArg, atimeSec: number, atimeNsec: number, mtimeSec: number, mtimeNsec: number): void {
    this.record('lutimesNs', String(p), atimeSec, atimeNsec, mtimeSec, mtimeNsec);
    lutimesSync(fsPath(p), atimeSec + atimeNsec / 1e9, mtimeSec + mtimeNsec / 1e9);
  }

  /** flock(2) between open file descriptions of this process: a holder whose fd no longer refers to the file is gone. */
  flock(fd: number, op: number): boolean {
    this.record('flock', fd, op);
    const st = fstatSync(fd);
    const file = `${st.dev}:${st.ino}`;
    const holders = (this.locks.get(file) ?? []).filter((h) => {
      try {
        const s = fstatSync(h.fd);
        return `${s.dev}:${s.ino}` === file;
      } catch {
        return false;
      }
    });
    const others = holders.filter((h) => h.fd !== fd);
    const want = op & (LOCK_SH | LOCK_EX | LOCK_UN);
    if (want === LOCK_UN) {
      this.locks.set(file, others);
      return true;
    }
    if (others.some((h) => want === LOCK_EX || h.op === LOCK_EX)) {
      this.locks.set(file, holders);
      if (op & LOCK_NB) return false;
      throw errno('EDEADLK', `flock fd ${fd}: would wait forever in a simulation`);
    }
    this.locks.set(file, [...others, { fd, op: want }]);
    return true;
  }

  overlayIndexParam(): boolean {
    return this.overlayIndex;
  }

  async createUserns(uidMaps: readonly IdMap[], gidMaps: readonly IdMap[]): Promise<UsernsHandle> {
    this.record('createUserns', uidMaps, gidMaps);
    const u = { fd: 1000 + this.userns.length, uidMaps, gidMaps, closed: false };
    this.userns.push(u);
    return {
      fd: u.fd,
      close: () => {
        u.closed = true;
      },
    };
  }

  /**
   * Process `pid` opened `file` (a real path; for execution with `exec`): the
   * open watches of the mount it is on report it, with the path and, for a
   * regular file, its real identity and size. `lost`: events lost instead
   * (a queue overflow).
   */
  opened(file: string, o: { pid?: number; exec?: boolean; lost?: number } = {}): void {
    const p = path.resolve(file);
    const on = this.mountOf(p);
    let st;
    try {
      st = statSync(p, { bigint: true });
    } catch {
      st = undefined;
    }
    const ev: OpenEvent = {
      pid: o.pid ?? 1,
      exec: o.exec ?? false,
      link: p,
      file: st?.isFile() ? { ino: st.ino, dev: st.dev, size: Number(st.size) } : undefined,
    };
    for (const w of this.watches) {
      if (w.closed || w.mount !== on || !this.mounts.includes(on)) continue;
      if (o.lost) w.lost += o.lost;
      else w.queue.push({ ...ev });
    }
  }

  /** A watch of the opens on the mount at `mountpoint`: ENOENT, not a mount point, or a failNext code as the real host's OpenWatchError. */
  watchOpens(mountpoint: string): OpenWatch {
    this.calls.push({ op: 'watchOpens', args: [mountpoint] });
    const t = path.resolve(mountpoint);
    if (!existsSync(t) && !this.mountedAt(t)) throw new OpenWatchError('cannot open it', 'ENOENT');
    const mount = this.mountedAt(t);
    if (!mount) throw new OpenWatchError('not a mount point', undefined);
    const f = this.failNext.get('watchOpens');
    if (f) {
      this.failNext.delete('watchOpens');
      throw new OpenWatchError('fanotify_init', f);
    }
    const w = { mountPoint: t, mount, queue: [] as OpenEvent[], lost: 0, closed: false };
    this.watches.push(w);
    return {
      read: () => {
        if (w.closed) throw errno('EBADF', `read of the watch of ${t}`);
        if (w.queue.length === 0 && w.lost === 0) return null;
        const r = { events: w.queue.splice(0, 256), lost: w.lost };
        w.lost = 0;
        return r;
      },
      mounted: () => this.mountedAt(t) === mount,
      close: () => {
        w.closed = true;
      },
    };
  }

  async exec(file: string, args: readonly string[], opts?: ExecOptions): Promise<ExecResult> {
    this.record('exec', file, [...args]);
    return this.execHandler(file, args, opts);
  }

  async execStreaming(file: string, args: readonly string[], opts: { input?: Readable } = {}): Promise<StreamingResult> {
    this.record('execStreaming', file, [...args]);
    return this.streamHandler(file, args, opts.input);
  }
}

/** statfs magic of the file system types the simulation mounts. */
const FS_BY_TYPE: Record<string, number> = { tmpfs: FS_MAGIC.TMPFS, overlay: FS_MAGIC.OVERLAY, autofs: FS_MAGIC.AUTOFS };

/** The default streaming program: reads its input to the end and exits 0; a failing input kills it. */
async function drain(_file: string, _args: readonly string[], input?: Readable): Promise<StreamingResult> {
  if (!input) return { code: 0, signal: null };
  try {
    for await (const _ of input) void _;
    return { code: 0, signal: null };
  } catch (e) {
    return { code: null, signal: 'SIGKILL', inputError: e };
  }
}

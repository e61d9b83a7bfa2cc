/**
 * The host seam: every side effect on the node that is not plain file I/O in a
 * directory we own — mounts, the mount table, device nodes, extended
 * attributes, ownership, times, locks, running a helper program, watching
 * the files a container opens — goes through one
 * `Host` object that is passed in (as stargz passes its `FileSystem` into its
 * snapshotter). `systemHost` is the real one (libc through koffi, see sys.ts);
 * tests pass a recording host (test/helpers/recording-host.ts) so that the
 * semantics of the daemons run unprivileged, while root tests use the real
 * host for real.
 *
 * One exception: tar extraction and packing run in worker threads
 * (core/tar/*), and a Host object cannot cross into a worker, so those call
 * sys.ts directly (mknod, xattrs, lchown, utimes of the files they write).
 *
 * Nothing below src/core, src/convert, src/graphdriver … picks the real host
 * itself: only the composition roots (src/cli/*, the daemons' start
 * functions) do. test/core/host-contract.test.ts runs the same assertions
 * against both hosts.
 */
import { existsSync, statfsSync } from 'node:fs';
import type { Readable } from 'node:stream';
import { type MountInfo, readMountinfo } from '../fs/fsutil.js';
import type { IdMap } from '../util/idmap.js';
import { exec, execStreaming } from './exec.js';
import { watchOpens } from './open-watch.js';
import { mountOverlay } from './overlay-mount.js';
import { probeHelper } from './probe-child.js';
import * as sys from './sys.js';
import { createUserns, type UsernsHandle } from './userns.js';

export type { MountInfo, UsernsHandle };
export type PathArg = sys.PathArg;

/** Mount propagation of a mount point (mount(2) MS_SHARED/MS_SLAVE/MS_PRIVATE, optionally MS_REC). */
type Propagation = 'private' | 'slave' | 'shared' | 'rprivate' | 'rslave' | 'rshared';

/** A bind mount as the volume front-ends need it: `mount --bind` (+ `--rbind`) (+ `remount,ro`) (+ propagation). */
export interface BindOptions {
  readonly?: boolean;
  /** rbind: take the mounts below `source` along (the whole /cvmfs tree). */
  recursive?: boolean;
  propagation?: Propagation;
}

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface ExecOptions {
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
  /** Written to the program's stdin (then closed). */
  input?: string;
}

export interface StreamingOptions {
  env?: NodeJS.ProcessEnv;
  /** Piped to the program's stdin; without it, stdin is /dev/null. */
  input?: Readable;
}

/** How a streaming run ended: its exit status or signal, and the input's error if the input failed. */
export interface StreamingResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** Set when `input` failed: the program was killed before its stdin closed. */
  inputError?: unknown;
}

/**
 * An overlay mount. Paths are absolute, or relative to `relativeTo` (short
 * links `l/<n>` inside a state directory).
 */
export interface OverlayMount {
  target: string;
  /** Lower directories, top first. */
  lowers: readonly string[];
  /** upperdir and workdir (both or neither: without them the mount is read-only). */
  upper?: string | undefined;
  work?: string | undefined;
  /** Other options, e.g. `index=off`. */
  options?: readonly string[];
  relativeTo?: string | undefined;
}

/**
 * A read-only probe of a path that may be on a FUSE file system (CVMFS):
 * statfs (always answered by the FUSE daemon: tells a dead or stalled client),
 * stat (owner, device, directory?, size as `bytes`), readdir (through an overlay: reaches
 * every lower layer) or read (a regular file's content, read and dropped —
 * a prefetch: `bytes` read, at most `max`) or realpath (the resolved path,
 * and whether it is a directory). `required`: stop the probe after this one
 * fails.
 */
export interface FsProbeOp {
  /**
   * counters: the CVMFS client's download counters of the mount at `path`
   * (`getfattr -d -m '^user\.(rx|ndownload|nclg)$'`, run by the helper, not
   * the daemon: spawning from a daemon blocks its event loop 10–25 ms), its
   * output as `text`.
   */
  op: 'statfs' | 'stat' | 'readdir' | 'read' | 'realpath' | 'copy' | 'counters';
  /** read: at most this many bytes. */
  max?: number;
  /**
   * copy: the regular file at `path` (not followed if a link), which must be
   * exactly `size` bytes, copied as `count` pieces of ceil(size / count)
   * bytes into new files (0600) `<to>.0` … `<to>.<count - 1>`, each piece read
   * through its own descriptor at the same time (a CVMFS client fetches the
   * chunks of one file one after the other for one reader). The reader of
   * the pieces checks their content. Without `to` the pieces are read and
   * dropped: the client's cache gets the file (a mounted image read ahead).
   */
  copy?: { to?: string | undefined; size: number; count: number };
  /** read: answer the first `head` bytes (1 B–64 KiB; fewer at the end of the file) as base64 `text`. */
  head?: number;
  /** read: answer the content (UTF-8) as `text` (small files: profiles). */
  text?: boolean;
  path: string;
  required?: boolean;
}

export type FsProbeResult =
  | {
      ok: true;
      type?: number;
      uid?: number;
      gid?: number;
      dev?: number;
      dir?: boolean;
      entries?: number;
      bytes?: number;
      text?: string;
      real?: string;
    }
  | { ok: false; code: string; message: string };

/** One open of a file on a watched file system (Host.watchOpens). */
export interface OpenEvent {
  /** The opening process. */
  pid: number;
  /** Opened for execution. */
  exec: boolean;
  /** The opened file's path as this process sees it now (readlink of the event's fd); undefined when unreadable. */
  link: string | undefined;
  /** A regular file's identity and size; undefined for anything else, or when unreadable. */
  file: { ino: bigint; dev: bigint; size: number } | undefined;
}

/** A watch of the opens on one mounted file system, every copy of the mount included. */
export interface OpenWatch {
  /**
   * The opens queued now (one read: at most 256), and how many were lost
   * (a queue overflow, an event the kernel could not deliver); null when
   * none is queued. Throws for a failure that ends the watch.
   */
  read(): { events: OpenEvent[]; lost: number } | null;
  /** Is the watched file system still the one mounted at the mount point? (Unmounting ends the reports silently.) */
  mounted(): boolean;
  close(): void;
}

export interface Host {
  /** mount(2). */
  mount(source: string | null, target: string, fstype: string | null, flags: number, data: string | null): void;
  /** umount2(2); `flags` e.g. MNT_DETACH. */
  umount(target: string, flags?: number): void;
  /** Bind `source` on `target` (both exist), read-only and with a propagation if asked. */
  bind(source: string, target: string, opts?: BindOptions): void;
  /** The calling process's mount table (/proc/self/mountinfo). */
  mountinfo(): MountInfo[];
  /** The file system magic of `path` (statfs f_type); throws with `code` ENOTCONN for a dead FUSE mount. */
  statfsType(path: string): number;
  /**
   * Mount an overlay without changing the process's working directory and
   * without mount(2)'s one-page option limit (see overlay-mount.ts).
   */
  mountOverlay(o: OverlayMount): void;
  /** Bind `source` on `target` as an idmapped mount. */
  idmappedBindMount(source: string, target: string, usernsFd: number): void;
  mknod(path: PathArg, mode: number, major?: number, minor?: number): void;
  /** An overlay whiteout (character device 0/0). */
  mkWhiteout(path: PathArg): void;
  lsetxattr(path: PathArg, name: PathArg, value: Buffer | string): void;
  lgetxattr(path: PathArg, name: PathArg): Buffer | null;
  llistxattr(path: PathArg): string[];
  lchown(path: PathArg, uid: number, gid: number): void;
  /** flock(2); false when LOCK_NB and held elsewhere. */
  flock(fd: number, op: number): boolean;
  /**
   * Run probes (in order) where a hung FUSE file system cannot block this
   * process: a helper process (probe-child.ts). One result per
   * operation run. The answer may never come (the caller keeps the deadline,
   * see probe.ts); `signal` says the caller stopped waiting.
   */
  probeFs(ops: readonly FsProbeOp[], signal?: AbortSignal): Promise<FsProbeResult[]>;
  /** Run a program without a shell, its output collected. Never rejects for a non-zero exit: the caller reads `code`. */
  exec(file: string, args: readonly string[], opts?: ExecOptions): Promise<ExecResult>;
  /**
   * Run a program without a shell, its stdout and stderr on this process's
   * stderr (stdout may carry --json), `input` on its stdin. If `input` fails,
   * the program's whole process group is killed before its stdin closes (a
   * cut stream must not be taken for a complete one) and `inputError` says
   * why. Rejects only when the program cannot be started.
   */
  execStreaming(file: string, args: readonly string[], opts?: StreamingOptions): Promise<StreamingResult>;
  /** utimensat(AT_SYMLINK_NOFOLLOW) with nanoseconds (Node's utimes goes through a double and loses them). */
  lutimesNs(path: PathArg, atimeSec: number, atimeNsec: number, mtimeSec: number, mtimeNsec: number): void;
  /**
   * Does the overlay module have the `index` parameter
   * (/sys/module/overlay/parameters/index)? containerd and moby then mount
   * overlays with `index=off`.
   */
  overlayIndexParam(): boolean;
  /** A user namespace with these id maps, held by an open fd (for idmappedBindMount; see userns.ts). */
  createUserns(uidMaps: readonly IdMap[], gidMaps: readonly IdMap[]): Promise<UsernsHandle>;
  /**
   * Watch the files opened on the file system mounted at `mountpoint`
   * (absolute) — fanotify, see open-watch.ts. Throws OpenWatchError when it
   * cannot: no such directory, not a mount point, no privilege (EPERM), no
   * fanotify (ENOSYS), a file system that refuses the mark (EINVAL…).
   */
  watchOpens(mountpoint: string): OpenWatch;
}

const PROPAGATION_FLAGS: Record<Propagation, number> = {
  private: sys.MS_PRIVATE,
  slave: sys.MS_SLAVE,
  shared: sys.MS_SHARED,
  rprivate: sys.MS_PRIVATE | sys.MS_REC,
  rslave: sys.MS_SLAVE | sys.MS_REC,
  rshared: sys.MS_SHARED | sys.MS_REC,
};

/** The flag sequence of a bind with options, shared by the real host and the recording one. */
export function bindSteps(source: string, target: string, opts: BindOptions = {}): Parameters<Host['mount']>[] {
  const steps: Parameters<Host['mount']>[] = [[source, target, null, sys.MS_BIND | (opts.recursive ? sys.MS_REC : 0), null]];
  if (opts.readonly) {
    steps.push(['', target, null, sys.MS_BIND | sys.MS_REMOUNT | sys.MS_RDONLY | sys.MS_NOSUID | sys.MS_NODEV | (opts.recursive ? sys.MS_REC : 0), null]);
  }
  if (opts.propagation) steps.push(['', target, null, PROPAGATION_FLAGS[opts.propagation], null]);
  return steps;
}

let overlayIndex: boolean | undefined;

/** The real host. */
export const systemHost: Host = {
  mount: sys.mount,
  umount: sys.umount,
  bind(source, target, opts = {}) {
    if (opts.readonly) {
      // read-only before it is attached, so that propagated copies are read-only too
      const prop = opts.propagation ? PROPAGATION_FLAGS[opts.propagation] & ~sys.MS_REC : 0;
      try {
        sys.readonlyBindMount(source, target, { recursive: opts.recursive ?? false, propagation: prop });
        return;
      } catch (e) {
        if ((e as { code?: string }).code !== 'ENOSYS') throw e;
        // kernels before 5.12: bind, then remount read-only (copies in shared peers stay writable)
      }
    }
    const steps = bindSteps(source, target, opts);
    sys.mount(...steps[0]!);
    try {
      for (const s of steps.slice(1)) sys.mount(...s);
    } catch (e) {
      // never leave a read-write bind behind a failed read-only remount
      try {
        sys.umount(target, sys.MNT_DETACH);
      } catch {
        /* already gone */
      }
      throw e;
    }
  },
  mountinfo: readMountinfo,
  mountOverlay,
  statfsType: (p) => statfsSync(p).type,
  probeFs: (ops, signal) => probeHelper.run(ops, signal),
  idmappedBindMount: sys.idmappedBindMount,
  mknod: sys.mknod,
  mkWhiteout: sys.mkWhiteout,
  lsetxattr: sys.lsetxattr,
  lgetxattr: sys.lgetxattr,
  llistxattr: sys.llistxattr,
  lchown: sys.lchown,
  flock: sys.flock,
  exec,
  execStreaming,
  lutimesNs: sys.lutimesNs,
  overlayIndexParam: () => (overlayIndex ??= existsSync('/sys/module/overlay/parameters/index')),
  createUserns,
  watchOpens,
};

/** statfs magic numbers. */
export const FS_MAGIC = {
  FUSE: 0x65735546,
  AUTOFS: 0x0187,
  OVERLAY: 0x794c7630,
  TMPFS: 0x01021994,
} as const;

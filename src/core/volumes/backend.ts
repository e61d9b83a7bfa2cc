/**
 * Backend mounts of repositories: what the mount manager does to make a
 * repository appear at `<state>/mounts/<key>` and to take it away again, and
 * to bind a volume on its holders' targets. Everything on the host goes
 * through the Host seam. Only mount points below
 * our own `mounts/` directory are ever unmounted.
 *
 * Every question asked of a CVMFS path (a repository before it is bound, our
 * mounts, the targets we bound) goes through a CvmfsProbe (stack/probe.ts):
 * in a helper process, with a deadline. A stalled client (server or proxy
 * gone: every system call on it hangs) then fails the request within
 * `cvmfs-timeout` (CVMFS_THIN_CVMFS_STALLED, naming the repository and the
 * deadline) and never blocks the event loop or a libuv pool thread. The
 * first access of a repository that autofs has yet to mount gets the
 * `mount-timeout` deadline instead (the automount fetches its catalog).
 * Mounting and unmounting (mount(2), umount2(2)) never wait for the FUSE
 * daemon, so they stay on the main thread.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { UnavailableError } from '../errors/errors.js';
import { writeFileAtomic } from '../fs/fsutil.js';
import type { FsProbeOp, FsProbeResult, Host, MountInfo } from '../host/host.js';
import { CvmfsProbe, StalledError } from '../host/probe.js';
import { MNT_DETACH } from '../host/sys.js';
import { clientParameters, needsClient, type VolumeSpec, volumeName } from './spec.js';
import type { VolumeRecord } from './store.js';
import type { Backend } from './types.js';

export const DEFAULT_MOUNT_COMMAND: readonly string[] = ['mount', '-t', 'cvmfs'];

interface BackendOptions {
  stateDir: string;
  cvmfsRoot: string;
  backend: Backend;
  mountCommand: readonly string[];
  mountTimeoutMs: number;
  /** Questions to CVMFS with the `cvmfs-timeout` deadline. */
  probe: CvmfsProbe;
  /** The first access of a repository autofs has yet to mount, with the `mount-timeout` deadline. */
  automount: CvmfsProbe;
  host: Host;
  log: Logger;
}

/**
 * What a statfs of a path says: ok; broken (ENOTCONN and friends: the FUSE
 * process died); absent (ENOENT); stalled (no answer within the deadline);
 * unknown (the probe itself failed: nothing to conclude, nothing to repair).
 */
export type Health = 'ok' | 'broken' | 'absent' | 'stalled' | 'unknown';

const seconds = (ms: number) => `${+(ms / 1000).toFixed(3)} s`;

function healthOf(a: FsProbeResult | undefined): Health {
  if (!a) return 'unknown';
  if (a.ok) return 'ok';
  if (a.code === 'ENOENT' || a.code === 'ENOTDIR') return 'absent';
  if (a.code === 'ESKIPPED') return 'unknown';
  return 'broken';
}

export class Backends {
  readonly mountsDir: string;
  readonly clientDir: string;

  constructor(private readonly o: BackendOptions) {
    this.mountsDir = path.join(o.stateDir, 'mounts');
    this.clientDir = path.join(o.stateDir, 'client');
  }

  /** The backend a volume uses: per-volume client settings always need the client. */
  backendOf(spec: VolumeSpec): Backend | 'tree' {
    if (spec.repository === null) return 'tree';
    return needsClient(spec) ? 'client' : this.o.backend;
  }

  pathOf(key: string, spec: VolumeSpec): string {
    return spec.repository === null ? this.o.cvmfsRoot : path.join(this.mountsDir, key);
  }

  /** Our mount points that are mounted now: key → number of stacked mounts. */
  ourMounts(table: MountInfo[] = this.o.host.mountinfo()): Map<string, number> {
    const out = new Map<string, number>();
    const prefix = `${this.mountsDir}/`;
    for (const m of table) {
      if (!m.mountPoint.startsWith(prefix)) continue;
      const key = m.mountPoint.slice(prefix.length);
      if (key.includes('/')) continue;
      out.set(key, (out.get(key) ?? 0) + 1);
    }
    return out;
  }

  isMountPoint(p: string, table: MountInfo[] = this.o.host.mountinfo()): boolean {
    const r = path.resolve(p);
    return table.some((m) => m.mountPoint === r);
  }

  /** The deadline of questions to CVMFS (ms). */
  get timeoutMs(): number {
    return this.o.probe.timeoutMs;
  }

  /**
   * statfs of `paths` (in order, one probe) under `key` (the volume's path:
   * one outstanding probe per repository however many targets it has), within
   * the deadline. Throws StalledError (naming `what` and the deadline) when
   * no answer comes, UnavailableError when the probe helper fails.
   */
  async statfs(key: string, paths: readonly string[], what: string, first?: string): Promise<Map<string, Health>> {
    const ops = paths.map((p): FsProbeOp => ({ op: 'statfs', path: p }));
    const f: FsProbeOp | undefined = first === undefined ? undefined : { op: 'statfs', path: first };
    const r = await this.o.probe.run(key, ops, what, f);
    const out = new Map<string, Health>();
    if (f) out.set(first!, healthOf(CvmfsProbe.get(r, f)));
    for (const o of ops) out.set(o.path, healthOf(CvmfsProbe.get(r, o)));
    return out;
  }

  /** Like statfs(), but a stall is the answer 'stalled' and a failed probe 'unknown'. Never throws. */
  async healthOf(key: string, paths: readonly string[], what: string, first?: string): Promise<Map<string, Health>> {
    try {
      return await this.statfs(key, paths, what, first);
    } catch (e) {
      const h: Health = e instanceof StalledError ? 'stalled' : 'unknown';
      if (h === 'unknown') this.o.log.warn({ key, err: (e as Error).message }, 'CVMFS probe failed');
      return new Map([...(first === undefined ? [] : [first]), ...paths].map((p) => [p, h]));
    }
  }

  /** The health of one path (under `key`, default the path itself). Never throws. */
  async health(p: string, key = p, what = `health check of ${p}`): Promise<Health> {
    return (await this.healthOf(key, [p], what)).get(p) ?? 'unknown';
  }

  /**
   * Does the first access of `src` make autofs mount it? (`src` is below an
   * autofs mount point, not mounted yet.) Then it may take the mount timeout.
   */
  private autofsTrigger(src: string, table: MountInfo[] = this.o.host.mountinfo()): boolean {
    let best: MountInfo | undefined;
    for (const m of table) {
      const under = src === m.mountPoint || src.startsWith(m.mountPoint === '/' ? '/' : `${m.mountPoint}/`);
      if (under && (!best || m.mountPoint.length >= best.mountPoint.length)) best = m;
    }
    return best !== undefined && best.fsType === 'autofs' && best.mountPoint !== src;
  }

  /** Make sure the volume is mounted and healthy at its path (repairing a broken mount). */
  async ensure(key: string, spec: VolumeSpec): Promise<'mounted' | 'present' | 'repaired'> {
    const backend = this.backendOf(spec);
    if (backend === 'tree') {
      await this.checkSource(this.o.cvmfsRoot, 'the CVMFS root');
      return 'present';
    }
    const mp = this.pathOf(key, spec);
    const what = `repository ${volumeName(spec)}`;
    const src = path.join(this.o.cvmfsRoot, spec.repository!);
    const stacked = this.ourMounts().get(key) ?? 0;
    let repaired = false;
    if (stacked > 0) {
      // stalled: StalledError (the request fails within the deadline; the mount may answer again)
      if (stacked === 1 && (await this.statfs(mp, [mp], what)).get(mp) === 'ok') return 'present';
      // the host's repository first: while it is broken too, ours stays (and the next check finds it again)
      if (backend === 'host') await this.checkSource(src, what);
      this.o.log.warn({ key, mountpoint: mp, stacked }, 'repository mount is broken or stacked; mounting it again');
      this.unmount(key);
      repaired = true;
    }
    await fsp.mkdir(mp, { recursive: true, mode: 0o755 });
    if (backend === 'host') {
      if (!repaired) await this.checkSource(src, what);
      this.o.host.bind(src, mp, { readonly: true });
    } else {
      await this.clientMount(key, spec, mp);
    }
    return repaired ? 'repaired' : 'mounted';
  }

  /**
   * The source answers, within the deadline, and is a directory: a statfs
   * (what triggers an autofs automount of /cvmfs/<repo>; the FUSE client
   * answers it itself), then a stat, both in the probe helper. A repository
   * that autofs has yet to mount gets the mount timeout.
   */
  private async checkSource(src: string, what: string): Promise<void> {
    const first: FsProbeOp = { op: 'statfs', path: src };
    const stat: FsProbeOp = { op: 'stat', path: src };
    const automount = this.autofsTrigger(src);
    const probe = automount ? this.o.automount : this.o.probe;
    let r: Map<string, FsProbeResult>;
    try {
      r = await probe.run(src, [stat], what, first);
    } catch (e) {
      if (e instanceof StalledError && automount) {
        throw new StalledError(
          src,
          `${what}: ${src} was not mounted by autofs within ${seconds(probe.timeoutMs)} (mount-timeout): CVMFS automount or network stuck?`,
        );
      }
      if (e instanceof UnavailableError) throw e;
      throw new UnavailableError(`${what}: ${src} cannot be checked (${(e as Error).message})`, 'CVMFS_THIN_CVMFS_UNAVAILABLE', { cause: e });
    }
    const fail = (a: Extract<FsProbeResult, { ok: false }>) => {
      const why =
        a.code === 'ENOENT'
          ? 'does not exist (is CVMFS mounted there, and is the repository in CVMFS_REPOSITORIES or auto.cvmfs?)'
          : a.code === 'ENOTCONN'
            ? 'is broken on the host (Transport endpoint is not connected: the CVMFS client died; remount it on the host)'
            : `cannot be read (${a.code}: ${a.message})`;
      return new UnavailableError(`${what}: ${src} ${why}`, 'CVMFS_THIN_CVMFS_UNAVAILABLE');
    };
    const fs = CvmfsProbe.get(r, first);
    if (fs && !fs.ok) throw fail(fs);
    const st = CvmfsProbe.get(r, stat) ?? { ok: false, code: 'EIO', message: 'no answer' };
    if (!st.ok) throw fail(st);
    if (st.dir === false) throw new UnavailableError(`${what}: ${src} is not a directory`, 'CVMFS_THIN_CVMFS_UNAVAILABLE');
  }

  /** `mount -t cvmfs [-o config=<file>] <repo> <dir>` with the volume's client parameters. */
  private async clientMount(key: string, spec: VolumeSpec, mp: string): Promise<void> {
    const args = [...this.o.mountCommand.slice(1)];
    const params = clientParameters(spec);
    if (params.length > 0) {
      await fsp.mkdir(this.clientDir, { recursive: true, mode: 0o755 });
      const file = path.join(this.clientDir, `${key}.conf`);
      await writeFileAtomic(file, `# written by cvmfs-thin for volume ${key}\n${params.join('\n')}\n`, 0o644);
      args.push('-o', `config=${file}`);
    }
    args.push(spec.repository!, mp);
    const cmd = this.o.mountCommand[0]!;
    const r = await this.o.host.exec(cmd, args, { timeoutMs: this.o.mountTimeoutMs });
    if (r.code !== 0) {
      const msg = (r.stderr || r.stdout).trim().split('\n').slice(-3).join('; ') || `exit code ${r.code}`;
      throw new UnavailableError(`mounting ${spec.repository} with ${[cmd, ...args].join(' ')} failed: ${msg}`, 'CVMFS_THIN_MOUNT_FAILED');
    }
    if (!this.isMountPoint(mp)) {
      throw new UnavailableError(`mounting ${spec.repository}: ${cmd} succeeded but nothing is mounted on ${mp}`, 'CVMFS_THIN_MOUNT_FAILED');
    }
  }

  /** Unmount everything stacked on our mount point of `key` (never anything else). */
  unmount(key: string): void {
    if (key.includes('/') || key === '' || key === '.' || key === '..') return;
    this.unmountAll(path.join(this.mountsDir, key));
  }

  /** Unmount everything stacked on `p` (ours: a mount point of ours or a holder's target). */
  unmountAll(p: string): void {
    for (let i = 0; i < 16 && this.isMountPoint(p); i++) {
      try {
        this.o.host.umount(p);
      } catch (e) {
        // busy (a process has its cwd there) or broken: detach, the kernel frees it when unused
        this.o.log.debug({ mountpoint: p, err: (e as Error).message }, 'umount failed; detaching');
        this.o.host.umount(p, MNT_DETACH);
      }
    }
  }

  /** Bind the volume (or `source`, a CSI staging path) read-only on a holder's target `t`. */
  async bindTarget(spec: VolumeSpec, key: string, t: string, source: string | undefined): Promise<void> {
    const src = source ?? this.pathOf(key, spec);
    const tree = spec.repository === null;
    this.o.host.bind(src, t, { readonly: true, recursive: tree, propagation: tree ? 'rslave' : undefined });
  }

  /**
   * After a restart: unmount our mounts that no volume record needs (a kill -9
   * between mount and journal), repair stacked or broken ones, and remove
   * leftover empty mount points. Returns how many of ours are mounted.
   */
  async reconcile(volumes: ReadonlyMap<string, VolumeRecord>, repair: (rec: VolumeRecord) => Promise<void>): Promise<number> {
    const mounted = this.ourMounts();
    // all asked at once: a stalled repository costs one deadline, not one per mount
    const health = new Map(
      await Promise.all(
        [...mounted].map(async ([key, n]) => {
          const rec = volumes.get(key);
          const mp = rec && this.pathOf(key, rec.spec);
          return [key, !mp || n > 1 ? undefined : await this.health(mp, mp, `start-up check of volume ${key}`)] as const;
        }),
      ),
    );
    for (const [key, n] of mounted) {
      const rec = volumes.get(key);
      if (!rec) {
        this.o.log.warn({ key }, 'unmounting a repository mount left without holders');
        this.unmount(key);
        await this.removeDir(key);
      } else if (n > 1 || health.get(key) === 'broken') {
        await repair(rec);
      }
    }
    const entries = await fsp.readdir(this.mountsDir).catch(() => [] as string[]);
    for (const key of entries) if (!mounted.has(key) && !volumes.has(key)) await this.removeDir(key);
    return mounted.size;
  }

  /** Remove our empty mount point directory of `key` (after unmount). */
  async removeDir(key: string): Promise<void> {
    if (key.includes('/') || key === '' || key === '.' || key === '..') return;
    await fsp.rmdir(path.join(this.mountsDir, key)).catch(() => undefined);
    await fsp.rm(path.join(this.clientDir, `${key}.conf`), { force: true });
  }
}

/**
 * Backend mounts of repositories: what the mount manager does to make a
 * repository appear at `<state>/mounts/<key>` and to take it away again.
 * Everything on the host goes through the Host seam. Only mount points below
 * our own `mounts/` directory are ever unmounted.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { UnavailableError } from '../errors.js';
import { writeFileAtomic } from '../fsutil.js';
import type { Host, MountInfo } from '../host.js';
import { MNT_DETACH } from '../sys.js';
import { clientParameters, needsClient, type VolumeSpec } from './spec.js';
import type { VolumeRecord } from './store.js';
import type { Backend } from './types.js';

export const DEFAULT_MOUNT_COMMAND: readonly string[] = ['mount', '-t', 'cvmfs'];

export interface BackendOptions {
  stateDir: string;
  cvmfsRoot: string;
  backend: Backend;
  mountCommand: readonly string[];
  mountTimeoutMs: number;
  host: Host;
  log: Logger;
}

export type Health = 'ok' | 'broken' | 'absent';

function errCode(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException | undefined)?.code;
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

  /** ok, broken (ENOTCONN and friends: the FUSE process died), or absent. */
  health(p: string): Health {
    try {
      this.o.host.statfsType(p);
      return 'ok';
    } catch (e) {
      const c = errCode(e);
      if (c === 'ENOENT' || c === 'ENOTDIR') return 'absent';
      return 'broken';
    }
  }

  /** Make sure the volume is mounted and healthy at its path (repairing a broken mount). */
  async ensure(key: string, spec: VolumeSpec): Promise<'mounted' | 'present' | 'repaired'> {
    const backend = this.backendOf(spec);
    if (backend === 'tree') {
      await this.checkSource(this.o.cvmfsRoot, 'the CVMFS root');
      return 'present';
    }
    const mp = this.pathOf(key, spec);
    const stacked = this.ourMounts().get(key) ?? 0;
    let repaired = false;
    if (stacked > 0) {
      if (stacked === 1 && this.health(mp) === 'ok') return 'present';
      this.o.log.warn({ key, mountpoint: mp, stacked }, 'repository mount is broken or stacked; mounting it again');
      this.unmount(key);
      repaired = true;
    }
    await fsp.mkdir(mp, { recursive: true, mode: 0o755 });
    if (backend === 'host') {
      const src = path.join(this.o.cvmfsRoot, spec.repository!);
      await this.checkSource(src, `repository ${spec.repository}`);
      this.o.host.bind(src, mp, { readonly: true });
    } else {
      await this.clientMount(key, spec, mp);
    }
    return repaired ? 'repaired' : 'mounted';
  }

  /**
   * Stat the source (this is what triggers an autofs automount of
   * /cvmfs/<repo>), within the mount timeout.
   */
  private async checkSource(src: string, what: string): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new UnavailableError(`${what}: ${src} did not answer within ${this.o.mountTimeoutMs} ms (CVMFS automount or network stuck?)`, 'CVMFS_THIN_CVMFS_UNAVAILABLE')), this.o.mountTimeoutMs);
    });
    try {
      const st = await Promise.race([fsp.stat(path.join(src, '.')), timeout]);
      if (!st.isDirectory()) throw new UnavailableError(`${what}: ${src} is not a directory`, 'CVMFS_THIN_CVMFS_UNAVAILABLE');
      this.o.host.statfsType(src);
    } catch (e) {
      if (e instanceof UnavailableError) throw e;
      const c = errCode(e);
      const why =
        c === 'ENOENT'
          ? 'does not exist (is CVMFS mounted there, and is the repository in CVMFS_REPOSITORIES or auto.cvmfs?)'
          : c === 'ENOTCONN'
            ? 'is broken on the host (Transport endpoint is not connected: the CVMFS client died; remount it on the host)'
            : `cannot be read (${(e as Error).message})`;
      throw new UnavailableError(`${what}: ${src} ${why}`, 'CVMFS_THIN_CVMFS_UNAVAILABLE', { cause: e });
    } finally {
      clearTimeout(timer);
    }
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

  /**
   * After a restart: unmount our mounts that no volume record needs (a kill -9
   * between mount and journal), repair stacked or broken ones, and remove
   * leftover empty mount points. Returns how many of ours are mounted.
   */
  async reconcile(volumes: ReadonlyMap<string, VolumeRecord>, repair: (rec: VolumeRecord) => Promise<void>): Promise<number> {
    const mounted = this.ourMounts();
    for (const [key, n] of mounted) {
      const rec = volumes.get(key);
      if (!rec) {
        this.o.log.warn({ key }, 'unmounting a repository mount left without holders');
        this.unmount(key);
        await this.removeDir(key);
      } else if (n > 1 || this.health(this.pathOf(key, rec.spec)) === 'broken') {
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

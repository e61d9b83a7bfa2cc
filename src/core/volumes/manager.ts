/**
 * The repository mount manager shared by the Docker volume plugin, the CSI
 * node plugin and the FlexVolume driver.
 *
 * A volume (a repository, maybe with a tag/hash/date/client settings, or the
 * whole /cvmfs tree) is mounted once per node at `<state>/mounts/<key>` and
 * held by a *set* of holder IDs (a Docker mount ID, a CSI target or staging
 * path, a FlexVolume directory). Adding a holder twice is a no-op; the backend
 * mount goes after the last holder (after `idleUnmountMs`). Holders are
 * durable (journal), mounts are read from the mount table: after a restart or
 * a kill -9, orphan mounts of ours are unmounted, stacked ones reduced to one,
 * broken ones (ENOTCONN) mounted again, with the targets bound from them
 * (at start, every `check-interval`, and whenever a request finds one:
 * health.ts). Nothing outside `<state>/mounts/` and the targets it bound
 * itself is ever unmounted or deleted.
 *
 * This module keeps the holders (acquire/release, publish/unpublish, Docker
 * definitions), the locks and the idle unmounts; backend.ts mounts and binds,
 * health.ts checks and repairs. CVMFS is asked everything through one
 * CvmfsProbe (backend.ts): a stalled repository fails the requests that need
 * it within `cvmfs-timeout` (CVMFS_THIN_CVMFS_STALLED) while every other
 * request is answered.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { AlreadyExistsError, FailedPreconditionError, InvalidArgumentError, UnavailableError } from '../errors/errors.js';
import { Gate } from '../util/gate.js';
import { journalMetrics } from '../state/journal.js';
import { KeyedMutex } from '../util/keyed-mutex.js';
import { type Metrics, noMetrics } from '../telemetry/metrics.js';
import { CvmfsProbe } from '../host/probe.js';
import { Backends, DEFAULT_MOUNT_COMMAND, type Health } from './backend.js';
import { HealthCheck } from './health.js';
import { DEFAULT_CLIENT_CONFIG_KEYS, parseAllowed, RepositoryAllowlist, type VolumeSpec, volumeKey } from './spec.js';
import { type StoredHolder, type VolumeRecord, VolumeStore } from './store.js';
import { type Definition, type Holder, type MountManagerOptions, recordGauges, type VolumeState } from './types.js';

interface HolderRequest {
  id: string;
  readonly?: boolean | undefined;
  meta?: Record<string, string> | undefined;
}

interface PublishRequest {
  readonly?: boolean | undefined;
  meta?: Record<string, string> | undefined;
  /** Bind from here instead of the volume's path (a CSI staging path). */
  source?: string | undefined;
}

const sameMeta = (a: Record<string, string> | undefined, b: Record<string, string> | undefined) => JSON.stringify(a ?? {}) === JSON.stringify(b ?? {});

export class MountManager {
  private readonly mutex = new KeyedMutex();
  private readonly idleTimers = new Map<string, NodeJS.Timeout>();
  private checkTimer: NodeJS.Timeout | undefined;
  /** Every public operation runs inside the gate: close() waits for them. */
  private readonly gate = new Gate();
  private closed = false;
  private closing: Promise<void> | undefined;
  private failed: Error | null = null;
  readonly allowlist: RepositoryAllowlist;
  readonly backends: Backends;
  private readonly log: Logger;
  readonly metrics: Metrics;
  readonly daemon: string;
  /** Every question to CVMFS, with the `cvmfs-timeout` deadline, off the process (stack/probe.ts). */
  readonly probe: CvmfsProbe;
  /** Health check and repair of mounts and targets (health.ts). */
  private readonly health: HealthCheck;

  private constructor(
    private readonly o: MountManagerOptions,
    private readonly store: VolumeStore,
  ) {
    this.allowlist = RepositoryAllowlist.from(o.allow);
    this.log = o.log;
    this.metrics = o.metrics ?? noMetrics;
    this.daemon = o.daemon ?? 'volumes';
    const onStall = () => this.metrics.inc('cvmfs_stalls_total', { daemon: this.daemon });
    const mountTimeoutMs = o.mountTimeoutMs ?? 100_000;
    this.probe = new CvmfsProbe({ host: o.host, log: o.log, timeoutMs: o.cvmfsTimeoutMs, onStall });
    this.backends = new Backends({
      stateDir: o.stateDir,
      cvmfsRoot: path.resolve(o.cvmfsRoot),
      backend: o.backend,
      mountCommand: o.mountCommand ?? DEFAULT_MOUNT_COMMAND,
      mountTimeoutMs,
      probe: this.probe,
      automount: new CvmfsProbe({ host: o.host, log: o.log, timeoutMs: mountTimeoutMs, onStall }),
      host: o.host,
      log: o.log,
    });
    this.health = new HealthCheck({
      store,
      backends: this.backends,
      log: o.log,
      metrics: this.metrics,
      daemon: this.daemon,
      locked: (keys, fn) => this.locked(keys, fn),
    });
  }

  static async open(o: MountManagerOptions): Promise<MountManager> {
    if (!path.isAbsolute(o.stateDir)) throw new InvalidArgumentError(`state directory ${o.stateDir} must be an absolute path`, 'CVMFS_THIN_BAD_FLAG');
    if (!path.isAbsolute(o.cvmfsRoot)) throw new InvalidArgumentError(`CVMFS root ${o.cvmfsRoot} must be an absolute path`, 'CVMFS_THIN_BAD_FLAG');
    if (o.backend === 'client' && (o.mountCommand?.length ?? 1) === 0)
      throw new InvalidArgumentError('the client backend needs a mount command', 'CVMFS_THIN_BAD_FLAG');
    let m: MountManager | undefined;
    const store = await VolumeStore.open(path.join(o.stateDir, 'metadata'), (e) => m?.fatal(e), o.metrics ? journalMetrics(o.metrics, 'volumes') : undefined);
    m = new MountManager(o, store);
    await fsp.mkdir(m.backends.mountsDir, { recursive: true, mode: 0o755 });
    await m.health.reconcile();
    m.metrics.onCollect(() => recordGauges(m.metrics, m.daemon, m.list()));
    const every = o.checkIntervalMs ?? 30_000;
    if (every > 0) {
      m.checkTimer = setInterval(() => {
        // one check at a time (a stalled repository makes one take up to cvmfs-timeout)
        if (!m.health.checking) void m.check().catch((e: unknown) => m.log.error({ err: e }, 'health check failed'));
      }, every);
      m.checkTimer.unref();
    }
    return m;
  }

  private fatal(e: Error): void {
    this.failed = e;
    this.log.error({ err: e }, 'volume state cannot be written; refusing changes until restarted');
  }

  private writable(): void {
    if (this.closed) throw new UnavailableError('the volume manager is shutting down', 'CVMFS_THIN_SHUTTING_DOWN');
    if (this.failed) throw new UnavailableError(`volume state cannot be written: ${this.failed.message}`, 'CVMFS_THIN_STATE_UNWRITABLE');
  }

  /** Run `fn` inside the gate (close() waits for it) holding the named locks. */
  private locked<T>(keys: string[], fn: () => Promise<T>): Promise<T> {
    return this.gate.shared(async () => {
      const release = await this.mutex.acquire(keys);
      try {
        return await fn();
      } finally {
        release();
      }
    });
  }

  /** A Docker-style name (`repo`, `repo@tag`, `repo#hash`) plus options, allowed here. */
  parse(name: string, opts: Record<string, string> = {}): VolumeSpec {
    return parseAllowed(this.allowlist, this.o.clientConfigKeys ?? DEFAULT_CLIENT_CONFIG_KEYS, name, opts);
  }

  /** CSI/FlexVolume attributes: `repository` may be absent (the whole tree). */
  specFrom(repository: string | undefined, opts: Record<string, string> = {}): VolumeSpec {
    return parseAllowed(this.allowlist, this.o.clientConfigKeys ?? DEFAULT_CLIENT_CONFIG_KEYS, repository ?? '', opts, true);
  }

  pathOf(spec: VolumeSpec): string {
    return this.backends.pathOf(volumeKey(spec), spec);
  }

  private state(rec: VolumeRecord, mounted?: Map<string, number>): VolumeState {
    const isTree = rec.backend === 'tree';
    return {
      key: rec.key,
      spec: rec.spec,
      backend: rec.backend,
      path: this.backends.pathOf(rec.key, rec.spec),
      holders: rec.holders.map(({ createdDir: _c, source: _s, ...h }) => h),
      mounted: isTree || (mounted ?? this.backends.ourMounts()).has(rec.key),
    };
  }

  private emptyRecord(spec: VolumeSpec): VolumeRecord {
    return { key: volumeKey(spec), spec, backend: this.backends.backendOf(spec), holders: [] };
  }

  /** Ensure the backend mount and add a holder (idempotent per id). */
  async acquire(spec: VolumeSpec, h: HolderRequest): Promise<VolumeState> {
    this.allowlist.check(spec);
    const key = volumeKey(spec);
    return this.locked([key], async () => {
      const other = this.store.keyOfHolder(h.id);
      if (other !== undefined && other !== key) throw new AlreadyExistsError(`${h.id} already holds volume ${other}`, 'CVMFS_THIN_TARGET_BUSY');
      return await this.acquireLocked(spec, key, h);
    });
  }

  private async acquireLocked(spec: VolumeSpec, key: string, h: HolderRequest, extra: Partial<StoredHolder> = {}): Promise<VolumeState> {
    this.writable();
    this.cancelIdle(key);
    const rec = structuredClone(this.store.volumes.get(key) ?? this.emptyRecord(spec));
    const how = await this.health.ensure(key, spec);
    if (how !== 'present') this.log.info({ key, backend: rec.backend, how }, 'repository mounted');
    if (!rec.holders.some((x) => x.id === h.id)) {
      rec.holders.push({ id: h.id, readonly: h.readonly ?? true, since: new Date().toISOString(), meta: h.meta, ...extra });
      try {
        await this.store.putVolume(rec);
      } catch (e) {
        if (rec.holders.length === 1) await this.idle(key);
        throw e;
      }
    }
    return this.state(this.store.volumes.get(key)!);
  }

  /** Drop a holder; the backend mount goes after the last one. Unknown ids are fine. */
  async release(holderId: string): Promise<boolean> {
    const key = this.store.keyOfHolder(holderId);
    if (key === undefined) return false;
    return this.locked([key], async () => {
      return await this.releaseLocked(key, holderId);
    });
  }

  private async releaseLocked(key: string, holderId: string): Promise<boolean> {
    const cur = this.store.volumes.get(key);
    if (!cur?.holders.some((x) => x.id === holderId)) return false;
    this.writable();
    const rec = structuredClone(cur);
    rec.holders = rec.holders.filter((x) => x.id !== holderId);
    await this.store.putVolume(rec);
    if (rec.holders.length === 0) await this.idle(key);
    return true;
  }

  /** Bind the volume on `target` for a holder named by the target (CSI, FlexVolume). */
  async publish(spec: VolumeSpec, target: string, p: PublishRequest = {}): Promise<VolumeState> {
    if (!path.isAbsolute(target)) throw new InvalidArgumentError(`target path ${JSON.stringify(target)} must be absolute`, 'CVMFS_THIN_BAD_TARGET');
    const t = path.resolve(target);
    if (t === '/' || t.startsWith(`${this.o.stateDir}/`) || t === this.o.stateDir)
      throw new InvalidArgumentError(`target path ${t} is not allowed`, 'CVMFS_THIN_BAD_TARGET');
    this.allowlist.check(spec);
    const key = volumeKey(spec);
    return this.locked([key, `target:${t}`], async () => {
      const otherKey = this.store.keyOfHolder(t);
      const existing = otherKey !== undefined ? this.store.volumes.get(otherKey)?.holders.find((x) => x.id === t) : undefined;
      if (existing) {
        const same = otherKey === key && existing.readonly === (p.readonly ?? true) && sameMeta(existing.meta, p.meta) && existing.source === p.source;
        if (!same) throw new AlreadyExistsError(`${t} is already published with another volume or other options (${otherKey})`, 'CVMFS_THIN_TARGET_BUSY');
        if (!this.backends.isMountPoint(t)) {
          // after a reboot or a lost mount: same request, so mount again
          if (p.source === undefined) await this.health.ensure(key, spec);
          await this.backends.bindTarget(spec, key, t, p.source);
        }
        return this.state(this.store.volumes.get(key)!);
      }
      if (p.source !== undefined && !(await this.isPublishedSource(p.source))) {
        throw new FailedPreconditionError(`staging path ${p.source} is not staged`, 'CVMFS_THIN_NOT_STAGED');
      }
      if (this.backends.isMountPoint(t)) throw new AlreadyExistsError(`${t} is already a mount point of something else`, 'CVMFS_THIN_TARGET_BUSY');
      let createdDir = false;
      try {
        const st = await fsp.lstat(t);
        if (!st.isDirectory()) throw new InvalidArgumentError(`target path ${t} exists and is not a directory`, 'CVMFS_THIN_BAD_TARGET');
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
        await fsp.mkdir(t, { recursive: true, mode: 0o750 });
        createdDir = true;
      }
      // the holder is durable before the bind: a crash in between leaves a holder kubelet will unpublish
      const state = await this.acquireLocked(spec, key, { id: t, readonly: p.readonly, meta: p.meta }, { target: t, createdDir, source: p.source });
      try {
        await this.backends.bindTarget(spec, key, t, p.source);
      } catch (e) {
        await this.releaseLocked(key, t).catch(() => undefined);
        if (createdDir) await fsp.rmdir(t).catch(() => undefined);
        throw e;
      }
      return state;
    });
  }

  private async isPublishedSource(src: string): Promise<boolean> {
    const k = this.store.keyOfHolder(path.resolve(src));
    return k !== undefined && this.backends.isMountPoint(src);
  }

  /** Undo publish(): unmount the target, remove the dir if we made it, release. Unknown targets are left alone. */
  async unpublish(target: string): Promise<boolean> {
    const t = path.resolve(target);
    const key = this.store.keyOfHolder(t);
    if (key === undefined) return false;
    return this.locked([key, `target:${t}`], async () => {
      const h = this.store.volumes.get(key)?.holders.find((x) => x.id === t);
      if (!h) return false;
      this.backends.unmountAll(t);
      if (h.createdDir)
        await fsp.rmdir(t).catch((e: NodeJS.ErrnoException) => this.log.warn({ target: t, err: e.message }, 'could not remove target directory'));
      return await this.releaseLocked(key, t);
    });
  }

  holder(id: string): { key: string; holder: Holder } | undefined {
    const key = this.store.keyOfHolder(id);
    const h = key === undefined ? undefined : this.store.volumes.get(key)?.holders.find((x) => x.id === id);
    if (!h || key === undefined) return undefined;
    const { createdDir: _c, source: _s, ...pub } = h;
    return { key, holder: pub };
  }

  get(key: string): VolumeState | undefined {
    const r = this.store.volumes.get(key);
    return r ? this.state(r) : undefined;
  }

  list(): VolumeState[] {
    const mounted = this.backends.ourMounts();
    return [...this.store.volumes.values()].map((r) => this.state(r, mounted));
  }

  async define(name: string, spec: VolumeSpec, opts: Record<string, string>): Promise<Definition> {
    this.writable();
    const d: Definition = { name, spec, opts, createdAt: new Date().toISOString() };
    const prev = this.store.definitions.get(name);
    if (prev && JSON.stringify(prev.spec) === JSON.stringify(spec)) return prev;
    if (prev) throw new AlreadyExistsError(`volume ${name} exists with other options (${JSON.stringify(prev.opts)})`, 'CVMFS_THIN_VOLUME_EXISTS');
    await this.store.putDefinition(d);
    return d;
  }

  async undefine(name: string): Promise<boolean> {
    if (!this.store.definitions.has(name)) return false;
    this.writable();
    await this.store.deleteDefinition(name);
    return true;
  }

  definition(name: string): Definition | undefined {
    return this.store.definitions.get(name);
  }

  definitions(): Definition[] {
    return [...this.store.definitions.values()];
  }

  /** Health of a path we bound or of a volume's mount, within the deadline (health.ts). Never throws. */
  pathHealth(p: string): Promise<Health> {
    return this.health.pathHealth(p);
  }

  /** Health check (every `check-interval`): repairs broken mounts and targets (health.ts). Returns the keys repaired. */
  check(): Promise<string[]> {
    return this.health.check();
  }

  private cancelIdle(key: string): void {
    const t = this.idleTimers.get(key);
    if (t) clearTimeout(t);
    this.idleTimers.delete(key);
  }

  /** The last holder left (the key's lock is held): unmount now, or after the idle delay. */
  private async idle(key: string): Promise<void> {
    this.cancelIdle(key);
    const ms = this.o.idleUnmountMs ?? 0;
    if (ms <= 0) return this.unmountIdle(key);
    const t = setTimeout(() => {
      this.idleTimers.delete(key);
      void this.locked([key], () => this.unmountIdle(key));
    }, ms);
    t.unref();
    this.idleTimers.set(key, t);
  }

  private async unmountIdle(key: string): Promise<void> {
    if (this.store.volumes.has(key) || this.idleTimers.has(key)) return;
    try {
      this.backends.unmount(key);
      await this.backends.removeDir(key);
      this.log.info({ key }, 'repository unmounted (no holders left)');
    } catch (e) {
      this.log.error({ key, err: (e as Error).message }, 'unmount failed');
    }
  }

  /** Timers stop, running operations finish, the journal closes; mounts stay. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      if (this.checkTimer) clearInterval(this.checkTimer);
      for (const t of this.idleTimers.values()) clearTimeout(t);
      this.idleTimers.clear();
      this.closed = true;
      await this.gate.drain();
      await this.store.close();
    })();
    return this.closing;
  }
}

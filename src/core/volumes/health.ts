/**
 * Health check and repair of the mount manager's volumes (manager.ts): each
 * volume's backend mount and the targets bound from it are asked (statfs,
 * within `cvmfs-timeout`, through the Backends' CvmfsProbe). A broken
 * (ENOTCONN) mount is mounted again and the targets bound from it are bound
 * again — at start (reconcile), every `check-interval` (check), and whenever
 * a request finds one (ensure). A stalled repository is left alone: it may
 * answer again, and the requests that need it fail within the deadline
 * meanwhile (CVMFS_THIN_CVMFS_STALLED, counted in cvmfs_unavailable_total).
 */
import path from 'node:path';
import type { Logger } from 'pino';
import { toThinError } from '../errors/errors.js';
import type { Metrics } from '../telemetry/metrics.js';
import type { Backends, Health } from './backend.js';
import type { VolumeSpec } from './spec.js';
import type { VolumeRecord, VolumeStore } from './store.js';

/** Failures that mean a repository did not answer (cvmfs_unavailable_total). */
const CVMFS_UNAVAILABLE = new Set(['CVMFS_THIN_CVMFS_STALLED', 'CVMFS_THIN_CVMFS_UNAVAILABLE', 'CVMFS_THIN_LAYER_UNAVAILABLE']);

/** What the health check shares with the mount manager. */
interface HealthCheckOptions {
  store: VolumeStore;
  backends: Backends;
  log: Logger;
  metrics: Metrics;
  daemon: string;
  /** The manager's: run `fn` inside its gate holding the named locks. */
  locked<T>(keys: string[], fn: () => Promise<T>): Promise<T>;
}

export class HealthCheck {
  /** The check running now, if any (one at a time). */
  checking: Promise<string[]> | undefined;
  /** Volumes whose repair failed after their mount was taken away: the next check tries again. */
  private readonly repairFailed = new Set<string>();
  private readonly store: VolumeStore;
  private readonly backends: Backends;
  private readonly log: Logger;
  private readonly metrics: Metrics;
  private readonly daemon: string;

  constructor(private readonly o: HealthCheckOptions) {
    this.store = o.store;
    this.backends = o.backends;
    this.log = o.log;
    this.metrics = o.metrics;
    this.daemon = o.daemon;
  }

  private locked<T>(keys: string[], fn: () => Promise<T>): Promise<T> {
    return this.o.locked(keys, fn);
  }

  /**
   * The backend mount of `key` is there and healthy, mounted (again) if not;
   * after a repair the targets bound from the broken mount are bound again.
   * The key's lock is held.
   */
  async ensure(key: string, spec: VolumeSpec): Promise<'mounted' | 'present' | 'repaired'> {
    let how: 'mounted' | 'present' | 'repaired';
    try {
      how = await this.backends.ensure(key, spec);
    } catch (e) {
      if (CVMFS_UNAVAILABLE.has(toThinError(e).code)) this.metrics.inc('cvmfs_unavailable_total', { daemon: this.daemon });
      throw e;
    }
    const rec = this.store.volumes.get(key);
    if (how !== 'present' && rec) {
      // mounted again under holders (a repair here, or after one that failed, a reboot, a lost mount): targets still on the old mount are bound again
      const targets = await this.repairTargets(rec);
      if (how === 'repaired' || this.repairFailed.delete(key) || targets > 0) {
        this.metrics.inc('volume_repairs_total', { daemon: this.daemon });
        this.log.warn({ key, how, targets }, 'broken repository mount repaired');
      }
    }
    return how;
  }

  /**
   * Health of a path we bound (a target or staging path) or of a volume's
   * mount, asked within the deadline (under the volume's key: one probe per
   * repository at a time). Never throws.
   */
  async pathHealth(p: string): Promise<Health> {
    const t = path.resolve(p);
    const key = this.store.keyOfHolder(t);
    const rec = key === undefined ? undefined : this.store.volumes.get(key);
    return this.backends.health(t, rec ? this.backends.pathOf(rec.key, rec.spec) : t, `volume check of ${t}`);
  }

  /**
   * Health check (every `check-interval`): each volume's mount and the
   * targets bound from it are asked (statfs, within the deadline, all
   * volumes at once). A broken (ENOTCONN) mount is mounted again and its
   * targets bound again; a broken target of a healthy mount is bound again;
   * a stalled one is left alone (it may answer again; requests that need it
   * fail meanwhile). Returns the keys repaired.
   */
  check(): Promise<string[]> {
    const run = (async () => {
      const recs = [...this.store.volumes.values()].filter((r) => r.backend !== 'tree');
      const mounted = this.backends.ourMounts();
      const found = await Promise.all(
        recs.map(async (rec) => {
          const mp = this.backends.pathOf(rec.key, rec.spec);
          if (!mounted.has(rec.key)) return { rec, mp: this.repairFailed.has(rec.key) ? ('broken' as Health) : ('ok' as Health), targets: [] as string[] };
          const targets = rec.holders.flatMap((h) => (h.target ? [h.target] : []));
          const h = await this.backends.healthOf(mp, targets, `health check of volume ${rec.key}`, mp);
          return { rec, mp: h.get(mp)!, targets: targets.filter((t) => h.get(t) === 'broken') };
        }),
      );
      const repaired: string[] = [];
      for (const f of found) {
        if (f.mp === 'ok' && f.targets.length === 0) continue;
        if (f.mp === 'stalled' || f.mp === 'unknown') continue;
        await this.locked([f.rec.key], async () => {
          // the holders may have changed while waiting: repair what is current
          const cur = this.store.volumes.get(f.rec.key);
          if (!cur) return;
          // a broken mount: mounted again with its targets; a healthy one: its broken targets bound again
          if ((await this.ensure(cur.key, cur.spec)) !== 'present') return void repaired.push(cur.key);
          const targets = await this.repairTargets(cur);
          if (targets === 0) return;
          this.metrics.inc('volume_repairs_total', { daemon: this.daemon });
          repaired.push(cur.key);
        }).catch((e: unknown) => {
          if (!this.backends.ourMounts().has(f.rec.key) && this.store.volumes.has(f.rec.key)) this.repairFailed.add(f.rec.key);
          this.log.error({ key: f.rec.key, err: (e as Error).message }, 'broken repository mount could not be repaired');
        });
      }
      return repaired;
    })();
    this.checking = run;
    return run.finally(() => {
      if (this.checking === run) this.checking = undefined;
    });
  }

  /**
   * Bind again the targets of `rec` that are broken (asked in one probe):
   * those bound from the volume first, then those bound from a staging path
   * (which is one of the former). Returns how many were bound again.
   */
  private async repairTargets(rec: VolumeRecord): Promise<number> {
    const holders = rec.holders.filter((h) => h.target);
    if (holders.length === 0) return 0;
    const mp = this.backends.pathOf(rec.key, rec.spec);
    const health = await this.backends.healthOf(
      mp,
      holders.map((h) => h.target!),
      `health check of the targets of volume ${rec.key}`,
    );
    let n = 0;
    for (const h of [...holders.filter((x) => x.source === undefined), ...holders.filter((x) => x.source !== undefined)]) {
      if (health.get(h.target!) !== 'broken') continue;
      try {
        this.backends.unmountAll(h.target!);
        await this.backends.bindTarget(rec.spec, rec.key, h.target!, h.source);
        n++;
        this.log.warn({ key: rec.key, target: h.target }, 'target on a broken mount bound again');
      } catch (e) {
        this.log.error({ key: rec.key, target: h.target, err: (e as Error).message }, 'target on a broken mount could not be bound again');
      }
    }
    return n;
  }

  private async repair(rec: VolumeRecord): Promise<void> {
    await this.ensure(rec.key, rec.spec);
  }

  /** After a restart: our mount points against the holders. */
  async reconcile(): Promise<void> {
    const mounted = await this.backends.reconcile(this.store.volumes, (rec) =>
      this.repair(rec).catch((e: unknown) => this.log.error({ key: rec.key, err: (e as Error).message }, 'repair at start failed')),
    );
    this.log.info({ volumes: this.store.volumes.size, mounted, definitions: this.store.definitions.size }, 'volume state recovered');
  }
}

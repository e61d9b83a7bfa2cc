/**
 * The snapshotter: containerd's Snapshots semantics (snapshots/overlay +
 * snapshots/storage) over local writable layers, plus CVMFS thin images and
 * remote layers (through the shared stack core, core/stack). Protocol-free:
 * the gRPC edge (service.ts) maps requests and errors. Host side effects go
 * through the injected `Host`. Every mutating method either fully succeeds or
 * leaves no state behind (records are written last). This is the overlay
 * part (directories, mounts, CVMFS layers, locks); the records' semantics
 * are storage.ts, as containerd's snapshots/overlay sits over
 * snapshots/storage.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { AlreadyExistsError, FailedPreconditionError, InvalidArgumentError, UnavailableError } from '../core/errors/errors.js';
import { diskUsage, type Usage } from '../core/fs/fsutil.js';
import { Gate } from '../core/util/gate.js';
import { KeyedMutex } from '../core/util/keyed-mutex.js';
import { checkOverlayPath, computeMounts, type Mount } from '../core/stack/mounts.js';
import { type ChainLower, chainLowers, type ChainNode, type DirOwner, LayerStack, linkName } from '../core/stack/index.js';
import type { BrokenOverlay, MountMonitor } from '../core/stack/mount-health.js';
import type { Starts } from '../core/stack/starts.js';
import { hotOptions } from '../core/stack/hot.js';
import { type HeldLock, lockRoot } from '../core/state/lock.js';
import { journalMetrics } from '../core/state/journal.js';
import { type Metrics, noMetrics } from '../core/telemetry/metrics.js';
import { checkUpdatePaths, LABEL_SNAPSHOT_REF, validateLabels } from './labels.js';
import { chainNode, MetaStore, type SnapshotRecord } from './metastore.js';
import type { Info, SnapshotterOptions } from './options.js';
import { snapshotterMonitor, startWatching } from './health.js';
import { makeSnapshotDirs, noteOldSnapshotter } from './dirs.js';
import { serveRemote } from './remote.js';
import { recoverData, Removals } from './removal.js';
import { openStarts } from './starts.js';
import { SnapshotStorage } from './storage.js';

export { LABEL_LAYER_DIGEST, LABEL_SNAPSHOT_REF } from './labels.js';

export type { Info } from './options.js';

export class Snapshotter {
  private readonly storage: SnapshotStorage;
  private readonly locks = new KeyedMutex();
  private readonly snapshotsDir: string;
  private readonly workDirs: string;
  private readonly indexOff: boolean;
  private readonly thinImages: boolean;
  private readonly remoteLayers: boolean;
  private readonly log: Logger;
  private readonly removals: Removals;
  private readonly metrics: Metrics;
  private readonly monitor: MountMonitor;
  private closed = false;

  private constructor(
    opts: SnapshotterOptions,
    private readonly store: MetaStore,
    private readonly stack: LayerStack,
    private readonly lock: HeldLock,
    private readonly gate: Gate,
    private readonly starts: Starts,
  ) {
    this.log = opts.log;
    this.indexOff = opts.host.overlayIndexParam();
    this.storage = new SnapshotStorage(store);
    this.snapshotsDir = path.join(opts.root, 'snapshots');
    this.workDirs = path.join(opts.root, 'work');
    this.thinImages = opts.thinImages ?? true;
    this.remoteLayers = opts.remoteLayers ?? true;
    this.metrics = opts.metrics ?? noMetrics;
    this.removals = new Removals(opts.host, stack.links, (id) => [this.fsDir(id), this.workDir(id)], opts.log);
    this.monitor = snapshotterMonitor({ root: opts.root, stack, store, log: opts.log, metrics: opts.metrics, intervalMs: opts.checkIntervalMs });
  }

  static async open(opts: SnapshotterOptions): Promise<Snapshotter> {
    const root = path.resolve(opts.root);
    checkOverlayPath(root, 'root directory');
    // one daemon per root, before anything in it is opened; an error below releases it and removes nothing
    const lock = lockRoot(root, opts.host, { daemon: 'cvmfs-thin snapshotter', address: opts.address });
    try {
      for (const d of ['snapshots', 'work']) await fsp.mkdir(path.join(root, d), { recursive: true, mode: 0o700 });
      await fsp.chmod(root, 0o700);
      noteOldSnapshotter(root, opts.log);
      // mutations run in the gate's shared sections: more than one at a time means other clients wait
      const gate = new Gate();
      const store = await MetaStore.open(
        path.join(root, 'metadata'),
        opts.onFatal ?? (() => undefined),
        journalMetrics(opts.metrics ?? noMetrics, 'snapshotter'),
        () => gate.running > 1,
      );
      const stack = await LayerStack.open({
        root,
        location: opts.location,
        host: opts.host,
        log: opts.log,
        factsFile: path.join(root, 'metadata', 'layer-facts.json'),
        alloc: () => store.allocId(),
        cvmfsTimeoutMs: opts.cvmfsTimeoutMs,
        onStall: () => opts.metrics?.inc('cvmfs_stalls_total', { daemon: 'snapshotter' }),
        hot: opts.thinImages === false ? undefined : hotOptions(opts.starts, opts.cvmfsTimeoutMs),
      });
      const starts = await openStarts(opts, root, store, stack);
      const s = new Snapshotter({ ...opts, root }, store, stack, lock, gate, starts);
      await recoverData(store, stack.links, [s.snapshotsDir, s.workDirs], opts.log);
      s.metrics.onCollect(() => {
        for (const [kind, source, n] of store.counts()) s.metrics.set('snapshots', { kind, source }, n);
      });
      startWatching(s.monitor, stack, opts.log);
      return s;
    } catch (e) {
      lock.release();
      throw e;
    }
  }

  /** Running containers on a dead or stalled CVMFS lower, found now (also every check-interval). */
  checkMounts(): Promise<BrokenOverlay[]> {
    return this.monitor.check();
  }

  /** Readiness: null when the repository's CVMFS mount answers within the deadline, else why not. */
  cvmfsReady(): Promise<string | null> {
    return this.stack.cvmfsReady();
  }

  /** The store is open (health: false once close() began). */
  get isOpen(): boolean {
    return !this.closed;
  }

  private check(): void {
    if (this.closed) throw new UnavailableError('snapshotter is shutting down', 'CVMFS_THIN_SHUTTING_DOWN');
  }

  /** A snapshot's own directory (overlay upperdir, or the bind source). */
  private fsDir(id: number): string {
    return path.join(this.snapshotsDir, String(id));
  }

  /** An active snapshot's overlay workdir (kept apart: one mkdir less than snapshots/<id>/{fs,work}). */
  private workDir(id: number): string {
    return path.join(this.workDirs, String(id));
  }

  private readonly node = (n: string): ChainNode | undefined => chainNode(n, this.store.get(n));

  /** The mounts of `r`, after its CVMFS lowers answered (with their owners). */
  private async mountsFor(
    r: SnapshotRecord,
    lowers: ChainLower[] = chainLowers(this.node, r.parent),
  ): Promise<{ mounts: Mount[]; owners: Map<string, DirOwner> }> {
    const owners = await this.stack.checkAvailable(
      lowers.filter((l) => l.external).map((l) => l.real),
      `snapshot ${r.name}`,
    );
    // a snapshot's link to its own directory is made when it first serves as a lower (once per process)
    for (const l of lowers) this.stack.links.ensure(l.link, l.real);
    const mounts = computeMounts({
      readonly: r.kind === 'view',
      fs: this.fsDir(r.id),
      work: r.kind === 'active' ? this.workDir(r.id) : undefined,
      lowers: lowers.map((l) => ({ overlay: this.stack.links.path(l.link), real: l.real })),
      indexOff: this.indexOff,
    });
    return { mounts, owners };
  }

  async prepare(key: string, parent: string, labels: Record<string, string>): Promise<Mount[]> {
    return this.create('active', key, parent, labels);
  }

  async view(key: string, parent: string, labels: Record<string, string>): Promise<Mount[]> {
    return this.create('view', key, parent, labels);
  }

  private async create(kind: 'active' | 'view', key: string, parent: string, labels: Record<string, string>): Promise<Mount[]> {
    this.check();
    if (key === '') throw new InvalidArgumentError('snapshot key must not be empty', 'CVMFS_THIN_BAD_REQUEST');
    validateLabels(labels, `snapshot ${key}`);
    const remote = kind === 'active' && this.remoteLayers && labels[LABEL_SNAPSHOT_REF];
    // the parent is held shared (it cannot be removed meanwhile; siblings are created at once);
    // serving a remote layer commits the target under the parent: that path holds both alone
    const [mine, theirs] = remote ? [[key, parent, remote], []] : [[key], [parent]];
    return this.gate.shared(() =>
      this.locks.with(
        mine,
        async () => {
          this.storage.checkNew(key, parent);
          if (remote) {
            const target = await serveRemote({ store: this.store, stack: this.stack, clock: this.storage.clock, log: this.log }, parent, labels);
            this.metrics.inc('remote_layers_total', { result: target ? 'served' : 'fallback' });
            if (target) throw new AlreadyExistsError(`target snapshot ${JSON.stringify(target)}: already exists`, 'CVMFS_THIN_REMOTE_SNAPSHOT');
          }
          const id = this.store.allocId();
          const links: Record<string, string> = {};
          const fs = this.fsDir(id);
          const rec = this.storage.newRecord(kind, key, parent, labels, id, links);
          try {
            // the mounts (and the CVMFS availability check) first, the record last: a failure leaves nothing
            const t0 = performance.now();
            const lowers = chainLowers(this.node, parent);
            const { mounts, owners } = await this.mountsFor(rec, lowers);
            const t1 = performance.now();
            // the link to the new directory is owned now, made when a child first needs it (mountsFor)
            const own = kind === 'active' ? linkName(id) : undefined;
            if (own) links[own] = fs;
            const top = lowers[0];
            // like containerd's overlay: the new upper dir takes the owner of the top lower
            // (on CVMFS: as the availability check saw it, never asked again here)
            const owner = top && owners.get(top.real);
            await makeSnapshotDirs(this.stack.host, {
              fs,
              work: own ? this.workDir(id) : undefined,
              owner,
              statTop: top && !owner ? top.real : undefined,
              localTop: Boolean(top && !top.external && top.real.startsWith(this.snapshotsDir)),
              concurrent: this.gate.running > 1,
            });
            const t2 = performance.now();
            await this.store.write({ put: [rec] });
            if (kind === 'active') this.starts.prepared(key, fs, lowers, { cvmfs: ms(t1 - t0), dirs: ms(t2 - t1), journal: ms(performance.now() - t2) });
            return mounts;
          } catch (e) {
            if (!this.store.get(key)) await this.removals.discard(id, links);
            throw e;
          }
        },
        theirs,
      ),
    );
  }

  async mounts(key: string): Promise<Mount[]> {
    this.check();
    const r = this.storage.must(key);
    if (r.kind === 'committed') throw new FailedPreconditionError(`snapshot ${key} is committed: only active and view snapshots have mounts`);
    return (await this.mountsFor(r)).mounts;
  }

  async commit(name: string, key: string, labels: Record<string, string>, rebaseParent = ''): Promise<void> {
    this.check();
    if (name === '') throw new InvalidArgumentError('committed snapshot name must not be empty', 'CVMFS_THIN_BAD_REQUEST');
    validateLabels(labels, `snapshot ${name}`);
    return this.gate.shared(() =>
      this.locks.with([name, key], async () => {
        const r = this.storage.toCommit(name, key, rebaseParent);
        const fs = this.fsDir(r.id);
        let rec = this.storage.committed(r, name, labels, await diskUsage(fs), linkName(r.id));
        // a parentless layer holding only a thin manifest: its CVMFS layers become the stack
        const t0 = performance.now();
        const thin = r.parent === '' && this.thinImages ? await this.stack.linkThin(fs, { snapshot: name }) : null;
        const resolveMs = ms(performance.now() - t0);
        if (thin) {
          rec = {
            ...rec,
            stack: thin.lowers.map((l) => l.link),
            terminal: true,
            source: 'thin',
            origin: thin.manifest.origin,
            links: { ...rec.links, ...Object.fromEntries(thin.links.made) },
          };
          if (rec.origin === undefined) delete rec.origin;
        }
        try {
          await this.store.write({ del: [key], put: [rec] });
        } catch (e) {
          thin?.links.rollback();
          throw e;
        }
        if (!thin) return;
        this.metrics.inc('thin_images_resolved_total', { daemon: 'snapshotter' });
        this.starts.thinResolved(
          name,
          { resolve: resolveMs },
          thin.lowers.map((l) => l.dir),
        );
      }),
    );
  }

  async remove(key: string): Promise<void> {
    this.check();
    return this.gate.shared(async () => {
      const r0 = this.storage.must(key);
      // the parent shared, as creation holds it: a Remove of the parent waits, siblings do not
      await this.locks.with(
        [key],
        async () => {
          const r = this.storage.toRemove(key);
          await this.store.write({ del: [key] });
          // data goes after the record: a crash in between leaves an orphan for Cleanup
          this.removals.push(r);
          // its image may be gone from the node: the local profiles are swept, never awaited here
          if (r.source === 'thin') this.starts.imageRemoved();
        },
        [r0.parent],
      );
    });
  }

  /** Wait for background work: removals, the layer-facts file, start traces (Cleanup, close, tests). */
  async settled(): Promise<void> {
    await this.removals.settled();
    await this.stack.facts.flush();
    await this.starts.traces.flush();
  }

  /** Wait for the prefetches and recordings of container starts running now (tests, benches). */
  startsIdle(): Promise<void> {
    return this.starts.idle();
  }

  stat(key: string): Info {
    this.check();
    return this.storage.info(this.storage.must(key));
  }

  async update(info: Info | { name: string; labels: Record<string, string> }, paths: readonly string[]): Promise<Info> {
    this.check();
    const name = info.name;
    if (name === '') throw new InvalidArgumentError('snapshot name must not be empty', 'CVMFS_THIN_BAD_REQUEST');
    const labels = info.labels ?? {};
    checkUpdatePaths(name, paths);
    return this.gate.shared(() => this.locks.with([name], () => this.storage.update(name, labels, paths)));
  }

  list(filter: (i: Info) => boolean): Info[] {
    this.check();
    return this.storage.list(filter);
  }

  async usage(key: string): Promise<Usage> {
    this.check();
    const r = this.storage.must(key);
    if (r.kind === 'active') return diskUsage(this.fsDir(r.id));
    if (r.kind === 'view') return { size: 0, inodes: 0 };
    return { size: r.size, inodes: r.inodes };
  }

  /** Remove data directories, links and masks that no snapshot record owns. */
  async cleanup(): Promise<{ dirs: number; links: number; masks: number }> {
    this.check();
    await this.settled();
    return this.gate.exclusive(() => this.removals.collectUnreferenced(this.store.all(), this.stack, [this.snapshotsDir, this.workDirs]));
  }

  /** Stop: wait for running operations, close the store. Never deletes or unmounts anything. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.monitor.stop();
    await this.gate.drain();
    await this.starts.close();
    await this.settled();
    try {
      await this.store.close();
    } finally {
      this.lock.release();
    }
  }
}

const ms = (x: number) => Math.round(x * 100) / 100;

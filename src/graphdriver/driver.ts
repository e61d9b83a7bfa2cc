/**
 * The graph driver: dockerd's layer operations (Create, ApplyDiff, Get/Put,
 * Diff, Changes, ...) over overlayfs, with CVMFS thin images. Protocol-free:
 * the HTTP edge (server.ts) decodes requests and maps errors. This file is
 * the endpoints; what an Init opens is active.ts, how requests run (gate,
 * locks) guard.ts, the records layer-store.ts, the mounts mounter.ts, diffs
 * against another parent than the layer's own naive.ts, the CVMFS layers
 * core/stack, and every side effect on the node goes through the injected
 * Host.
 *
 * State under the Home that dockerd passes to Init: `layers/<id>/` (see
 * layer-store.ts), `l/<n>` short links (→ ../layers/<id>/diff, or → a CVMFS
 * layer directory / mask of a thin image), `m/<n>` idmapped mounts of thin
 * lowers (--userns-remap), `masks/` + `layer-facts.json` (core/stack); and
 * `<state-dir>/driver.json` (init-state.ts).
 */
import type { Readable } from 'node:stream';
import path from 'node:path';
import { promises as fsp } from 'node:fs';
import type { Logger } from 'pino';
import { AlreadyExistsError, FailedPreconditionError, InvalidArgumentError, NotFoundError, UnavailableError } from '../core/errors/errors.js';
import type { Host } from '../core/host/host.js';
import type { BrokenOverlay } from '../core/stack/mount-health.js';
import { type HeldLock, lockRoot } from '../core/state/lock.js';
import { packDirectory } from '../core/tar/index.js';
import { computeChanges, dirSize, fsTree } from './changes.js';
import { applyAgainst, changesAgainst, diffAgainst, diffSizeAgainst, type NaiveContext } from './naive.js';
import { effective, INIT_SCHEMA, type InitState, loadInitState, saveInitState } from './init-state.js';
import { applyLayer } from './apply.js';
import { metadataOf, statusOf } from './status.js';
import { type Active, openActive } from './active.js';
import { Guard } from './guard.js';
import type { GraphDriverConfig } from './config.js';
import { checkLayerStorageOpt, parseInitOptions } from './options.js';
import type { Change, InitRequest } from './protocol.js';
import { MAX_LOWERS } from './stack.js';

export type { GraphDriverConfig } from './config.js';

/** Lock name for the shared mask directories (not a valid layer ID). */
const MASKS_LOCK = ':masks';

export class GraphDriver {
  private readonly log: Logger;
  private readonly host: Host;
  private readonly guard: Guard<Active>;
  private active: Active | undefined;
  private closed = false;

  private constructor(
    private readonly cfg: GraphDriverConfig,
    private readonly lock: HeldLock,
  ) {
    this.log = cfg.log;
    this.host = cfg.host;
    this.guard = new Guard(() => this.need(), cfg.log);
  }

  /** Open the driver; if a previous Init is remembered, restore it (plugin restart while dockerd runs). */
  static async open(cfg: GraphDriverConfig): Promise<GraphDriver> {
    // one driver per state directory, before the saved state is read
    const d = new GraphDriver(cfg, lockRoot(cfg.stateDir, cfg.host, { daemon: 'cvmfs-thin graphdriver', address: cfg.socket }));
    const saved = await loadInitState(cfg.stateDir, cfg.log);
    if (!saved) return d;
    try {
      await d.activate(saved, 'restore');
      cfg.log.info(
        { home: saved.home, layers: d.active?.store.size },
        'restored the state of the last GraphDriver.Init (dockerd does not call Init again when only the plugin restarts)',
      );
    } catch (e) {
      cfg.log.error({ err: e, home: saved.home }, 'cannot restore the saved Init state; waiting for GraphDriver.Init');
    }
    return d;
  }

  get home(): string | undefined {
    return this.active?.home;
  }

  // ---------------------------------------------------------------- init, restore, the guard

  async init(req: InitRequest): Promise<void> {
    this.check();
    effective(this.cfg, parseInitOptions(req.opts)); // validate before touching anything
    await this.guard.gate.exclusive(async () => {
      const state: InitState = {
        schema: INIT_SCHEMA,
        version: 1,
        home: path.resolve(req.home),
        opts: req.opts,
        uidMaps: req.uidMaps,
        gidMaps: req.gidMaps,
        initAt: new Date().toISOString(),
      };
      await this.activate(state, 'init');
      await saveInitState(this.cfg.stateDir, state);
    });
    const a = this.active!;
    this.log.info(
      {
        home: a.home,
        opts: req.opts,
        userns: a.idMaps ? a.idMaps.uids : null,
        layers: a.store.size,
        repository: a.location.repository,
        mountpoint: a.location.absoluteMountpoint,
      },
      'GraphDriver.Init',
    );
  }

  private async activate(init: InitState, why: 'init' | 'restore'): Promise<void> {
    const a = await openActive(this.cfg, init, why, this.active, () => (this.active = undefined));
    this.active = a;
    await this.gcMasks(a);
    if (why === 'restore') await a.mounter.remountReferenced();
  }

  private check(): void {
    if (this.closed) throw new UnavailableError('graph driver is shutting down', 'CVMFS_THIN_SHUTTING_DOWN');
  }

  private need(): Active {
    this.check();
    if (!this.active) {
      throw new FailedPreconditionError(
        `graph driver is not initialised: dockerd has not called GraphDriver.Init (and there is no saved state in ${this.cfg.stateDir})`,
        'CVMFS_THIN_NOT_INITIALISED',
      );
    }
    return this.active;
  }

  private naive(a: Active): NaiveContext {
    return { host: this.host, store: a.store, mounter: a.mounter, idMaps: a.idMaps };
  }

  /** Remove mask directories no thin layer uses any more (masks are shared: under their lock). */
  private async gcMasks(a: Active): Promise<void> {
    await this.guard.locks.with([MASKS_LOCK], () => a.stack.collectMasks(a.store.usedMasks()));
  }

  // ---------------------------------------------------------------- endpoints

  capabilities(): { ReproducesExactDiffs: boolean } {
    // false: save/push rebuild layer tars from tar-split data + Get, so a thin
    // layer is saved as the thin.json it was loaded with
    return { ReproducesExactDiffs: false };
  }

  status(): [string, string][] {
    const a = this.active;
    if (!a) return [['State', `waiting for GraphDriver.Init (state dir ${this.cfg.stateDir})`]];
    return statusOf(a, this.host);
  }

  async create(id: string, parent: string, rw: boolean, storageOpt: Record<string, string>): Promise<void> {
    this.need();
    checkLayerStorageOpt(storageOpt);
    if (id === parent) throw new InvalidArgumentError(`layer ${id} cannot be its own parent`, 'CVMFS_THIN_BAD_REQUEST');
    await this.guard.run(
      () => [id],
      async (a) => {
        if (parent !== '') {
          if (!a.store.get(parent)) throw new NotFoundError(`parent layer ${parent} does not exist`, 'CVMFS_THIN_NO_SUCH_LAYER');
          const depth = a.mounter.stackOf(parent).length + 1;
          if (depth >= MAX_LOWERS)
            throw new FailedPreconditionError(
              `layer ${id} would have ${depth} lower layers; overlayfs allows ${MAX_LOWERS - 1} below a container layer`,
              'CVMFS_THIN_TOO_MANY_LAYERS',
            );
        }
        const existing = a.store.get(id);
        if (existing) {
          if (existing.rec.parent === parent && existing.rec.rw === rw) {
            this.log.warn({ id }, 'Create of a layer that already exists with the same parent; nothing to do');
            return;
          }
          throw new AlreadyExistsError(`layer ${id} already exists (parent ${existing.rec.parent || 'none'})`);
        }
        const t0 = performance.now();
        await a.store.create(id, parent, rw, a.owner);
        // a container's layers (CreateReadWrite): its start begins or goes on
        if (rw) a.starts.created(id, parent, performance.now() - t0);
      },
      () => [parent], // containers of one image are created at once; a Remove of the parent waits
    );
  }

  async remove(id: string): Promise<void> {
    await this.guard.run(
      () => [id],
      async (a) => {
        const l = a.store.get(id);
        if (!l) {
          // idempotent, as overlay2: dockerd may repeat a Remove that completed before a crash
          if (a.store.orphanDir(id)) this.log.warn({ id }, 'Remove of a layer directory without a record; left untouched');
          else this.log.info({ id }, 'Remove of a layer that does not exist; nothing to do');
          return;
        }
        const kids = a.store.children(id);
        if (kids.size > 0) {
          throw new FailedPreconditionError(
            `cannot remove layer ${id}: ${kids.size} layer(s) are based on it (${[...kids].slice(0, 3).join(', ')})`,
            'CVMFS_THIN_HAS_CHILDREN',
          );
        }
        await a.mounter.release(l);
        await a.store.remove(l);
        a.starts.removed(id);
        if (l.rec.thin) await this.gcMasks(a);
      },
      (a0) => [a0.store.get(id)?.rec.parent ?? ''],
    );
  }

  async get(id: string, mountLabel = ''): Promise<string> {
    if (mountLabel !== '') this.log.debug({ id, mountLabel }, 'MountLabel ignored (SELinux labels are not applied to overlay mounts by this driver)');
    return this.guard.run(
      () => [id],
      async (a) => a.mounter.get(a.store.must(id)),
    );
  }

  async put(id: string): Promise<void> {
    await this.guard.run(
      () => [id],
      async (a) => a.mounter.put(a.store.must(id)),
    );
  }

  /** Mounted layers on a dead or stalled CVMFS lower, found now (also every check-interval). */
  checkMounts(): Promise<BrokenOverlay[]> {
    return this.need().monitor.check();
  }

  exists(id: string): boolean {
    return this.active?.store.get(id) !== undefined;
  }

  getMetadata(id: string): Record<string, string> {
    return metadataOf(this.need(), id);
  }

  /** dockerd is shutting down: unmount everything, keep all data. */
  async cleanup(): Promise<void> {
    const a = this.active;
    if (!a) return;
    await this.guard.gate.exclusive(async () => {
      const n = await a.mounter.unmountAll();
      this.log.info({ unmounted: n }, 'GraphDriver.Cleanup: layers unmounted, data kept');
    });
  }

  /** Against another parent than the layer's own (never from dockerd; moby's graphtest): a naive diff (naive.ts), as overlay2. */
  async applyDiff(id: string, parent: string, body: Readable): Promise<number> {
    return this.guard.run(
      () => [id, parent],
      async (a) => {
        const l = a.store.must(id);
        if (parent !== l.rec.parent) return applyAgainst(this.naive(a), l, parent, body);
        const diff = a.store.diffDir(id);
        if (l.rec.thin || (await fsp.readdir(diff)).length > 0 || a.mounter.isMounted(a.store.mergedDir(id))) {
          throw new FailedPreconditionError(`ApplyDiff to layer ${id}: the layer already has content`);
        }
        const ctx = { host: this.host, store: a.store, stack: a.stack, idMaps: a.idMaps, owner: a.owner, thinImages: a.thinImages, log: this.log };
        return applyLayer(
          {
            ...ctx,
            withMasksLock: (fn) => this.guard.locks.with([MASKS_LOCK], fn),
            onThin: (ms, t) =>
              a.starts.thinApplied(
                id,
                ms,
                t.lowers.map((x) => x.dir),
              ),
          },
          l,
          body,
        );
      },
    );
  }

  async diff(id: string, parent: string): Promise<Readable> {
    return this.guard.stream([id, parent], async (a) => {
      const l = a.store.must(id);
      if (parent !== l.rec.parent) return diffAgainst(this.naive(a), l, parent);
      return { stream: packDirectory(a.store.diffDir(id), { whiteouts: 'overlay', ...(a.idMaps ? { idMap: a.idMaps } : {}) }) };
    });
  }

  async changes(id: string, parent: string): Promise<Change[]> {
    return this.guard.run(
      () => [id, parent],
      async (a) => {
        const l = a.store.must(id);
        if (parent !== l.rec.parent) return changesAgainst(this.naive(a), l, parent);
        const stack = a.mounter.stackOf(l.rec.parent);
        return computeChanges(
          fsTree(a.store.diffDir(id), this.host),
          stack.map((s) => fsTree(s.real, this.host)),
        );
      },
    );
  }

  async diffSize(id: string, parent: string): Promise<number> {
    return this.guard.run(
      () => [id, parent],
      async (a) => {
        const l = a.store.must(id);
        if (parent !== l.rec.parent) return diffSizeAgainst(this.naive(a), l, parent);
        return dirSize(a.store.diffDir(id));
      },
    );
  }

  /** Wait for the prefetches and trace files of container starts running now (tests, benches). */
  async startsIdle(): Promise<void> {
    await this.active?.starts.idle();
  }

  /** Plugin stop: wait for running requests (streamed Diffs included). Never unmounts or deletes anything. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.guard.gate.drain();
    await this.active?.starts.close();
    await this.active?.stack.facts.flush();
    this.active?.monitor.stop();
    this.active?.mounter.close();
    this.active?.lock.release();
    this.lock.release();
  }
}

/**
 * Mounting the graph driver's layers: the overlay of a layer on its merged
 * dir, Get/Put reference counts (persisted, as moby's RefCounter keeps them
 * in memory of a process that, unlike ours, never restarts alone), and the
 * idmapped mounts (m/<n>) of CVMFS layers when dockerd remaps users. Every
 * mount goes through the injected Host; nothing here changes directory.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { FailedPreconditionError, InternalError, UnavailableError } from '../core/errors/errors.js';
import type { Host, UsernsHandle } from '../core/host/host.js';
import type { LayerStack } from '../core/stack/index.js';
import { MNT_DETACH } from '../core/host/sys.js';
import type { IdMaps } from '../core/util/idmap.js';
import type { Layer, LayerStore, ThinLower } from './layer-store.js';
import type { IdmapMode } from './options.js';
import { MAX_LOWERS, overlaySpec, type StackEntry, stackOf } from './stack.js';

export class Mounter {
  private userns: UsernsHandle | undefined;
  /** Why idmapped CVMFS layers are not in use, once they failed. */
  idmapBroken: string | undefined;
  /** A layer was mounted: ms of the CVMFS check of its lowers (and their idmapped mounts), and of its overlay mount. */
  onMount?: (id: string, phases: { cvmfs: number; mount: number }) => void;

  constructor(
    private readonly host: Host,
    private readonly store: LayerStore,
    private readonly stack: LayerStack,
    private readonly idMaps: IdMaps | undefined,
    readonly idmappedLayers: IdmapMode,
    private readonly log: Logger,
  ) {}

  /** The lower directories of a layer whose parent is `parent`, nearest first. */
  stackOf(parent: string): StackEntry[] {
    return stackOf(this.store.node, parent, !!this.idMaps && !this.idmapBroken && this.idmappedLayers !== 'off');
  }

  isMounted(p: string): boolean {
    return this.host.mountinfo().some((m) => m.mountPoint === p);
  }

  /** Get: the merged dir, mounted once and counted (a layer with nothing below is its diff dir, not counted). */
  async get(l: Layer): Promise<string> {
    const id = l.rec.id;
    if (this.stackOf(l.rec.parent).length === 0) return this.store.diffDir(id);
    const merged = this.store.mergedDir(id);
    const mounted = this.isMounted(merged);
    if (l.refs > 0 && mounted) l.refs++;
    else {
      if (!mounted) await this.mount(l);
      l.refs = 1;
    }
    await this.store.saveRefs(l);
    return merged;
  }

  async put(l: Layer): Promise<void> {
    if (this.stackOf(l.rec.parent).length === 0) return;
    if (l.refs > 1) l.refs--;
    else {
      if (l.refs === 0) this.log.debug({ id: l.rec.id }, 'Put without a matching Get');
      l.refs = 0;
      const merged = this.store.mergedDir(l.rec.id);
      if (this.isMounted(merged)) this.host.umount(merged, MNT_DETACH);
    }
    await this.store.saveRefs(l);
  }

  /** Before a Remove: nothing of the layer stays mounted. */
  async release(l: Layer): Promise<void> {
    const merged = this.store.mergedDir(l.rec.id);
    if (this.isMounted(merged)) {
      this.log.warn({ id: l.rec.id, refs: l.refs }, 'Remove of a mounted layer; unmounting it');
      this.host.umount(merged, MNT_DETACH);
    }
    if (l.rec.thin) await this.unmountIdmapped(l.rec.thin.lowers);
  }

  /** A plugin restart while dockerd runs: mounts normally survive; put back any that did not. */
  async remountReferenced(): Promise<void> {
    const mounts = new Set(this.host.mountinfo().map((m) => m.mountPoint));
    for (const [id, l] of this.store.all()) {
      if (l.refs === 0 || mounts.has(this.store.mergedDir(id))) continue;
      try {
        await this.mount(l);
        this.log.info({ id }, 'remounted a layer that had references');
      } catch (e) {
        this.log.error({ err: e, id }, 'cannot remount a layer that had references');
      }
    }
  }

  /** dockerd's Cleanup: unmount every layer, counts to zero, keep all data. Returns how many were unmounted. */
  async unmountAll(): Promise<number> {
    const mounts = new Set(this.host.mountinfo().map((m) => m.mountPoint));
    let n = 0;
    for (const [id, l] of this.store.all()) {
      const merged = this.store.mergedDir(id);
      if (mounts.has(merged)) {
        try {
          this.host.umount(merged, MNT_DETACH);
          n++;
        } catch (e) {
          this.log.warn({ err: e, id }, 'Cleanup: cannot unmount a layer');
        }
      }
      if (l.refs !== 0) {
        l.refs = 0;
        await this.store.saveRefs(l);
      }
      if (l.rec.thin) await this.unmountIdmapped(l.rec.thin.lowers);
    }
    this.close();
    return n;
  }

  close(): void {
    this.userns?.close();
    this.userns = undefined;
  }

  /** Mount a layer's overlay on its merged dir (the caller knows it has lower layers). */
  private async mount(l: Layer): Promise<void> {
    const id = l.rec.id;
    const t0 = performance.now();
    const external = this.stackOf(l.rec.parent).filter((s) => s.external);
    await this.stack.checkAvailable(
      external.map((s) => s.real),
      `layer ${id}`,
    );
    await this.ensureIdmapped(external.map((s) => ({ link: s.rel.slice(2), dir: s.real })));
    const t1 = performance.now();
    const final = this.stackOf(l.rec.parent);
    if (final.length > MAX_LOWERS) {
      throw new FailedPreconditionError(`layer ${id} has ${final.length} lower layers; overlayfs allows ${MAX_LOWERS}`, 'CVMFS_THIN_TOO_MANY_LAYERS');
    }
    try {
      this.host.mountOverlay(overlaySpec(this.store.home, id, final, this.host.overlayIndexParam()));
    } catch (e) {
      if (e instanceof FailedPreconditionError) throw e;
      throw new InternalError(`cannot mount overlay for layer ${id} (${final.length} lower layers): ${(e as Error).message}`, 'CVMFS_THIN_MOUNT', { cause: e });
    }
    this.onMount?.(id, { cvmfs: t1 - t0, mount: performance.now() - t1 });
  }

  /** Idmapped mounts (m/<n>) of the thin lowers of a stack, when dockerd remaps users. */
  private async ensureIdmapped(lowers: ThinLower[]): Promise<void> {
    if (!this.idMaps || this.idmappedLayers === 'off' || this.idmapBroken || lowers.length === 0) return;
    const mounted = new Set(this.host.mountinfo().map((m) => m.mountPoint));
    try {
      for (const t of lowers) {
        const target = path.join(this.store.home, 'm', t.link);
        if (mounted.has(target)) continue;
        await fsp.mkdir(target, { recursive: true, mode: 0o700 });
        this.userns ??= await this.host.createUserns(this.idMaps.uids, this.idMaps.gids);
        this.host.idmappedBindMount(t.dir, target, this.userns.fd);
      }
    } catch (e) {
      const why = (e as Error).message;
      if (this.idmappedLayers === 'require') {
        throw new UnavailableError(`cannot make an idmapped mount of a CVMFS layer for --userns-remap: ${why}`, 'CVMFS_THIN_IDMAP');
      }
      this.idmapBroken = why;
      await this.unmountIdmapped(lowers);
      this.log.warn(
        { err: e },
        'idmapped mounts of CVMFS layers are not available; thin-image files keep their CVMFS owners and show as nobody (65534) inside user-namespaced containers (set idmapped-layers=require to fail instead)',
      );
    }
  }

  private async unmountIdmapped(lowers: readonly ThinLower[]): Promise<void> {
    const mounted = new Set(this.host.mountinfo().map((m) => m.mountPoint));
    for (const t of lowers) {
      const target = path.join(this.store.home, 'm', t.link);
      if (mounted.has(target)) {
        try {
          this.host.umount(target, MNT_DETACH);
        } catch (e) {
          this.log.warn({ err: e, target }, 'cannot unmount an idmapped layer');
          continue;
        }
      }
      await fsp.rmdir(target).catch(() => undefined);
    }
  }
}

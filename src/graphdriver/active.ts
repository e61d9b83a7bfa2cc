/**
 * What exists of the graph driver (driver.ts) only once dockerd's Init, or a
 * restore of the remembered one, gave it a Home: the effective settings, the
 * user namespace maps, the layer stack, records, mounts and their monitor,
 * and the lock on the Home. Opening one closes the previous one.
 */
import path from 'node:path';
import type { CvmfsLocation } from '../core/cvmfs/location.js';
import { InvalidArgumentError } from '../core/errors/errors.js';
import { LayerStack } from '../core/stack/index.js';
import type { MountMonitor } from '../core/stack/mount-health.js';
import { type HeldLock, lockRoot } from '../core/state/lock.js';
import type { IdMaps } from '../core/util/idmap.js';
import { toHost } from '../core/util/idmap.js';
import type { GraphDriverConfig } from './config.js';
import { graphdriverMonitor } from './health.js';
import { effective, type InitState } from './init-state.js';
import { LayerStore } from './layer-store.js';
import { Mounter } from './mounter.js';
import { parseInitOptions } from './options.js';
import { DockerStarts } from './starts.js';
import { hotOptions } from '../core/stack/hot.js';

export interface Active {
  init: InitState;
  home: string;
  location: CvmfsLocation;
  thinImages: boolean;
  idMaps: IdMaps | undefined;
  /** Remapped root (owner of new diff dirs), when users are remapped. */
  owner: { uid: number; gid: number } | undefined;
  stack: LayerStack;
  store: LayerStore;
  mounter: Mounter;
  monitor: MountMonitor;
  /** Container starts: traces, access-profile prefetch. */
  starts: DockerStarts;
  /** One driver per Home. */
  lock: HeldLock;
}

/**
 * Open the state of `init` over `prev` (closed first, its data kept; the
 * driver forgets it in `detached`). `why`: dockerd's Init (a layer still
 * mounted counts one reference) or a restore (the saved counts stand).
 */
export async function openActive(
  cfg: GraphDriverConfig,
  init: InitState,
  why: 'init' | 'restore',
  prev: Active | undefined,
  detached: () => void,
): Promise<Active> {
  const log = cfg.log;
  const eff = effective(cfg, parseInitOptions(init.opts));
  const home = init.home;
  const idMaps = init.uidMaps.length > 0 ? { uids: init.uidMaps, gids: init.gidMaps } : undefined;
  const uid = idMaps ? toHost(idMaps.uids, 0) : 0;
  const gid = idMaps ? toHost(idMaps.gids, 0) : 0;
  if (uid === null || gid === null) throw new InvalidArgumentError('UIDMaps/GIDMaps do not map container root (id 0)', 'CVMFS_THIN_BAD_REQUEST');
  if (prev && prev.home !== home) log.info({ from: prev.home, to: home }, 'Init with a new Home; the old one is left as it is');
  // one driver per Home too (two plugins with their own state dirs, one dockerd data root)
  const lock = prev?.home === home ? prev.lock : lockRoot(home, cfg.host, { daemon: 'cvmfs-thin graphdriver', address: cfg.socket }, 0o711);
  prev?.mounter.close();
  prev?.monitor.stop();
  await prev?.starts.close();
  await prev?.stack.facts.flush();
  if (prev && prev.lock !== lock) prev.lock.release();
  detached();
  let stack: LayerStack;
  let store: LayerStore;
  let starts: DockerStarts;
  try {
    const onStall = () => cfg.metrics?.inc('cvmfs_stalls_total', { daemon: 'graphdriver' });
    stack = await LayerStack.open({
      root: home,
      location: eff.location,
      host: cfg.host,
      log,
      factsFile: path.join(home, 'layer-facts.json'),
      cvmfsTimeoutMs: cfg.cvmfsTimeoutMs,
      onStall,
      hot: hotOptions(cfg.starts, cfg.cvmfsTimeoutMs),
    });
    store = await LayerStore.load(home, stack, cfg.host, log, why === 'init');
    starts = await DockerStarts.open(cfg, home, store, stack);
  } catch (e) {
    lock.release();
    throw e;
  }
  const mounter = new Mounter(cfg.host, store, stack, idMaps, eff.idmappedLayers, log);
  mounter.onMount = (id, phases) => starts.mounted(id, phases);
  const monitor = graphdriverMonitor({ home, stack, log, metrics: cfg.metrics, intervalMs: cfg.checkIntervalMs });
  return {
    init,
    home,
    location: eff.location,
    thinImages: eff.thinImages,
    idMaps,
    owner: idMaps ? { uid, gid } : undefined,
    stack,
    store,
    mounter,
    monitor,
    starts,
    lock,
  };
}

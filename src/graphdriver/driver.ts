/**
 * The graph driver: dockerd's layer operations (Create, ApplyDiff, Get/Put,
 * Diff, Changes, ...) over overlayfs, with CVMFS thin images. Protocol-free:
 * the HTTP edge (server.ts) decodes requests and maps errors.
 *
 * State layout, under the Home that dockerd passes to Init:
 *
 *   layers/<id>/layer.json   the layer record (parent, rw, thin stack), durable
 *   layers/<id>/refs         Get/Put reference count (survives plugin restarts)
 *   layers/<id>/diff/        the layer's own files = overlay upper dir
 *   layers/<id>/work         overlay work dir (directory)
 *   layers/<id>/merged/      mount point when the layer has lower layers
 *   l/<n>                    short links (base36 counter): → ../layers/<id>/diff,
 *                            or → a CVMFS layer directory / mask of a thin image
 *   m/<n>                    idmapped mounts of thin lowers (--userns-remap)
 *   masks/, layer-facts.json whiteout masks for DUCC layers (core CvmfsLayers)
 *
 * and `<state-dir>/driver.json` records the last Init (Home, Opts, maps),
 * because dockerd does not call Init again when only the plugin restarts.
 *
 * Overlay is mounted with paths relative to Home (chdir + mount, as moby
 * does), so the 4 KiB mount data limit allows overlay's 500 lower layers.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, promises as fsp } from 'node:fs';
import path from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import type { Logger } from 'pino';
import { type CvmfsLocation, cvmfsLocation } from '../core/config.js';
import { CvmfsLayers, type LayerFacts, type LayerFactsCache } from '../core/cvmfs/layers.js';
import {
  AlreadyExistsError,
  FailedPreconditionError,
  InternalError,
  InvalidArgumentError,
  NotFoundError,
  UnavailableError,
} from '../core/errors.js';
import { ensureSymlink, fsyncDir, isInside, readMountinfo, removeTree, writeFileAtomic } from '../core/fsutil.js';
import { Gate } from '../core/gate.js';
import { KeyedMutex } from '../core/keyed-mutex.js';
import { idmappedBindMount, MNT_DETACH, mount, umount } from '../core/sys.js';
import { extractLayer, packDirectory } from '../core/tar/index.js';
import type { IdMap, IdMaps } from '../core/tar/idmap.js';
import { toHost } from '../core/tar/idmap.js';
import { readThinLayer } from '../core/thin/layer.js';
import { computeChanges, dirSize, fsTree } from './changes.js';
import { checkLayerStorageOpt, type DriverOptions, type IdmapMode, parseInitOptions } from './options.js';
import type { Change, InitRequest } from './protocol.js';
import { MAX_LOWERS, MAX_MOUNT_DATA, overlayData, type StackEntry, stackOf, thinBase } from './stack.js';
import { createUserns, type UsernsHandle } from './userns.js';

export interface GraphDriverConfig {
  /** Where the last Init is remembered. */
  stateDir: string;
  /** The plugin's own CVMFS settings (flags/TOML); Init.Opts override them. */
  location: CvmfsLocation;
  thinImages: boolean;
  idmappedLayers: IdmapMode;
  log: Logger;
}

/** What Init said, persisted in `<state-dir>/driver.json`. */
export interface InitState {
  schema: 'cvmfs-thin/graphdriver-init';
  version: 1;
  home: string;
  opts: string[];
  uidMaps: IdMap[];
  gidMaps: IdMap[];
  initAt: string;
}

export interface ThinLower {
  /** Short link name in l/ (and idmapped mount point name in m/). */
  link: string;
  /** Host directory: a CVMFS layer directory, a DUCC chain, or a local mask. */
  dir: string;
}

export interface ThinRecord {
  /** File name of the manifest in the layer (thin.json). */
  manifest: string;
  origin?: string | undefined;
  /** Number of CVMFS layers the manifest lists. */
  layers: number;
  how: string[];
  /** Lower directories for the layers above, top first. */
  lowers: ThinLower[];
}

export interface LayerRecord {
  schema: 'cvmfs-thin/graphdriver-layer';
  version: 1;
  id: string;
  parent: string;
  /** CreateReadWrite (container and -init layers) rather than Create (image layers). */
  rw: boolean;
  created: string;
  /** Short link name of the layer's diff dir in l/. */
  link: string;
  thin?: ThinRecord | undefined;
}

interface Layer {
  rec: LayerRecord;
  refs: number;
}

/** Lock name for the shared mask directories (not a valid layer ID). */
const MASKS_LOCK = ':masks';
const LAYER_SCHEMA = 'cvmfs-thin/graphdriver-layer';
const INIT_SCHEMA = 'cvmfs-thin/graphdriver-init';

class JsonFactsCache implements LayerFactsCache {
  private constructor(
    private readonly file: string,
    private readonly map: Map<string, LayerFacts>,
  ) {}
  static async open(file: string, log: Logger): Promise<JsonFactsCache> {
    const map = new Map<string, LayerFacts>();
    try {
      const o = JSON.parse(await fsp.readFile(file, 'utf8')) as Record<string, LayerFacts>;
      for (const [k, v] of Object.entries(o)) if (v && typeof v === 'object' && typeof v.mode === 'string') map.set(k, v);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') log.warn({ err: e, file }, 'layer facts cache unreadable; layers will be scanned again');
    }
    return new JsonFactsCache(file, map);
  }
  get(key: string): LayerFacts | undefined {
    return this.map.get(key);
  }
  async put(key: string, facts: LayerFacts): Promise<void> {
    this.map.set(key, facts);
    await this.save();
  }
  async prune(keep: (f: LayerFacts) => boolean): Promise<void> {
    let changed = false;
    for (const [k, f] of this.map) {
      if (!keep(f)) {
        this.map.delete(k);
        changed = true;
      }
    }
    if (changed) await this.save();
  }
  private async save(): Promise<void> {
    await writeFileAtomic(this.file, `${JSON.stringify(Object.fromEntries(this.map), null, 1)}\n`);
  }
}

/** Everything that exists only once Init (or a restore) has given us a Home. */
interface Active {
  init: InitState;
  home: string;
  location: CvmfsLocation;
  thinImages: boolean;
  idmappedLayers: IdmapMode;
  idMaps: IdMaps | undefined;
  /** Remapped root (owner of new diff dirs). */
  rootUid: number;
  rootGid: number;
  layers: Map<string, Layer>;
  children: Map<string, Set<string>>;
  cvmfs: CvmfsLayers;
  facts: JsonFactsCache;
  nextLink: number;
  userns?: UsernsHandle | undefined;
  /** Why idmapped CVMFS layers are not in use, once they failed. */
  idmapBroken?: string | undefined;
}

const isNotFound = (e: unknown) => (e as NodeJS.ErrnoException).code === 'ENOENT';

function linkName(n: number): string {
  return n.toString(36);
}

async function readJson(file: string): Promise<unknown> {
  return JSON.parse(await fsp.readFile(file, 'utf8')) as unknown;
}

/** Write without fsync: survives a process restart (the only thing reference counts must survive). */
async function writeFileQuick(file: string, data: string): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}`;
  await fsp.writeFile(tmp, data);
  await fsp.rename(tmp, file);
}

function validInit(o: unknown): o is InitState {
  const s = o as Partial<InitState> | null;
  return !!s && s.schema === INIT_SCHEMA && typeof s.home === 'string' && Array.isArray(s.opts) && Array.isArray(s.uidMaps) && Array.isArray(s.gidMaps);
}

function validRecord(o: unknown, id: string): o is LayerRecord {
  const r = o as Partial<LayerRecord> | null;
  return !!r && r.schema === LAYER_SCHEMA && r.id === id && typeof r.parent === 'string' && typeof r.link === 'string' && typeof r.rw === 'boolean';
}

export class GraphDriver {
  private readonly locks = new KeyedMutex();
  private readonly gate = new Gate();
  private readonly log: Logger;
  private readonly indexOff = existsSync('/sys/module/overlay/parameters/index');
  private active: Active | undefined;
  private closed = false;

  private constructor(private readonly cfg: GraphDriverConfig) {
    this.log = cfg.log;
  }

  /** Open the driver; if a previous Init is remembered, restore it (plugin restart while dockerd runs). */
  static async open(cfg: GraphDriverConfig): Promise<GraphDriver> {
    const d = new GraphDriver(cfg);
    await fsp.mkdir(cfg.stateDir, { recursive: true, mode: 0o700 });
    let saved: unknown;
    try {
      saved = await readJson(d.stateFile);
    } catch (e) {
      if (!isNotFound(e)) cfg.log.error({ err: e, file: d.stateFile }, 'cannot read the saved Init state; waiting for GraphDriver.Init');
      return d;
    }
    if (!validInit(saved)) {
      cfg.log.error({ file: d.stateFile }, 'saved Init state is not valid; waiting for GraphDriver.Init');
      return d;
    }
    if (!existsSync(saved.home)) {
      cfg.log.warn({ home: saved.home }, 'the Home of the saved Init state is gone; waiting for GraphDriver.Init');
      return d;
    }
    try {
      await d.activate(saved, 'restore');
      cfg.log.info({ home: saved.home, layers: d.active?.layers.size }, 'restored the state of the last GraphDriver.Init (dockerd does not call Init again when only the plugin restarts)');
    } catch (e) {
      cfg.log.error({ err: e, home: saved.home }, 'cannot restore the saved Init state; waiting for GraphDriver.Init');
    }
    return d;
  }

  private get stateFile(): string {
    return path.join(this.cfg.stateDir, 'driver.json');
  }

  get home(): string | undefined {
    return this.active?.home;
  }

  // ---------------------------------------------------------------- paths

  private layerDir(a: Active, id: string): string {
    return path.join(a.home, 'layers', id);
  }
  private diffDir(a: Active, id: string): string {
    return path.join(a.home, 'layers', id, 'diff');
  }
  private mergedDir(a: Active, id: string): string {
    return path.join(a.home, 'layers', id, 'merged');
  }

  // ---------------------------------------------------------------- init and restore

  async init(req: InitRequest): Promise<void> {
    this.check();
    const driverOpts = parseInitOptions(req.opts);
    this.effective(driverOpts); // validate before touching anything
    await this.gate.exclusive(async () => {
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
      await writeFileAtomic(this.stateFile, `${JSON.stringify(state, null, 2)}\n`, 0o600);
    });
    const a = this.active!;
    this.log.info(
      { home: a.home, opts: req.opts, userns: a.idMaps ? a.idMaps.uids : null, layers: a.layers.size, repository: a.location.repository, mountpoint: a.location.absoluteMountpoint },
      'GraphDriver.Init',
    );
  }

  private effective(o: DriverOptions): { location: CvmfsLocation; thinImages: boolean; idmappedLayers: IdmapMode } {
    const base = this.cfg.location;
    const cvmfsRoot = o.cvmfsRoot ?? base.cvmfsRoot;
    const repository = o.repository ?? base.repository;
    // a mountpoint follows a changed root or repository unless given explicitly
    const absoluteMountpoint =
      o.absoluteMountpoint ?? (o.cvmfsRoot !== undefined || o.repository !== undefined ? undefined : base.absoluteMountpoint);
    const location = cvmfsLocation({
      repository,
      cvmfsRoot,
      absoluteMountpoint,
      allowedRepositories: o.allowedRepositories ?? (o.repository !== undefined ? undefined : base.allowedRepositories),
    });
    return { location, thinImages: o.thinImages ?? this.cfg.thinImages, idmappedLayers: o.idmappedLayers ?? this.cfg.idmappedLayers };
  }

  private async activate(init: InitState, why: 'init' | 'restore'): Promise<void> {
    const eff = this.effective(parseInitOptions(init.opts));
    const home = init.home;
    const idMaps = init.uidMaps.length > 0 ? { uids: init.uidMaps, gids: init.gidMaps } : undefined;
    const rootUid = idMaps ? toHost(idMaps.uids, 0) : 0;
    const rootGid = idMaps ? toHost(idMaps.gids, 0) : 0;
    if (rootUid === null || rootGid === null) throw new InvalidArgumentError('UIDMaps/GIDMaps do not map container root (id 0)');
    if (this.active && this.active.home !== home) this.log.info({ from: this.active.home, to: home }, 'Init with a new Home; the old one is left as it is');
    this.active?.userns?.close();
    this.active = undefined;

    await fsp.mkdir(home, { recursive: true, mode: 0o711 });
    for (const d of ['layers', 'l', 'm', 'masks']) await fsp.mkdir(path.join(home, d), { recursive: true, mode: d === 'layers' ? 0o711 : 0o700 });
    const facts = await JsonFactsCache.open(path.join(home, 'layer-facts.json'), this.log);
    const a: Active = {
      init,
      home,
      location: eff.location,
      thinImages: eff.thinImages,
      idmappedLayers: eff.idmappedLayers,
      idMaps,
      rootUid,
      rootGid,
      layers: new Map(),
      children: new Map(),
      cvmfs: new CvmfsLayers(eff.location, path.join(home, 'masks'), facts, this.log),
      facts,
      nextLink: 1,
    };
    const mounts = new Set(readMountinfo().map((m) => m.mountPoint));
    const layersDir = path.join(home, 'layers');
    for (const name of await fsp.readdir(layersDir)) {
      const dir = path.join(layersDir, name);
      if (name.startsWith('.')) {
        // an interrupted Create or Remove
        await removeTree(dir).catch((e: unknown) => this.log.warn({ err: e, dir }, 'cannot remove the leftover of an interrupted operation'));
        continue;
      }
      let rec: unknown;
      try {
        rec = await readJson(path.join(dir, 'layer.json'));
      } catch (e) {
        this.log.error({ err: e, dir }, 'layer directory without a readable record; left untouched');
        continue;
      }
      if (!validRecord(rec, name)) {
        this.log.error({ dir }, 'layer record is not valid; left untouched');
        continue;
      }
      let refs = 0;
      try {
        refs = Math.max(0, Number.parseInt(await fsp.readFile(path.join(dir, 'refs'), 'utf8'), 10) || 0);
      } catch {
        /* never mounted */
      }
      const mounted = mounts.has(path.join(dir, 'merged'));
      // dockerd (re)started: like moby's RefCounter, a layer still mounted counts as one reference
      if (why === 'init') refs = mounted ? 1 : 0;
      a.layers.set(name, { rec, refs });
    }
    for (const [id, l] of a.layers) {
      if (l.rec.parent === '') continue;
      if (!a.layers.has(l.rec.parent)) this.log.error({ id, parent: l.rec.parent }, 'layer whose parent is missing');
      let s = a.children.get(l.rec.parent);
      if (!s) a.children.set(l.rec.parent, (s = new Set()));
      s.add(id);
    }
    // short links: counter above every name in use, every recorded link present
    let max = 0;
    const bump = (n: string) => {
      const v = Number.parseInt(n, 36);
      if (Number.isSafeInteger(v) && v > max) max = v;
    };
    for (const n of await fsp.readdir(path.join(home, 'l'))) bump(n);
    for (const n of await fsp.readdir(path.join(home, 'm'))) bump(n);
    let fixed = 0;
    for (const { rec } of a.layers.values()) {
      bump(rec.link);
      const want: [string, string][] = [[rec.link, `../layers/${rec.id}/diff`]];
      for (const t of rec.thin?.lowers ?? []) {
        bump(t.link);
        want.push([t.link, t.dir]);
      }
      for (const [ln, target] of want) if (await ensureSymlink(path.join(home, 'l', ln), target)) fixed++;
    }
    if (fixed) this.log.warn({ fixed }, 'recreated missing short links');
    // links and idmap mount points no record owns: left by a Create, ApplyDiff or Remove that was interrupted
    const owned = new Set<string>();
    for (const { rec } of a.layers.values()) {
      owned.add(rec.link);
      for (const t of rec.thin?.lowers ?? []) owned.add(t.link);
    }
    let orphans = 0;
    for (const n of await fsp.readdir(path.join(home, 'l'))) {
      if (owned.has(n)) continue;
      await fsp.rm(path.join(home, 'l', n), { force: true });
      orphans++;
    }
    for (const n of await fsp.readdir(path.join(home, 'm'))) {
      const p = path.join(home, 'm', n);
      if (owned.has(n) || mounts.has(p)) continue;
      await fsp.rmdir(p).then(() => orphans++, () => undefined);
    }
    if (orphans) this.log.warn({ orphans }, 'removed links left by interrupted operations');
    a.nextLink = max + 1;
    this.active = a;
    await this.gcMasks(a);
    if (why === 'restore') {
      // the plugin restarted while dockerd runs: mounts normally survive; put back any that did not
      for (const [id, l] of a.layers) {
        if (l.refs > 0 && !mounts.has(this.mergedDir(a, id))) {
          try {
            await this.mountLayer(a, l);
            this.log.info({ id }, 'remounted a layer that had references');
          } catch (e) {
            this.log.error({ err: e, id }, 'cannot remount a layer that had references');
          }
        }
      }
    }
  }

  private check(): void {
    if (this.closed) throw new UnavailableError('graph driver is shutting down');
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

  private must(a: Active, id: string): Layer {
    const l = a.layers.get(id);
    if (!l) throw new NotFoundError(`layer ${id} does not exist`, 'CVMFS_THIN_NO_SUCH_LAYER');
    return l;
  }

  private checkParent(l: Layer, parent: string, op: string): void {
    if (parent !== l.rec.parent) {
      throw new InvalidArgumentError(
        `${op} of layer ${l.rec.id} against ${parent === '' ? 'no parent' : `layer ${parent}`}: only the layer's own parent (${l.rec.parent === '' ? 'none' : l.rec.parent}) is supported`,
      );
    }
  }

  private allocLink(a: Active): string {
    return linkName(a.nextLink++);
  }

  // ---------------------------------------------------------------- stacks and mounts

  /** The lower directories of a layer whose parent is `parent`, nearest first. */
  private stackOf(a: Active, parent: string): StackEntry[] {
    return stackOf((id) => a.layers.get(id)?.rec, parent, {
      idmapped: !!a.idMaps && !a.idmapBroken && a.idmappedLayers !== 'off',
      diffDir: (id) => this.diffDir(a, id),
    });
  }

  private isMounted(p: string): boolean {
    return readMountinfo().some((m) => m.mountPoint === p);
  }

  /** Idmapped mounts (m/<n>) of the thin lowers in a stack, when dockerd remaps users. */
  private async ensureIdmapped(a: Active, parent: string): Promise<void> {
    if (!a.idMaps || a.idmappedLayers === 'off' || a.idmapBroken) return;
    const thin = thinBase((id) => a.layers.get(id)?.rec, parent)?.thin;
    if (!thin || thin.lowers.length === 0) return;
    const mounted = new Set(readMountinfo().map((m) => m.mountPoint));
    try {
      for (const t of thin.lowers) {
        const target = path.join(a.home, 'm', t.link);
        if (mounted.has(target)) continue;
        await fsp.mkdir(target, { recursive: true, mode: 0o700 });
        a.userns ??= await createUserns(a.idMaps.uids, a.idMaps.gids);
        idmappedBindMount(t.dir, target, a.userns.fd);
      }
    } catch (e) {
      const why = (e as Error).message;
      if (a.idmappedLayers === 'require') {
        throw new UnavailableError(`cannot make an idmapped mount of a CVMFS layer for --userns-remap: ${why}`, 'CVMFS_THIN_IDMAP');
      }
      a.idmapBroken = why;
      await this.unmountIdmapped(a, thin);
      this.log.warn(
        { err: e },
        'idmapped mounts of CVMFS layers are not available; thin-image files keep their CVMFS owners and show as nobody (65534) inside user-namespaced containers (set idmapped-layers=require to fail instead)',
      );
    }
  }

  private async unmountIdmapped(a: Active, thin: ThinRecord): Promise<void> {
    const mounted = new Set(readMountinfo().map((m) => m.mountPoint));
    for (const t of thin.lowers) {
      const target = path.join(a.home, 'm', t.link);
      if (mounted.has(target)) {
        try {
          umount(target, MNT_DETACH);
        } catch (e) {
          this.log.warn({ err: e, target }, 'cannot unmount an idmapped layer');
          continue;
        }
      }
      await fsp.rmdir(target).catch(() => undefined);
    }
  }

  /** Mount a layer's overlay on its merged dir (the caller knows it has lower layers). */
  private async mountLayer(a: Active, l: Layer): Promise<void> {
    const stack = this.stackOf(a, l.rec.parent);
    await Promise.all(
      stack
        .filter((s) => s.external)
        .map(async (s) => {
          try {
            await fsp.access(s.real);
          } catch {
            throw new UnavailableError(`layer directory ${s.real} of layer ${l.rec.id} is not available (is CVMFS mounted?)`, 'CVMFS_THIN_LAYER_UNAVAILABLE');
          }
        }),
    );
    await this.ensureIdmapped(a, l.rec.parent);
    const final = this.stackOf(a, l.rec.parent);
    if (final.length > MAX_LOWERS) {
      throw new FailedPreconditionError(`layer ${l.rec.id} has ${final.length} lower layers; overlayfs allows ${MAX_LOWERS}`);
    }
    const data = overlayData(l.rec.id, final, this.indexOff);
    if (Buffer.byteLength(data) > MAX_MOUNT_DATA) {
      throw new FailedPreconditionError(`overlay options for layer ${l.rec.id} are ${Buffer.byteLength(data)} bytes, more than one page`);
    }
    const target = this.mergedDir(a, l.rec.id);
    const cwd = process.cwd();
    process.chdir(a.home);
    try {
      mount('overlay', target, 'overlay', 0, data);
    } catch (e) {
      throw new InternalError(`cannot mount overlay for layer ${l.rec.id} (${stack.length} lower layers): ${(e as Error).message}`, 'CVMFS_THIN_MOUNT', { cause: e });
    } finally {
      process.chdir(cwd);
    }
  }

  private async saveRefs(a: Active, l: Layer): Promise<void> {
    await writeFileQuick(path.join(this.layerDir(a, l.rec.id), 'refs'), `${l.refs}\n`);
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
    let thin = 0;
    let mounted = 0;
    for (const l of a.layers.values()) {
      if (l.rec.thin) thin++;
      if (l.refs > 0) mounted++;
    }
    const fs = readMountinfo()
      .filter((m) => isInside(m.mountPoint, a.home))
      .sort((x, y) => y.mountPoint.length - x.mountPoint.length)[0];
    const out: [string, string][] = [
      ['Backing Filesystem', fs?.fsType ?? 'unknown'],
      ['Home', a.home],
      ['Layers', String(a.layers.size)],
      ['Thin Image Layers', String(thin)],
      ['Mounted Layers', String(mounted)],
      ['CVMFS Repository', a.location.repository],
      ['CVMFS Mountpoint', a.location.absoluteMountpoint],
      ['CVMFS Root', a.location.cvmfsRoot],
      ['Allowed Repositories', a.location.allowedRepositories.join(', ')],
      ['Thin Images', a.thinImages ? 'enabled' : 'disabled'],
      ['Supports d_type', 'true'],
      ['Native Overlay Diff', 'true'],
    ];
    if (a.idMaps) {
      out.push(['User Namespace', a.idMaps.uids.map((m) => `${m.containerId}:${m.hostId}:${m.size}`).join(' ')]);
      out.push([
        'Idmapped CVMFS Layers',
        a.idmappedLayers === 'off' ? 'off' : a.idmapBroken ? `unavailable (${a.idmapBroken})` : 'yes',
      ]);
    }
    return out;
  }

  async create(id: string, parent: string, rw: boolean, storageOpt: Record<string, string>): Promise<void> {
    const a0 = this.need();
    checkLayerStorageOpt(storageOpt);
    if (id === parent) throw new InvalidArgumentError(`layer ${id} cannot be its own parent`);
    await this.gate.shared(() =>
      this.locks.with([id, parent], async () => {
        const a = this.need();
        if (a !== a0) throw new UnavailableError('graph driver was re-initialised during the request');
        if (parent !== '') {
          const p = a.layers.get(parent);
          if (!p) throw new NotFoundError(`parent layer ${parent} does not exist`, 'CVMFS_THIN_NO_SUCH_LAYER');
          const depth = this.stackOf(a, parent).length + 1;
          if (depth >= MAX_LOWERS) throw new FailedPreconditionError(`layer ${id} would have ${depth} lower layers; overlayfs allows ${MAX_LOWERS - 1} below a container layer`);
        }
        const existing = a.layers.get(id);
        if (existing) {
          if (existing.rec.parent === parent && existing.rec.rw === rw) {
            this.log.warn({ id }, 'Create of a layer that already exists with the same parent; nothing to do');
            return;
          }
          throw new AlreadyExistsError(`layer ${id} already exists (parent ${existing.rec.parent || 'none'})`);
        }
        const final = this.layerDir(a, id);
        const tmp = path.join(a.home, 'layers', `.creating-${id}-${randomBytes(4).toString('hex')}`);
        const link = this.allocLink(a);
        const linkPath = path.join(a.home, 'l', link);
        try {
          await fsp.mkdir(tmp, { mode: 0o711 });
          const diff = path.join(tmp, 'diff');
          await fsp.mkdir(diff, { mode: 0o755 });
          if (a.idMaps) await fsp.chown(diff, a.rootUid, a.rootGid);
          await fsp.mkdir(path.join(tmp, 'work'), { mode: 0o700 });
          await fsp.mkdir(path.join(tmp, 'merged'), { mode: 0o700 });
          await fsp.symlink(`../layers/${id}/diff`, linkPath);
          const rec: LayerRecord = { schema: LAYER_SCHEMA, version: 1, id, parent, rw, created: new Date().toISOString(), link };
          await writeFileAtomic(path.join(tmp, 'layer.json'), `${JSON.stringify(rec, null, 1)}\n`);
          await fsp.rename(tmp, final);
          await fsyncDir(path.dirname(final));
          a.layers.set(id, { rec, refs: 0 });
          if (parent !== '') {
            let s = a.children.get(parent);
            if (!s) a.children.set(parent, (s = new Set()));
            s.add(id);
          }
        } catch (e) {
          await fsp.rm(linkPath, { force: true });
          await removeTree(tmp).catch(() => undefined);
          throw e;
        }
      }),
    );
  }

  async remove(id: string): Promise<void> {
    const a0 = this.need();
    const parent = a0.layers.get(id)?.rec.parent ?? '';
    await this.gate.shared(() =>
      this.locks.with([id, parent], async () => {
        const a = this.need();
        const l = a.layers.get(id);
        if (!l) {
          // idempotent, as overlay2: dockerd may repeat a Remove that completed before a crash
          if (existsSync(this.layerDir(a, id))) {
            this.log.warn({ id }, 'Remove of a layer directory without a record; left untouched');
          } else this.log.info({ id }, 'Remove of a layer that does not exist; nothing to do');
          return;
        }
        const kids = a.children.get(id);
        if (kids && kids.size > 0) {
          throw new FailedPreconditionError(`cannot remove layer ${id}: ${kids.size} layer(s) are based on it (${[...kids].slice(0, 3).join(', ')})`);
        }
        const merged = this.mergedDir(a, id);
        if (this.isMounted(merged)) {
          this.log.warn({ id, refs: l.refs }, 'Remove of a mounted layer; unmounting it');
          umount(merged, MNT_DETACH);
        }
        if (l.rec.thin) await this.unmountIdmapped(a, l.rec.thin);
        const dir = this.layerDir(a, id);
        const trash = path.join(a.home, 'layers', `.removing-${id}-${randomBytes(4).toString('hex')}`);
        await fsp.rename(dir, trash);
        await fsyncDir(path.dirname(dir));
        a.layers.delete(id);
        a.children.delete(id);
        if (l.rec.parent !== '') a.children.get(l.rec.parent)?.delete(id);
        for (const ln of [l.rec.link, ...(l.rec.thin?.lowers.map((t) => t.link) ?? [])]) await fsp.rm(path.join(a.home, 'l', ln), { force: true });
        try {
          await removeTree(trash);
        } catch (e) {
          this.log.error({ err: e, dir: trash }, 'cannot remove the data of a removed layer; it is removed at the next start');
        }
        if (l.rec.thin) await this.gcMasks(a);
      }),
    );
  }

  /** Remove mask directories no thin layer uses any more. */
  private async gcMasks(a: Active): Promise<void> {
    await this.locks.with([MASKS_LOCK], () => this.gcMasksLocked(a));
  }

  private async gcMasksLocked(a: Active): Promise<void> {
    const masksDir = path.join(a.home, 'masks');
    const used = new Set<string>();
    for (const l of a.layers.values()) {
      for (const t of l.rec.thin?.lowers ?? []) if (isInside(masksDir, t.dir)) used.add(path.relative(masksDir, t.dir).split(path.sep)[0]!);
    }
    let removed = 0;
    for (const name of await fsp.readdir(masksDir)) {
      if (used.has(name)) continue;
      try {
        await removeTree(path.join(masksDir, name));
        removed++;
      } catch (e) {
        this.log.warn({ err: e, name }, 'cannot remove an unused mask directory');
      }
    }
    if (removed) {
      await a.facts.prune((f) => !f.masks || existsSync(f.masks));
      this.log.info({ removed }, 'removed unused whiteout masks');
    }
  }

  async get(id: string, mountLabel = ''): Promise<string> {
    const a0 = this.need();
    if (mountLabel !== '') this.log.debug({ id, mountLabel }, 'MountLabel ignored (SELinux labels are not applied to overlay mounts by this driver)');
    return this.gate.shared(() =>
      this.locks.with([id], async () => {
        const a = this.need();
        if (a !== a0) throw new UnavailableError('graph driver was re-initialised during the request');
        const l = this.must(a, id);
        if (this.stackOf(a, l.rec.parent).length === 0) return this.diffDir(a, id); // nothing below: no mount, no count (as overlay2)
        const merged = this.mergedDir(a, id);
        if (l.refs > 0 && this.isMounted(merged)) {
          l.refs++;
        } else {
          if (!this.isMounted(merged)) await this.mountLayer(a, l);
          l.refs = 1;
        }
        await this.saveRefs(a, l);
        return merged;
      }),
    );
  }

  async put(id: string): Promise<void> {
    const a0 = this.need();
    await this.gate.shared(() =>
      this.locks.with([id], async () => {
        const a = this.need();
        if (a !== a0) throw new UnavailableError('graph driver was re-initialised during the request');
        const l = this.must(a, id);
        if (this.stackOf(a, l.rec.parent).length === 0) return;
        if (l.refs > 1) {
          l.refs--;
        } else {
          if (l.refs === 0) this.log.debug({ id }, 'Put without a matching Get');
          l.refs = 0;
          const merged = this.mergedDir(a, id);
          if (this.isMounted(merged)) umount(merged, MNT_DETACH);
        }
        await this.saveRefs(a, l);
      }),
    );
  }

  exists(id: string): boolean {
    return this.active?.layers.has(id) ?? false;
  }

  getMetadata(id: string): Record<string, string> {
    const a = this.need();
    const l = this.must(a, id);
    const dir = this.layerDir(a, id);
    const md: Record<string, string> = {
      UpperDir: path.join(dir, 'diff'),
      WorkDir: path.join(dir, 'work'),
      MergedDir: path.join(dir, 'merged'),
    };
    const stack = this.stackOf(a, l.rec.parent);
    if (stack.length > 0) md['LowerDir'] = stack.map((s) => s.real).join(':');
    if (l.rec.thin) {
      md['CvmfsThinImage'] = 'true';
      md['CvmfsLayers'] = String(l.rec.thin.layers);
      md['CvmfsLowerDir'] = l.rec.thin.lowers.map((t) => t.dir).join(':');
      if (l.rec.thin.origin) md['CvmfsOrigin'] = l.rec.thin.origin;
    }
    return md;
  }

  /** dockerd is shutting down: unmount everything, keep all data. */
  async cleanup(): Promise<void> {
    const a = this.active;
    if (!a) return;
    await this.gate.exclusive(async () => {
      const mounts = new Set(readMountinfo().map((m) => m.mountPoint));
      let n = 0;
      for (const [id, l] of a.layers) {
        const merged = this.mergedDir(a, id);
        if (mounts.has(merged)) {
          try {
            umount(merged, MNT_DETACH);
            n++;
          } catch (e) {
            this.log.warn({ err: e, id }, 'Cleanup: cannot unmount a layer');
          }
        }
        if (l.refs !== 0) {
          l.refs = 0;
          await this.saveRefs(a, l);
        }
        if (l.rec.thin) await this.unmountIdmapped(a, l.rec.thin);
      }
      a.userns?.close();
      a.userns = undefined;
      this.log.info({ unmounted: n }, 'GraphDriver.Cleanup: layers unmounted, data kept');
    });
  }

  async applyDiff(id: string, parent: string, body: Readable): Promise<number> {
    const a0 = this.need();
    return this.gate.shared(() =>
      this.locks.with([id], async () => {
        const a = this.need();
        if (a !== a0) throw new UnavailableError('graph driver was re-initialised during the request');
        const l = this.must(a, id);
        this.checkParent(l, parent, 'ApplyDiff');
        const diff = this.diffDir(a, id);
        if (l.rec.thin || (await fsp.readdir(diff)).length > 0 || this.isMounted(this.mergedDir(a, id))) {
          throw new FailedPreconditionError(`ApplyDiff to layer ${id}: the layer already has content`);
        }
        // the extractor may stop reading early (a refused entry): it reads from a pipe of its own, and the
        // request body is always read to its end, so that dockerd gets our answer rather than a broken pipe
        const pipe = new PassThrough({ highWaterMark: 1 << 20 });
        body.pipe(pipe);
        const bodyDone = new Promise<void>((resolve) => {
          body.once('end', resolve);
          body.once('close', resolve);
          body.once('error', () => resolve());
        });
        const newLinks: string[] = [];
        try {
          const res = await extractLayer(pipe, {
            dest: diff,
            whiteouts: 'overlay',
            ...(a.idMaps ? { idMap: a.idMaps } : {}),
          });
          body.unpipe(pipe);
          body.resume();
          await bodyDone;
          let thin: ThinRecord | undefined;
          if (a.thinImages && l.rec.parent === '') {
            // masks are shared between thin layers: resolving and recording must not interleave with their GC
            await this.locks.with([MASKS_LOCK], async () => {
              thin = await this.detectThin(a, id, newLinks);
              if (!thin) return;
              const rec: LayerRecord = { ...l.rec, thin };
              await writeFileAtomic(path.join(this.layerDir(a, id), 'layer.json'), `${JSON.stringify(rec, null, 1)}\n`);
              l.rec = rec;
            });
          }
          const size = await dirSize(diff);
          this.log.debug({ id, entries: res.entries, size, thin: !!thin }, 'ApplyDiff');
          return size;
        } catch (e) {
          body.unpipe(pipe);
          pipe.destroy();
          body.resume();
          await bodyDone;
          for (const ln of newLinks) await fsp.rm(path.join(a.home, 'l', ln), { force: true });
          // leave the layer as Create made it: dockerd removes it after a failed ApplyDiff, other clients may retry
          try {
            await removeTree(diff);
            await fsp.mkdir(diff, { mode: 0o755 });
            if (a.idMaps) await fsp.chown(diff, a.rootUid, a.rootGid);
          } catch (e2) {
            this.log.error({ err: e2, id }, 'cannot reset the layer after a failed ApplyDiff');
          }
          throw e;
        }
      }),
    );
  }

  /**
   * A parentless layer whose root holds exactly one file, a thin manifest, is
   * a thin image: resolve its CVMFS layers into the lowers of the layers above.
   */
  private async detectThin(a: Active, id: string, newLinks: string[]): Promise<ThinRecord | undefined> {
    const thin = readThinLayer(this.diffDir(a, id), a.location);
    if (!thin) return undefined;
    const m = thin.manifest;
    const resolved = await a.cvmfs.resolveThin(m);
    const lowers: ThinLower[] = [];
    for (const dir of resolved.dirs) {
      const link = this.allocLink(a);
      await fsp.symlink(dir, path.join(a.home, 'l', link));
      newLinks.push(link);
      lowers.push({ link, dir });
    }
    const how = [...new Set(resolved.how)];
    this.log.info({ id, layers: m.layers.length, lowers: lowers.length, how, origin: m.origin }, 'thin image layer: its children mount its CVMFS layers');
    return { manifest: thin.file, origin: m.origin, layers: m.layers.length, how, lowers };
  }

  async diff(id: string, parent: string): Promise<Readable> {
    const a = this.need();
    const l = this.must(a, id);
    this.checkParent(l, parent, 'Diff');
    return packDirectory(this.diffDir(a, id), { whiteouts: 'overlay', ...(a.idMaps ? { idMap: a.idMaps } : {}) });
  }

  async changes(id: string, parent: string): Promise<Change[]> {
    const a = this.need();
    const l = this.must(a, id);
    this.checkParent(l, parent, 'Changes');
    const stack = this.stackOf(a, l.rec.parent);
    return computeChanges(
      fsTree(this.diffDir(a, id)),
      stack.map((s) => fsTree(s.real)),
    );
  }

  async diffSize(id: string, parent: string): Promise<number> {
    const a = this.need();
    const l = this.must(a, id);
    this.checkParent(l, parent, 'DiffSize');
    return dirSize(this.diffDir(a, id));
  }

  /** Plugin stop: wait for running requests. Never unmounts or deletes anything. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.gate.drain();
    this.active?.userns?.close();
  }

  /** For tests and Status: the records. */
  records(): LayerRecord[] {
    return [...(this.active?.layers.values() ?? [])].map((l) => l.rec);
  }
}

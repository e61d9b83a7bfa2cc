/**
 * The snapshotter: containerd's Snapshots semantics (snapshots/overlay +
 * snapshots/storage) over local writable layers, plus CVMFS thin images and
 * remote layers. Protocol-free: the gRPC edge (service.ts) maps requests and
 * errors. Every method either fully succeeds or leaves no state behind.
 */
import { existsSync, lchownSync, mkdirSync, promises as fsp, rmSync, statSync, symlinkSync } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import type { CvmfsLocation } from '../core/config.js';
import { CvmfsLayers } from '../core/cvmfs/layers.js';
import { layerRootfs } from '../core/cvmfs/layout.js';
import { parseDigest } from '../core/digest.js';
import {
  AlreadyExistsError,
  FailedPreconditionError,
  InternalError,
  InvalidArgumentError,
  NotFoundError,
  UnavailableError,
} from '../core/errors.js';
import { diskUsage, ensureSymlink, readMountinfo, removeTree, unlinkIfExists, type Usage } from '../core/fsutil.js';
import { Gate } from '../core/gate.js';
import { KeyedMutex } from '../core/keyed-mutex.js';
import { checkOverlayPath, computeMounts, type LowerDir, type Mount } from '../core/mounts.js';
import { readThinLayer, type ThinLayerFile } from '../core/thin/layer.js';
import { type Kind, MetaStore, type SnapshotRecord, type Time } from './metastore.js';

export const LABEL_SNAPSHOT_REF = 'containerd.io/snapshot.ref';
export const LABEL_LAYER_DIGEST = 'containerd.io/snapshot/cri.layer-digest';
export const LABEL_REMOTE = 'containerd.io/snapshot/remote';
/** containerd's labels.Validate limit. */
export const MAX_LABEL_SIZE = 4096;

export interface Info {
  name: string;
  parent: string;
  kind: Kind;
  created: Time;
  updated: Time;
  labels: Record<string, string>;
}

export interface SnapshotterOptions {
  root: string;
  location: CvmfsLocation;
  /** Recognise thin images (default true). */
  thinImages?: boolean;
  /** Serve layers found in CVMFS as remote snapshots (default true). */
  remoteLayers?: boolean;
  log: Logger;
  /** Called when the metadata store cannot commit: the process must stop. */
  onFatal?: (e: Error) => void;
}

/**
 * Strictly increasing wall-clock timestamps with sub-microsecond resolution
 * (clients compare them with their own clock: Date.now()'s milliseconds are
 * too coarse). Re-anchored to the system clock if the two drift apart.
 */
class Clock {
  private last = 0n;
  now(): Time {
    let ms = performance.timeOrigin + performance.now();
    const wall = Date.now();
    if (Math.abs(ms - wall) > 20) ms = wall;
    let t = BigInt(Math.floor(ms * 1000)) * 1000n;
    if (t <= this.last) t = this.last + 1n;
    this.last = t;
    return [Number(t / 1_000_000_000n), Number(t % 1_000_000_000n)];
  }
}

function validateLabels(labels: Record<string, string>): void {
  for (const [k, v] of Object.entries(labels)) {
    if (Buffer.byteLength(k) + Buffer.byteLength(v) > MAX_LABEL_SIZE) {
      throw new InvalidArgumentError(`label key and value greater than maximum size (${MAX_LABEL_SIZE} bytes), key: ${k.slice(0, 64)}`);
    }
  }
}

function cleanLabels(labels: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(labels)) if (v !== '') out[k] = v;
  return out;
}

const linkName = (n: number) => n.toString(36);

export class Snapshotter {
  private readonly clock = new Clock();
  private readonly locks = new KeyedMutex();
  private readonly gate = new Gate();
  private readonly layers: CvmfsLayers;
  private readonly snapshotsDir: string;
  private readonly workDirs: string;
  private readonly linksDir: string;
  private readonly masksDir: string;
  private readonly indexOff: boolean;
  private readonly thinImages: boolean;
  private readonly remoteLayers: boolean;
  private readonly log: Logger;
  private closed = false;

  private constructor(
    private readonly opts: SnapshotterOptions,
    private readonly store: MetaStore,
  ) {
    this.log = opts.log;
    this.snapshotsDir = path.join(opts.root, 'snapshots');
    this.workDirs = path.join(opts.root, 'work');
    this.linksDir = path.join(opts.root, 'l');
    this.masksDir = path.join(opts.root, 'masks');
    this.indexOff = existsSync('/sys/module/overlay/parameters/index');
    this.thinImages = opts.thinImages ?? true;
    this.remoteLayers = opts.remoteLayers ?? true;
    this.layers = new CvmfsLayers(opts.location, this.masksDir, store.layersCache, opts.log);
  }

  static async open(opts: SnapshotterOptions): Promise<Snapshotter> {
    const root = path.resolve(opts.root);
    checkOverlayPath(root, 'root directory');
    for (const d of ['snapshots', 'work', 'l', 'masks']) await fsp.mkdir(path.join(root, d), { recursive: true, mode: 0o700 });
    await fsp.chmod(root, 0o700);
    if (existsSync(path.join(root, 'snapshotter', 'metadata.db'))) {
      opts.log.warn(
        { dir: path.join(root, 'snapshotter') },
        'found data of the previous containerd-cvmfs-grpc snapshotter; it is left untouched and not used: remove images pulled with it (ctr images rm) so that containerd pulls them again',
      );
    }
    const store = await MetaStore.open(path.join(root, 'metadata'), opts.onFatal ?? (() => undefined));
    const s = new Snapshotter({ ...opts, root }, store);
    await s.recover();
    if (!existsSync(opts.location.absoluteMountpoint)) {
      opts.log.warn({ path: opts.location.absoluteMountpoint }, 'CVMFS repository mountpoint does not exist (is CVMFS mounted?); thin images and remote layers will not be available until it is');
    }
    return s;
  }

  /** After a restart: ids above any directory on disk, every recorded link present. */
  private async recover(): Promise<void> {
    for (const d of [this.snapshotsDir, this.workDirs]) {
      for (const name of await fsp.readdir(d)) {
        const n = Number(name);
        if (Number.isSafeInteger(n)) this.store.bumpNextId(n);
      }
    }
    let fixed = 0;
    for (const r of this.store.all()) {
      for (const [ln, target] of Object.entries(r.links)) if (await ensureSymlink(path.join(this.linksDir, ln), target)) fixed++;
    }
    if (fixed) this.log.warn({ fixed }, 'recreated missing short links');
    this.log.info({ snapshots: this.store.size }, 'metadata loaded');
  }

  private check(): void {
    if (this.closed) throw new UnavailableError('snapshotter is shutting down');
  }

  private info(r: SnapshotRecord): Info {
    return { name: r.name, parent: r.parent, kind: r.kind, created: r.created, updated: r.updated, labels: { ...r.labels } };
  }

  private must(name: string): SnapshotRecord {
    const r = this.store.get(name);
    if (!r) throw new NotFoundError(`snapshot ${name} does not exist`);
    return r;
  }

  /** A snapshot's own directory (overlay upperdir, or the bind source). */
  private fsDir(id: number): string {
    return path.join(this.snapshotsDir, String(id));
  }

  /** An active snapshot's overlay workdir (kept apart: one mkdir less than snapshots/<id>/{fs,work}). */
  private workDir(id: number): string {
    return path.join(this.workDirs, String(id));
  }

  /** Lower directories of the chain starting at `parent`, nearest first. */
  private lowersOf(parent: string): { lowers: LowerDir[]; external: string[] } {
    const lowers: LowerDir[] = [];
    const external: string[] = [];
    let n = parent;
    const seen = new Set<string>();
    while (n !== '') {
      if (seen.has(n)) throw new InternalError(`parent chain of ${parent} loops at ${n}`);
      seen.add(n);
      const r = this.store.get(n);
      if (!r) throw new InternalError(`parent chain of ${parent} is broken: ${n} is missing`);
      for (const ln of r.stack) {
        const real = r.links[ln];
        if (real === undefined) throw new InternalError(`snapshot ${n} lists link ${ln} it does not own`);
        lowers.push({ overlay: path.join(this.linksDir, ln), real });
        if (r.source !== 'local') external.push(real);
      }
      if (r.terminal) break;
      n = r.parent;
    }
    return { lowers, external };
  }

  private async mountsFor(r: SnapshotRecord): Promise<Mount[]> {
    const { lowers, external } = this.lowersOf(r.parent);
    // a CVMFS layer that went away gives a clear error rather than a failed mount
    await Promise.all(
      external.map(async (dir) => {
        try {
          await fsp.access(dir);
        } catch {
          throw new UnavailableError(`layer directory ${dir} of snapshot ${r.name} is not available (is CVMFS mounted?)`, 'CVMFS_THIN_LAYER_UNAVAILABLE');
        }
      }),
    );
    return computeMounts({
      readonly: r.kind === 'view',
      fs: this.fsDir(r.id),
      work: r.kind === 'active' ? this.workDir(r.id) : undefined,
      lowers,
      indexOff: this.indexOff,
    });
  }

  async prepare(key: string, parent: string, labels: Record<string, string>): Promise<Mount[]> {
    return this.create('active', key, parent, labels);
  }

  async view(key: string, parent: string, labels: Record<string, string>): Promise<Mount[]> {
    return this.create('view', key, parent, labels);
  }

  private async create(kind: 'active' | 'view', key: string, parent: string, labels: Record<string, string>): Promise<Mount[]> {
    this.check();
    if (key === '') throw new InvalidArgumentError('snapshot key must not be empty');
    validateLabels(labels);
    return this.gate.shared(() =>
      this.locks.with([key, parent], async () => {
        if (this.store.get(key)) throw new AlreadyExistsError(`snapshot ${key} already exists`);
        let p: SnapshotRecord | undefined;
        if (parent !== '') {
          p = this.store.get(parent);
          if (!p) throw new NotFoundError(`parent snapshot ${parent} does not exist`);
          if (p.kind !== 'committed') throw new InvalidArgumentError(`parent ${parent} is not a committed snapshot (it is ${p.kind})`);
        }
        if (kind === 'active' && this.remoteLayers && labels[LABEL_SNAPSHOT_REF]) {
          const target = await this.tryRemote(parent, labels);
          if (target) throw new AlreadyExistsError(`target snapshot ${JSON.stringify(target)}: already exists`, 'CVMFS_THIN_REMOTE_SNAPSHOT');
        }
        const id = this.store.allocId();
        const links: Record<string, string> = {};
        try {
          // local directories: synchronous calls (a few µs each) beat a thread-pool round trip each
          const fs = this.fsDir(id);
          mkdirSync(fs, { mode: 0o755 });
          if (kind === 'active') {
            mkdirSync(this.workDir(id), { mode: 0o711 });
            links[linkName(id)] = fs;
            symlinkSync(fs, path.join(this.linksDir, linkName(id)));
          }
          if (p) {
            // like containerd's overlay: the new upper dir takes the owner of the top lower
            const top = this.lowersOf(parent).lowers[0];
            if (top) {
              // the top lower may be on CVMFS: never block the event loop on it
              const st = p.source === 'local' && top.real.startsWith(this.snapshotsDir) ? statSync(top.real) : await fsp.stat(top.real);
              if (st.uid !== 0 || st.gid !== 0) lchownSync(fs, st.uid, st.gid);
            }
          }
          const now = this.clock.now();
          const rec: SnapshotRecord = {
            name: key,
            kind,
            parent,
            id,
            created: now,
            updated: now,
            labels: cleanLabels(labels),
            size: 0,
            inodes: 0,
            links,
            stack: [],
            terminal: false,
            source: 'local',
          };
          await this.store.write({ put: [rec] });
          return await this.mountsFor(rec);
        } catch (e) {
          if (!this.store.get(key)) await this.discard(id, links);
          throw e;
        }
      }),
    );
  }

  /** Remove a data directory and links that no record owns (failed creation). */
  private async discard(id: number, links: Record<string, string>): Promise<void> {
    for (const ln of Object.keys(links)) rmSync(path.join(this.linksDir, ln), { force: true });
    for (const dir of [this.fsDir(id), this.workDir(id)]) {
      await removeTree(dir).catch((e: unknown) => this.log.error({ err: e, dir }, 'could not remove directory of a failed snapshot; Cleanup will retry'));
    }
  }

  /**
   * The remote-snapshot protocol: if the layer named by the CRI labels is in
   * CVMFS, commit a snapshot backed by it (name = target chain ID) and return
   * its name; null to fall back to a normal local layer.
   */
  private async tryRemote(parent: string, labels: Record<string, string>): Promise<string | null> {
    const target = labels[LABEL_SNAPSHOT_REF]!;
    const digestLabel = labels[LABEL_LAYER_DIGEST];
    if (!digestLabel) {
      this.log.debug({ target }, 'no cri.layer-digest label: normal layer');
      return null;
    }
    const d = parseDigest(digestLabel);
    if (!d) {
      this.log.warn({ target, label: digestLabel }, 'malformed cri.layer-digest label: normal layer');
      return null;
    }
    // already served for this chain (another namespace, a second pull)
    for (const c of this.store.children(parent)) {
      const r = this.store.get(c);
      if (r && r.kind === 'committed' && r.source === 'remote' && r.labels[LABEL_SNAPSHOT_REF] === target) return r.name;
    }
    const loc = this.opts.location;
    const id = this.store.allocId();
    const links: Record<string, string> = {};
    try {
      const dir = await this.layers.locate(loc.repository, path.relative(loc.absoluteMountpoint, layerRootfs(loc.absoluteMountpoint, d.hex)), LABEL_LAYER_DIGEST);
      if (!dir) {
        this.log.info({ target, layer: d.hex }, 'layer not in CVMFS: normal layer (containerd downloads it)');
        return null;
      }
      // a DUCC chain for the whole stack, when every layer below is remote too
      const hexes: string[] = [];
      let allRemote = true;
      for (let n = parent; n !== ''; ) {
        const r = this.store.get(n);
        if (!r?.layerDigest) {
          allRemote = false;
          break;
        }
        hexes.unshift(r.layerDigest.slice(7));
        n = r.parent;
      }
      hexes.push(d.hex);
      const chain = allRemote && hexes.length > 1 ? await this.layers.findChain(loc.repository, hexes) : null;
      const resolved = chain ? { dirs: [chain], flattened: true, how: ['chain'] } : await this.layers.layerDirs(dir, loc.absoluteMountpoint, d.hex, parent === '');
      const stack: string[] = [];
      for (const target of resolved.dirs) {
        const ln = linkName(stack.length === 0 ? id : this.store.allocId());
        links[ln] = target;
        await fsp.symlink(target, path.join(this.linksDir, ln));
        stack.push(ln);
      }
      let name = target;
      if (this.store.get(name)) name = `${target}@${id.toString(36)}`;
      const now = this.clock.now();
      const rec: SnapshotRecord = {
        name,
        kind: 'committed',
        parent,
        id,
        created: now,
        updated: now,
        labels: { ...cleanLabels(labels), [LABEL_REMOTE]: 'remote snapshot' },
        size: 0,
        inodes: 0,
        links,
        stack,
        terminal: resolved.flattened,
        source: 'remote',
        layerDigest: `sha256:${d.hex}`,
      };
      await this.store.write({ put: [rec] });
      this.log.info({ target, name, layer: d.hex, how: resolved.how }, 'remote snapshot prepared from CVMFS');
      return name;
    } catch (e) {
      for (const ln of Object.keys(links)) await fsp.rm(path.join(this.linksDir, ln), { force: true });
      this.log.warn({ err: e, target, layer: d.hex }, 'could not serve layer from CVMFS: normal layer');
      return null;
    }
  }

  async mounts(key: string): Promise<Mount[]> {
    this.check();
    const r = this.must(key);
    if (r.kind === 'committed') throw new FailedPreconditionError(`snapshot ${key} is committed: only active and view snapshots have mounts`);
    return this.mountsFor(r);
  }

  async commit(name: string, key: string, labels: Record<string, string>, rebaseParent = ''): Promise<void> {
    this.check();
    if (name === '') throw new InvalidArgumentError('committed snapshot name must not be empty');
    validateLabels(labels);
    return this.gate.shared(() =>
      this.locks.with([name, key], async () => {
        if (this.store.get(name)) throw new AlreadyExistsError(`snapshot ${name} already exists`);
        const r = this.store.get(key);
        if (!r) throw new NotFoundError(`snapshot ${key} does not exist`);
        if (r.kind !== 'active') throw new FailedPreconditionError(`snapshot ${key} is ${r.kind === 'view' ? 'a view' : 'committed'}: only active snapshots can be committed`);
        if (rebaseParent !== '' && rebaseParent !== r.parent) {
          throw new FailedPreconditionError(`commit of ${key} onto parent ${rebaseParent}: rebase is not supported (the snapshot's parent is ${JSON.stringify(r.parent)})`);
        }
        const fs = this.fsDir(r.id);
        const usage = await diskUsage(fs);
        const now = this.clock.now();
        const own = linkName(r.id);
        let rec: SnapshotRecord = {
          ...r,
          name,
          kind: 'committed',
          created: now,
          updated: now,
          labels: cleanLabels(labels),
          size: usage.size,
          inodes: usage.inodes,
          stack: r.links[own] ? [own] : [],
          terminal: false,
          source: 'local',
        };
        const newLinks: string[] = [];
        try {
          if (r.parent === '' && this.thinImages) {
            const thin = await this.thinStack(fs, name, newLinks);
            if (thin) rec = { ...rec, ...thin, links: { ...rec.links, ...thin.links } };
          }
          await this.store.write({ del: [key], put: [rec] });
        } catch (e) {
          for (const ln of newLinks) await fsp.rm(path.join(this.linksDir, ln), { force: true });
          throw e;
        }
      }),
    );
  }

  /**
   * If a parentless layer is a thin image (its root holds only a thin
   * manifest), resolve the CVMFS layers it lists into the snapshot's stack.
   */
  private async thinStack(fs: string, name: string, newLinks: string[]): Promise<Partial<SnapshotRecord> | null> {
    let thin: ThinLayerFile | null;
    try {
      thin = readThinLayer(fs, this.opts.location);
    } catch (err) {
      this.log.warn({ err, snapshot: name }, 'invalid thin image manifest');
      throw err;
    }
    if (!thin) return null;
    const m = thin.manifest;
    const resolved = await this.layers.resolveThin(m);
    const links: Record<string, string> = {};
    const stack: string[] = [];
    for (const dir of resolved.dirs) {
      const ln = linkName(this.store.allocId());
      await fsp.symlink(dir, path.join(this.linksDir, ln));
      newLinks.push(ln);
      links[ln] = dir;
      stack.push(ln);
    }
    this.log.info({ snapshot: name, layers: m.layers.length, lowers: stack.length, how: [...new Set(resolved.how)], origin: m.origin }, 'thin image: mounting its CVMFS layers');
    return { stack, terminal: true, source: 'thin', origin: m.origin, links };
  }

  async remove(key: string): Promise<void> {
    this.check();
    return this.gate.shared(async () => {
      const r0 = this.must(key);
      await this.locks.with([key, r0.parent], async () => {
        const r = this.must(key);
        const kids = this.store.children(key);
        if (kids.size > 0) {
          throw new FailedPreconditionError(`cannot remove snapshot ${key}: it has ${kids.size} child snapshot(s) (${[...kids].slice(0, 3).join(', ')})`);
        }
        await this.store.write({ del: [key] });
        // data goes after the record: a crash in between leaves an orphan for Cleanup
        this.queueRemoval(r);
      });
    });
  }

  private removalQueue: SnapshotRecord[] = [];
  private removalRun: Promise<void> | null = null;

  /**
   * Delete removed snapshots' data in the background, started a little later so
   * that it never delays answers to requests: batched (one mount table read per
   * batch), in slices of a few records between which pending requests are
   * served. Empty directories go with one synchronous rmdir each (cheaper than a
   * thread-pool round trip); trees with content through the thread pool.
   */
  private queueRemoval(r: SnapshotRecord): void {
    this.removalQueue.push(r);
    if (this.removalRun) return;
    this.removalRun = new Promise<void>((resolve) => setTimeout(resolve, 20))
      .then(async () => {
        while (this.removalQueue.length) {
          const batch = this.removalQueue.splice(0, 64);
          const mounts = readMountinfo();
          for (let i = 0; i < batch.length; i += 8) {
            await Promise.all(batch.slice(i, i + 8).map((rec) => this.removeData(rec, mounts)));
            await new Promise<void>((resolve) => setImmediate(resolve));
          }
        }
      })
      .finally(() => {
        this.removalRun = null;
      });
  }

  private async removeData(rec: SnapshotRecord, mounts: ReturnType<typeof readMountinfo>): Promise<void> {
    try {
      for (const ln of Object.keys(rec.links)) unlinkIfExists(path.join(this.linksDir, ln));
      if (rec.source === 'remote') return;
      for (const dir of [this.fsDir(rec.id), this.workDir(rec.id)]) await removeTree(dir, mounts);
    } catch (e) {
      this.log.error({ err: e, snapshot: rec.name }, 'could not remove snapshot data; Cleanup will retry');
    }
  }

  /** Wait for background removals (Cleanup, close, tests). */
  async settled(): Promise<void> {
    while (this.removalRun) await this.removalRun;
  }

  stat(key: string): Info {
    this.check();
    return this.info(this.must(key));
  }

  async update(info: Info | { name: string; labels: Record<string, string> }, paths: readonly string[]): Promise<Info> {
    this.check();
    const name = info.name;
    if (name === '') throw new InvalidArgumentError('snapshot name must not be empty');
    const labels = info.labels ?? {};
    for (const p of paths) {
      if (p !== 'labels' && !p.startsWith('labels.')) {
        throw new InvalidArgumentError(`cannot update ${JSON.stringify(p)} field on snapshot ${name}: only labels can be updated`);
      }
    }
    return this.gate.shared(() =>
      this.locks.with([name], async () => {
        const r = this.must(name);
        let next: Record<string, string>;
        if (paths.length === 0 || paths.includes('labels')) next = { ...labels };
        else {
          next = { ...r.labels };
          for (const p of paths) {
            const k = p.slice('labels.'.length);
            const v = labels[k];
            if (v === undefined || v === '') delete next[k];
            else next[k] = v;
          }
        }
        next = cleanLabels(next);
        validateLabels(next);
        const rec: SnapshotRecord = { ...r, labels: next, updated: this.clock.now() };
        await this.store.write({ put: [rec] });
        return this.info(rec);
      }),
    );
  }

  list(filter: (i: Info) => boolean): Info[] {
    this.check();
    const out: Info[] = [];
    for (const r of this.store.all()) {
      const i = this.info(r);
      if (filter(i)) out.push(i);
    }
    // the order containerd's bolt store walks in
    return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  async usage(key: string): Promise<Usage> {
    this.check();
    const r = this.must(key);
    if (r.kind === 'active') return diskUsage(this.fsDir(r.id));
    if (r.kind === 'view') return { size: 0, inodes: 0 };
    return { size: r.size, inodes: r.inodes };
  }

  /** Remove data directories, links and masks that no snapshot record owns. */
  async cleanup(): Promise<{ dirs: number; links: number; masks: number }> {
    this.check();
    await this.settled();
    return this.gate.exclusive(async () => {
      const ids = new Set<string>();
      const links = new Set<string>();
      const masks = new Set<string>();
      for (const r of this.store.all()) {
        ids.add(String(r.id));
        for (const [ln, target] of Object.entries(r.links)) {
          links.add(ln);
          if (target.startsWith(this.masksDir + path.sep)) masks.add(path.relative(this.masksDir, target).split(path.sep)[0]!);
        }
      }
      const mounts = readMountinfo();
      let nd = 0;
      let nl = 0;
      let nm = 0;
      for (const parent of [this.snapshotsDir, this.workDirs]) {
        for (const name of await fsp.readdir(parent)) {
          if (ids.has(name)) continue;
          try {
            await removeTree(path.join(parent, name), mounts);
            nd++;
          } catch (e) {
            this.log.error({ err: e, dir: path.join(parent, name) }, 'cleanup: could not remove orphaned snapshot directory');
          }
        }
      }
      for (const name of await fsp.readdir(this.linksDir)) {
        if (links.has(name)) continue;
        await fsp.rm(path.join(this.linksDir, name), { force: true });
        nl++;
      }
      for (const name of await fsp.readdir(this.masksDir)) {
        if (masks.has(name)) continue;
        try {
          await removeTree(path.join(this.masksDir, name), mounts);
          nm++;
        } catch (e) {
          this.log.error({ err: e, dir: name }, 'cleanup: could not remove unused mask directory');
        }
      }
      if (nm) {
        for (const [k, f] of [...this.store.allFacts()]) if (f.masks && !existsSync(f.masks)) await this.store.dropFacts(k);
      }
      if (nd || nl || nm) this.log.info({ dirs: nd, links: nl, masks: nm }, 'cleanup removed unreferenced data');
      return { dirs: nd, links: nl, masks: nm };
    });
  }

  get count(): number {
    return this.store.size;
  }

  /** Stop: wait for running operations, close the store. Never deletes or unmounts anything. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.gate.drain();
    await this.settled();
    await this.store.close();
  }
}

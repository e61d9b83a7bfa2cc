/**
 * The layer stack core shared by every daemon (containerd snapshotter, Docker
 * graph driver; the volume front-ends use the same host seam): short links,
 * thin-image resolution and linking (returning what to roll back), the CVMFS
 * availability check, whiteout masks and their collection, one layer-facts
 * cache. The daemons are edges over it: they own their records and protocol,
 * this owns how CVMFS layers become overlay lower directories.
 *
 * State under `root`: `l/` short links, `masks/` whiteout masks; the facts
 * cache file is where the daemon says (its metadata directory).
 */
import { existsSync, promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { type CvmfsLocation, repositoryMountpoint } from '../cvmfs/location.js';
import { chainCandidate, CvmfsLayers, type KnownPaths } from './layers.js';
import { CHAIN_MARKER, chainDir, dirtyChainMarker, duccChainIds, layerMarker } from '../cvmfs/layout.js';
import { UnavailableError } from '../errors/errors.js';
import { type MountInfo, removeTree } from '../fs/fsutil.js';
import type { FsProbeOp, FsProbeResult, Host } from '../host/host.js';
import { readThinLayer } from '../thin/layer.js';
import { duccLayerHex, type ThinManifest } from '../thin/manifest.js';
import { FactsFile } from './facts.js';
import { type HotOptions, HotLayers, type HotResult } from './hot.js';
import { unmountHot } from './hot-image.js';
import { type LinkBatch, ShortLinks } from './links.js';
import { CvmfsProbe, cvmfsRootOf } from '../host/probe.js';

export { chainLowers, type ChainLower, type ChainNode } from './chain.js';
export { linkName, ShortLinks } from './links.js';

/** Owner of a CVMFS directory, as the availability check saw it. */
export interface DirOwner {
  uid: number;
  gid: number;
}

interface LayerStackOptions {
  /** State directory holding `l/` and `masks/`. */
  root: string;
  location: CvmfsLocation;
  host: Host;
  log: Logger;
  /** The layer-facts cache file. */
  factsFile: string;
  /** Allocator of short-link numbers (default: the registry's own counter). */
  alloc?: () => number;
  /** Deadline of every CVMFS probe (default 10 s: `cvmfs-timeout`). */
  cvmfsTimeoutMs?: number | undefined;
  /** A CVMFS probe became overdue (the daemon's stall counter). */
  onStall?: (mount: string) => void;
  /** Hot layers of thin images with a profile pack (hot.ts); none when absent. */
  hot?: HotOptions | undefined;
}

/** A thin layer resolved and linked. */
interface ThinLinked {
  /** The manifest's file name in the layer. */
  file: string;
  manifest: ThinManifest;
  /** Its CVMFS lower directories, top first, each with its new short link. */
  lowers: { link: string; dir: string }[];
  how: string[];
  /** The links made: remove them if the caller fails to record the result. */
  links: LinkBatch;
  /** The hot layer asked for (hot.ts), whether or not it came in time. */
  hot?: HotResult | undefined;
}

export class LayerStack {
  readonly links: ShortLinks;
  readonly cvmfs: CvmfsLayers;
  readonly masksDir: string;
  readonly location: CvmfsLocation;
  readonly host: Host;
  /** Every question to CVMFS, with a deadline and off the process (probe.ts). */
  readonly probe: CvmfsProbe;
  private readonly log: Logger;
  private readonly hot: HotLayers | undefined;

  private constructor(
    o: LayerStackOptions,
    readonly facts: FactsFile,
  ) {
    this.location = o.location;
    this.host = o.host;
    this.log = o.log;
    this.masksDir = path.join(o.root, 'masks');
    this.links = new ShortLinks(path.join(o.root, 'l'), o.alloc);
    this.probe = new CvmfsProbe({ host: o.host, log: o.log, timeoutMs: o.cvmfsTimeoutMs, onStall: o.onStall });
    this.cvmfs = new CvmfsLayers(o.location, this.masksDir, facts, o.host, o.log);
    this.hot = o.hot && new HotLayers(this.masksDir, o.host, o.log, o.hot);
  }

  static async open(o: LayerStackOptions): Promise<LayerStack> {
    for (const d of ['l', 'masks']) await fsp.mkdir(path.join(o.root, d), { recursive: true, mode: 0o700 });
    return new LayerStack(o, await FactsFile.open(o.factsFile, o.log));
  }

  /**
   * If the base layer in `dir` is a thin image, resolve the CVMFS layers its
   * manifest lists and link them; null for an ordinary layer. Throws (naming
   * the field) for a bad manifest or a missing layer, leaving nothing behind.
   */
  async linkThin(dir: string, ctx: Record<string, unknown>): Promise<ThinLinked | null> {
    let thin;
    try {
      thin = readThinLayer(dir, this.location);
    } catch (err) {
      this.log.warn({ err, ...ctx }, 'invalid thin image manifest');
      throw err;
    }
    if (!thin) return null;
    const m = thin.manifest;
    // the hot layer (a profile's pack, fetched beside the resolution), for layers of one repository
    const repos = new Set(m.layers.map((l) => l.repository));
    const mp = repositoryMountpoint(this.location, m.layers.at(-1)!.repository);
    const hotJob =
      this.hot && repos.size === 1
        ? this.hot.forStack(
            mp,
            m.layers.map((l) => l.hex),
          )
        : undefined;
    hotJob?.catch(() => undefined);
    // what resolving needs of CVMFS, asked in one batch of the probe helper (with the deadline);
    // the resolver asks the thread pool only for what this did not answer
    const known = await this.askThin(m, `thin image ${String(ctx['snapshot'] ?? ctx['id'] ?? dir)}`);
    const resolved = await this.cvmfs.resolveThin(m, known);
    const hot = await hotJob;
    const dirs = hot?.dir ? [hot.dir, ...resolved.dirs] : resolved.dirs;
    const links = await this.links.link(dirs);
    const lowers = [...links.made].map(([link, d]) => ({ link, dir: d }));
    const how = [...new Set(hot?.dir ? ['hot', ...resolved.how] : resolved.how)];
    this.log.info(
      { ...ctx, layers: m.layers.length, lowers: lowers.length, how, origin: m.origin, ...(hot ? { hot: hot.why, hotMs: hot.ms } : {}) },
      'thin image: its CVMFS layers are the lowers of the layers above',
    );
    return { file: thin.file, manifest: m, lowers, how, links, hot };
  }

  /**
   * A clear Unavailable error, rather than a failed mount or a hung request,
   * when a CVMFS directory went away, its client died (ENOTCONN) or stalls
   * (no answer within the deadline: CVMFS_THIN_CVMFS_STALLED). Per mount
   * point (the part before `/.layers/`, `/.chains/`, `/.flat/`): one statfs,
   * which the FUSE client always answers itself, then a stat of each
   * directory, all in the probe helper (probe.ts). Masks are local. Returns
   * the owner of each directory checked.
   */
  async checkAvailable(dirs: readonly string[], of: string): Promise<Map<string, DirOwner>> {
    const byRoot = new Map<string, string[]>();
    for (const d of dirs) {
      if (d.startsWith(this.masksDir + path.sep)) continue;
      const root = cvmfsRootOf(d);
      byRoot.set(root, [...(byRoot.get(root) ?? []), d]);
    }
    const owners = new Map<string, DirOwner>();
    const devs = new Map<string, number>();
    await Promise.all(
      [...byRoot].map(async ([root, ds]) => {
        const first: FsProbeOp = { op: 'statfs', path: root };
        const ops = ds.map((d): FsProbeOp => ({ op: 'stat', path: d }));
        const r = await this.probe.run(root, ops, `layer directory ${ds[0]} of ${of}`, first);
        const fs = CvmfsProbe.get(r, first);
        if (fs && !fs.ok) throw unavailable(ds[0]!, of, root, fs);
        for (const [i, d] of ds.entries()) {
          const a = CvmfsProbe.get(r, ops[i]!);
          if (!a || !a.ok) throw unavailable(d, of, root, a ?? { ok: false, code: 'EIO', message: 'no answer' });
          if (a.dir === false) throw new UnavailableError(`layer directory ${d} of ${of} is not a directory`, 'CVMFS_THIN_LAYER_UNAVAILABLE');
          owners.set(d, { uid: a.uid ?? 0, gid: a.gid ?? 0 });
          if (a.dev !== undefined && !devs.has(root)) devs.set(root, a.dev);
        }
      }),
    );
    // a hot layer's image mounted through a client that was replaced since: detached (hot-image.ts)
    this.hot?.images.check(dirs, (r) => devs.get(r), byRoot.size === 1 ? [...byRoot.keys()][0] : undefined);
    return owners;
  }

  /**
   * Before CVMFS paths are resolved on the thread pool (thin manifests,
   * remote layers): the mounts of `layers` answer (statfs) within the
   * deadline, and a stat of each layer path has brought its entries into the
   * kernel's cache. A dead client: LAYER_UNAVAILABLE; a stalled one:
   * CVMFS_STALLED. A repository or layer that is not there is left to the
   * resolver, which names it.
   */
  async checkRepositories(layers: readonly { repository: string; rel: string }[], of: string): Promise<void> {
    const byRoot = new Map<string, string[]>();
    for (const l of layers) {
      const mp = repositoryMountpoint(this.location, l.repository);
      byRoot.set(mp, [...(byRoot.get(mp) ?? []), path.join(mp, l.rel)]);
    }
    await Promise.all(
      [...byRoot].map(async ([mp, ds]) => {
        const first: FsProbeOp = { op: 'statfs', path: mp };
        const r = await this.probe.run(
          mp,
          ds.map((d) => ({ op: 'stat', path: d })),
          `${of}: CVMFS repository at ${mp}`,
          first,
        );
        const fs = CvmfsProbe.get(r, first);
        if (fs && !fs.ok && fs.code !== 'ENOENT' && fs.code !== 'ENOTDIR') throw unavailable(mp, of, mp, fs);
      }),
    );
  }

  /**
   * A thin image's CVMFS questions in one probe per mount: statfs (a dead or
   * stalled client fails here, as in checkRepositories), the realpath of the
   * mount and of every layer, and the marker of every layer in the DUCC
   * layout — on a cold client each layer's catalog loads once, 8 at a time,
   * instead of a dozen FUSE round trips per layer on the daemon's thread pool.
   * A stack that may have a chain (layers.ts) asks for the chain first: when
   * it is there, no layer is asked about (a cold client loads the chain's
   * catalogs, not one per layer).
   */
  async askThin(m: ThinManifest, of: string): Promise<KnownPaths> {
    const known: KnownPaths = { real: new Map(), text: new Map() };
    const cand = chainCandidate(m);
    if (cand) {
      const mp = repositoryMountpoint(this.location, cand.repository);
      const id = duccChainIds(cand.hexes).at(-1)!;
      const [chain, dirty] = [chainDir(mp, id), dirtyChainMarker(mp, id)];
      const ops: FsProbeOp[] = [
        { op: 'realpath', path: mp },
        { op: 'realpath', path: chain },
        { op: 'realpath', path: dirty },
        { op: 'read', path: path.join(chain, CHAIN_MARKER), text: true, max: 8 << 20 },
      ];
      await this.askBatch(mp, ops, known, of);
      const [c, d] = [known.real.get(chain), known.real.get(dirty)];
      if (c && 'real' in c && c.dir && d && 'code' in d && d.code === 'ENOENT') return known;
    }
    const byMp = new Map<string, FsProbeOp[]>();
    for (const l of m.layers) {
      const mp = repositoryMountpoint(this.location, l.repository);
      const ops = byMp.get(mp) ?? [{ op: 'realpath', path: mp }];
      ops.push({ op: 'realpath', path: path.join(mp, l.path) });
      if (duccLayerHex(l.path) === l.hex) ops.push({ op: 'read', path: layerMarker(mp, l.hex), text: true, max: 1 << 20 });
      byMp.set(mp, ops);
    }
    await Promise.all([...byMp].map(([mp, ops]) => this.askBatch(mp, ops, known, of)));
    return known;
  }

  /** One probe of `mp` (statfs first), its answers into `known`. */
  private async askBatch(mp: string, ops: FsProbeOp[], known: KnownPaths, of: string): Promise<void> {
    const first: FsProbeOp = { op: 'statfs', path: mp };
    const r = await this.probe.run(mp, ops, `${of}: CVMFS repository at ${mp}`, first);
    const fs = CvmfsProbe.get(r, first);
    if (fs && !fs.ok && fs.code !== 'ENOENT' && fs.code !== 'ENOTDIR') throw unavailable(mp, of, mp, fs);
    for (const o of ops) {
      const a = CvmfsProbe.get(r, o);
      if (!a) continue;
      if (o.op === 'realpath') known.real.set(o.path, a.ok ? { real: a.real!, dir: a.dir === true } : { code: a.code, message: a.message });
      else if (a.ok) known.text.set(o.path, a.text ?? '');
      else if (a.code === 'ENOENT' || a.code === 'ENOTDIR') known.text.set(o.path, null);
    }
  }

  /** Readiness: null when the repository mount answers within the deadline, else why not. Never throws. */
  async cvmfsReady(): Promise<string | null> {
    const mp = this.location.absoluteMountpoint;
    const a = await this.probe.answer(mp, { op: 'statfs', path: mp }, 'readiness');
    if (a === 'stalled') return `${mp} does not answer within ${this.probe.timeoutMs / 1000} s (CVMFS stalled)`;
    if (!a.ok)
      return a.code === 'ENOENT'
        ? `${mp} does not exist (is CVMFS mounted?)`
        : a.code === 'ENOTCONN'
          ? `${mp}: the CVMFS client is not connected (it died; remount it)`
          : `${mp}: ${a.message}`;
    return null;
  }

  /** The mask directory names (under masks/) that `dirs` use. */
  masksUsedBy(dirs: Iterable<string>, into = new Set<string>()): Set<string> {
    for (const d of dirs) if (d.startsWith(this.masksDir + path.sep)) into.add(path.relative(this.masksDir, d).split(path.sep)[0]!);
    return into;
  }

  /** Remove the mask directories not in `used` (names from masksUsedBy) and forget their facts. Returns how many. */
  async collectMasks(used: ReadonlySet<string>, mounts: MountInfo[] = this.host.mountinfo()): Promise<number> {
    let removed = 0;
    for (const name of await fsp.readdir(this.masksDir)) {
      if (used.has(name)) continue;
      // a hot layer this process is fetching or unpacking now (hot.ts); a dead process's are removed
      if (/^hot-[0-9a-f]{64}\.(?:tmp|pack)-(\d+)-/.exec(name)?.[1] === String(process.pid)) continue;
      try {
        const dir = path.join(this.masksDir, name);
        // a hot layer's image (hot-image.ts) is unmounted first: nothing uses it
        if (name.startsWith('hot-')) {
          mounts = unmountHot(this.host, dir, mounts, this.log);
          this.hot?.images.forget(dir);
        }
        await removeTree(dir, mounts);
        removed++;
      } catch (e) {
        this.log.warn({ err: e, name }, 'cannot remove an unused mask directory');
      }
    }
    if (removed) {
      await this.facts.prune((f) => !f.masks || existsSync(f.masks));
      this.log.info({ removed }, 'removed unused whiteout masks');
    }
    return removed;
  }
}

function unavailable(dir: string, of: string, root: string, r: Extract<FsProbeResult, { ok: false }>): UnavailableError {
  const why =
    r.code === 'ENOTCONN'
      ? `its CVMFS client is not connected): the client of ${root} died; mount it again — new containers then work, running ones on it must be restarted`
      : r.code === 'ENOENT' || r.code === 'ENOTDIR'
        ? 'is CVMFS mounted?)'
        : `${r.code}: ${r.message})`;
  return new UnavailableError(`layer directory ${dir} of ${of} is not available (${why}`, 'CVMFS_THIN_LAYER_UNAVAILABLE');
}

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
import type { CvmfsLocation } from '../config.js';
import { CvmfsLayers } from '../cvmfs/layers.js';
import { UnavailableError } from '../errors.js';
import { type MountInfo, removeTree } from '../fsutil.js';
import type { Host } from '../host.js';
import { readThinLayer } from '../thin/layer.js';
import type { ThinManifest } from '../thin/manifest.js';
import { FactsFile } from './facts.js';
import { type LinkBatch, ShortLinks } from './links.js';

export { chainLowers, type ChainLower, type ChainNode } from './chain.js';
export { FactsFile } from './facts.js';
export { type LinkBatch, linkName, ShortLinks } from './links.js';

export interface LayerStackOptions {
  /** State directory holding `l/` and `masks/`. */
  root: string;
  location: CvmfsLocation;
  host: Host;
  log: Logger;
  /** The layer-facts cache file. */
  factsFile: string;
  /** Allocator of short-link numbers (default: the registry's own counter). */
  alloc?: () => number;
}

/** A thin layer resolved and linked. */
export interface ThinLinked {
  /** The manifest's file name in the layer. */
  file: string;
  manifest: ThinManifest;
  /** Its CVMFS lower directories, top first, each with its new short link. */
  lowers: { link: string; dir: string }[];
  how: string[];
  /** The links made: remove them if the caller fails to record the result. */
  links: LinkBatch;
}

export class LayerStack {
  readonly links: ShortLinks;
  readonly cvmfs: CvmfsLayers;
  readonly masksDir: string;
  readonly location: CvmfsLocation;
  readonly host: Host;
  private readonly log: Logger;

  private constructor(
    o: LayerStackOptions,
    readonly facts: FactsFile,
  ) {
    this.location = o.location;
    this.host = o.host;
    this.log = o.log;
    this.masksDir = path.join(o.root, 'masks');
    this.links = new ShortLinks(path.join(o.root, 'l'), o.alloc);
    this.cvmfs = new CvmfsLayers(o.location, this.masksDir, facts, o.log, o.host);
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
    const resolved = await this.cvmfs.resolveThin(m);
    const links = await this.links.link(resolved.dirs);
    const lowers = [...links.made].map(([link, d]) => ({ link, dir: d }));
    const how = [...new Set(resolved.how)];
    this.log.info({ ...ctx, layers: m.layers.length, lowers: lowers.length, how, origin: m.origin }, 'thin image: its CVMFS layers are the lowers of the layers above');
    return { file: thin.file, manifest: m, lowers, how, links };
  }

  /**
   * A clear Unavailable error, rather than a failed mount, when a CVMFS
   * directory went away or its client died. Every directory is checked with
   * access(2) (on the thread pool); the file system of each repository (the
   * part before `/.layers/`, `/.chains/`, `/.flat/`) once through the host's
   * statfs, which answers ENOTCONN for a dead FUSE client. Masks are local.
   */
  async checkAvailable(dirs: readonly string[], of: string): Promise<void> {
    const unavailable = (dir: string, e: unknown) =>
      new UnavailableError(
        `layer directory ${dir} of ${of} is not available (${(e as NodeJS.ErrnoException).code === 'ENOTCONN' ? 'its CVMFS client is not connected' : 'is CVMFS mounted?'})`,
        'CVMFS_THIN_LAYER_UNAVAILABLE',
      );
    const repos = new Map<string, string>();
    for (const d of dirs) {
      if (d.startsWith(this.masksDir + path.sep)) continue;
      const root = /^(.*?)\/\.(?:layers|chains|flat)\//.exec(d)?.[1] ?? d;
      if (!repos.has(root)) repos.set(root, d);
    }
    for (const [root, dir] of repos) {
      try {
        this.host.statfsType(root);
      } catch (e) {
        throw unavailable(dir, e);
      }
    }
    await Promise.all(
      dirs.map(async (dir) => {
        try {
          await fsp.access(dir);
        } catch (e) {
          throw unavailable(dir, e);
        }
      }),
    );
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
      try {
        await removeTree(path.join(this.masksDir, name), mounts);
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

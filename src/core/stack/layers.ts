/**
 * Turns CVMFS layer directories into overlay lower directories that are
 * semantically correct, whatever wrote them:
 *
 *  1. a DUCC `.chains/<id>` directory of the whole stack (whiteouts applied,
 *     tar ownership kept) is preferred when it exists: one lower for the stack;
 *  2. a layer carrying our marker (`.metadata/cvmfs-thin-layer.json`, written
 *     by `cvmfs-thin convert`): version 1 holds overlay whiteouts and is used
 *     as is; version 2 (what survives a CVMFS publish) holds none, and its
 *     record (deletions, opaque dirs, xattrs, hidden catalog markers) is
 *     turned into masks (masks.ts), built once;
 *  3. any other layer (DUCC's `layerfs`, which keeps OCI `.wh.*` entries as
 *     plain files, cvmfs#3756) is scanned once; if it has whiteouts or
 *     `.cvmfscatalog` files, masks are built from the scan: one *below* it with the
 *     overlay whiteouts/opaque dirs its `.wh.*` entries stand for, one *above*
 *     it hiding the `.wh.*` and catalog files themselves.
 *
 * The result is a list of host directories, top first, for overlay lowerdir.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { type CvmfsLocation, repositoryMountpoint } from '../cvmfs/location.js';
import { FailedPreconditionError, ThinManifestError } from '../errors/errors.js';
import { mapLimit } from '../util/concurrency.js';
import { isInside, pathExists } from '../fs/fsutil.js';
import type { Host } from '../host/host.js';
import { duccLayerHex, type ThinManifest } from '../thin/manifest.js';
import {
  CHAIN_MARKER,
  type ChainMarker,
  chainDir,
  dirtyChainMarker,
  duccChainIds,
  layerMarker,
  layerRootfs,
  type LayerMarker,
  type LayerRecord,
  LayerRecordError,
  parseChainMarker,
  parseLayerMarker,
} from '../cvmfs/layout.js';
import { buildMasks, CATALOG_MARKER, emptyPlan, type MaskPlan, planFromScan, scanWhiteouts, type Xattr } from '../cvmfs/masks.js';
import { lostModes, rootCatalog, specialModes } from '../cvmfs/chains.js';

/** What we remember about a layer directory (cached durably by the caller). */
export interface LayerFacts {
  /** 'overlay': trusted marker; 'clean': scanned, no whiteouts; 'masked': scanned, masks built. */
  mode: 'overlay' | 'clean' | 'masked';
  /** Mask directory (for 'masked'). */
  masks?: string | undefined;
  /** Which masks hold something (for 'masked'; both when absent, as facts cached by older versions). */
  parts?: ('above' | 'below')[] | undefined;
}

/** Where facts are kept (core/stack/facts.ts for the daemons). */
export interface LayerFactsCache {
  get(key: string): LayerFacts | undefined;
  put(key: string, facts: LayerFacts): Promise<void>;
}

/**
 * What a thin image's resolution asked of CVMFS ahead, in one batch through
 * the probe helper (core/stack/index.ts): resolved paths (or the errno code)
 * and file contents (null: absent). Anything not in it is asked here.
 */
export interface KnownPaths {
  real: Map<string, { real: string; dir: boolean } | { code: string; message: string }>;
  text: Map<string, string | null>;
}

/** A resolved stack: host directories, top first. `flattened` = the stack is complete by itself. */
export interface ResolvedStack {
  dirs: string[];
  flattened: boolean;
  /** Which mechanism made each part correct (for logs and tests). */
  how: string[];
}

/** Layers of one thin image resolved at once (each a few stats: on a cold CVMFS client, catalog loads that overlap). */
const RESOLVE_CONCURRENCY = 16;

export class CvmfsLayers {
  /** layerDirs in progress per directory: two images sharing a new layer build its masks once. */
  private readonly inflight = new Map<string, Promise<LayerFacts>>();

  constructor(
    private readonly loc: CvmfsLocation,
    /** Where mask directories are kept (a local, writable directory). */
    private readonly maskRoot: string,
    private readonly cache: LayerFactsCache,
    /** xattrs, ownership and whiteouts of the masks go through the host seam. */
    private readonly host: Host,
    private readonly log?: Logger,
  ) {}

  /**
   * Resolve a layer path inside a repository to a host directory, checking it
   * stays inside the repository (symlinks included) and is a directory.
   * Returns null when it does not exist.
   */
  async locate(repository: string, rel: string, field: string, realMps?: Map<string, Promise<string>>, known?: KnownPaths): Promise<string | null> {
    const mp = repositoryMountpoint(this.loc, repository);
    const p = path.join(mp, rel);
    const [kmp, kp] = [known?.real.get(mp), known?.real.get(p)];
    if (kmp && 'real' in kmp && kp) {
      if ('code' in kp) {
        if (kp.code === 'ENOENT' || kp.code === 'ENOTDIR') return null;
        throw Object.assign(new Error(kp.message), { code: kp.code });
      }
      if (!isInside(kmp.real, kp.real)) throw new ThinManifestError(field, `${p} resolves to ${kp.real}, outside repository ${repository}`);
      if (!kp.dir) throw new ThinManifestError(field, `${p} is not a directory`);
      return kp.real;
    }
    let real: string;
    let realMp: string;
    try {
      let r = realMps?.get(mp);
      if (!r) {
        r = fsp.realpath(mp);
        r.catch(() => undefined);
        realMps?.set(mp, r);
      }
      realMp = await r;
    } catch {
      throw new FailedPreconditionError(`${field}: repository ${repository} is not available at ${mp} (is CVMFS mounted?)`, 'CVMFS_THIN_REPO_UNAVAILABLE');
    }
    try {
      real = await fsp.realpath(p);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT' || (e as NodeJS.ErrnoException).code === 'ENOTDIR') return null;
      throw e;
    }
    if (!isInside(realMp, real)) {
      throw new ThinManifestError(field, `${p} resolves to ${real}, outside repository ${repository}`);
    }
    const st = await fsp.stat(real);
    if (!st.isDirectory()) throw new ThinManifestError(field, `${p} is not a directory`);
    return real;
  }

  /** Resolve every layer of a thin manifest; throws naming the field when a layer is missing. */
  async resolveThin(m: ThinManifest, known?: KnownPaths): Promise<ResolvedStack> {
    const c = chainCandidate(m);
    if (c) {
      const chain = await this.findChain(c.repository, c.hexes, known);
      if (chain) return this.chainDirs(chain, repositoryMountpoint(this.loc, c.repository), c.hexes, known);
    }
    // every layer at once (bounded), results top first; the failure of the topmost failing layer is thrown (as one by one)
    const realMps = new Map<string, Promise<string>>();
    const top = [...m.layers.keys()].reverse();
    const parts = await mapLimit(top, RESOLVE_CONCURRENCY, async (i) => {
      const l = m.layers[i]!;
      const field = `layers[${i}]`;
      const dir = await this.locate(l.repository, l.path, `${field}.url`, realMps, known);
      if (dir === null) {
        throw new FailedPreconditionError(
          `thin image manifest: ${field}.url: layer ${l.url} does not exist in CVMFS (${path.join(repositoryMountpoint(this.loc, l.repository), l.path)})`,
          'CVMFS_THIN_LAYER_MISSING',
        );
      }
      const repoRoot = duccLayerHex(l.path) === l.hex ? repositoryMountpoint(this.loc, l.repository) : null;
      return this.layerDirs(dir, repoRoot, l.hex, i === 0, known);
    });
    const dirs = parts.flatMap((r) => r.dirs);
    const how = parts.flatMap((r) => r.how);
    return { dirs, flattened: true, how };
  }

  /**
   * A `.chains` directory (DUCC's or ours) for the stack `hexes` (bottom
   * first) in `repository`, if it exists, is complete (not marked dirty) and
   * resolves inside the repository: its real path.
   */
  async findChain(repository: string, hexes: readonly string[], known?: KnownPaths): Promise<string | null> {
    if (hexes.length === 0) return null;
    const root = repositoryMountpoint(this.loc, repository);
    const top = duccChainIds(hexes).at(-1)!;
    const [mp, dir, dirty] = await Promise.all([root, chainDir(root, top), dirtyChainMarker(root, top)].map((p) => realOf(p, known)));
    if (!dir || !('real' in dir) || !dir.dir || !mp || !('real' in mp)) return null;
    if (!isInside(mp.real, dir.real)) {
      this.log?.warn({ chain: top, real: dir.real }, 'chain directory resolves outside its repository; not using it');
      return null;
    }
    if (dirty && 'real' in dirty) {
      this.log?.warn({ chain: top }, 'DUCC chain directory is marked dirty; not using it');
      return null;
    }
    return dir.real;
  }

  /**
   * A chain made overlay-correct: our chain's marker says what to hide (its
   * catalog marker and itself) and which xattrs a publish may have dropped
   * (copies above it, as for a layer's record); a chain that is not ours
   * (DUCC's) gets its root catalog marker hidden and the special bits its
   * writer dropped restored from the layers (chains.ts). Built once, cached.
   */
  async chainDirs(chain: string, repoRoot: string, hexes: readonly string[], known?: KnownPaths): Promise<ResolvedStack> {
    const key = `chain:${chain}`;
    let facts = this.cache.get(key);
    if (facts?.mode === 'masked' && facts.masks && !(await pathExists(path.join(facts.masks, 'done')))) facts = undefined;
    if (!facts) {
      const t0 = Date.now();
      const marker = await this.readChainMarker(chain, duccChainIds(hexes).at(-1)!, known);
      let plan: MaskPlan;
      let walked = 0;
      if (marker) plan = await this.planFromRecord(chain, marker.record);
      else {
        // an older cvmfs-thin's chain (its layers carry our markers) or DUCC's
        const ours = (await Promise.all(hexes.map((h) => this.readMarker(repoRoot, h).catch(() => null)))).every((m) => m !== null);
        const hide = (await rootCatalog(chain)) ? [CATALOG_MARKER] : [];
        let modes = new Map<string, number>();
        if (!ours) {
          const found = await specialModes([...hexes].reverse().map((h) => layerRootfs(repoRoot, h)));
          modes = await lostModes(chain, found.modes);
          walked = found.entries;
        }
        plan = { deleted: [], opaque: [], hide, fixups: [...modes.keys()].sort(), xattrs: new Map(), modes };
      }
      if (emptyPlan(plan)) facts = { mode: 'clean' };
      else {
        const masks = path.join(this.maskRoot, createHash('sha256').update(key).digest('hex').slice(0, 32));
        await buildMasks(chain, plan, masks, this.host);
        facts = { mode: 'masked', masks, parts: ['above'] };
      }
      this.log?.info(
        { chain, from: marker ? 'marker' : 'layers', walked, copied: plan.fixups.length, hidden: plan.hide.length, ms: Date.now() - t0 },
        'chain checked',
      );
      await this.cache.put(key, facts);
    }
    if (facts.mode !== 'masked') return { dirs: [chain], flattened: true, how: ['chain'] };
    return { dirs: [path.join(facts.masks!, 'above'), chain], flattened: true, how: ['mask-above', 'chain'] };
  }

  /** Our marker in a chain's root: null when there is none or it is not ours for this chain; throws for a malformed record. */
  private async readChainMarker(chain: string, id: string, known?: KnownPaths): Promise<ChainMarker | null> {
    const file = path.join(chain, CHAIN_MARKER);
    const text = await textOf(file, known);
    if (text === null) return null;
    try {
      return parseChainMarker(text, id);
    } catch (e) {
      if (!(e instanceof LayerRecordError)) throw e;
      throw new FailedPreconditionError(`chain record ${file}: ${e.message}`, 'CVMFS_THIN_BAD_LAYER_RECORD');
    }
  }

  /** Overlay-correct directories for one layer (top first): [above-mask], layer, [below-mask]. */
  async layerDirs(dir: string, repoRoot: string | null, hex: string | null, isBase: boolean, known?: KnownPaths): Promise<ResolvedStack> {
    let p = this.inflight.get(dir);
    if (!p) {
      p = this.factsOf(dir, repoRoot, hex, known).finally(() => this.inflight.delete(dir));
      this.inflight.set(dir, p);
    }
    const facts = await p;
    if (facts.mode !== 'masked') return { dirs: [dir], flattened: false, how: [facts.mode] };
    const m = facts.masks!;
    const parts = facts.parts ?? ['above', 'below'];
    const res: ResolvedStack = { dirs: [], flattened: false, how: [] };
    if (parts.includes('above')) {
      res.dirs.push(path.join(m, 'above'));
      res.how.push('mask-above');
    }
    res.dirs.push(dir);
    res.how.push('masked');
    // below the base layer there is nothing to hide
    if (!isBase && parts.includes('below')) {
      res.dirs.push(path.join(m, 'below'));
      res.how.push('mask-below');
    }
    return res;
  }

  /** What a layer directory is (cached; masks built at first sight). */
  private async factsOf(dir: string, repoRoot: string | null, hex: string | null, known?: KnownPaths): Promise<LayerFacts> {
    const key = dir;
    let facts = this.cache.get(key);
    if (facts?.mode === 'masked' && facts.masks && !(await pathExists(path.join(facts.masks, 'done')))) facts = undefined;
    if (!facts) {
      const marker = repoRoot && hex ? await this.readMarker(repoRoot, hex, known) : null;
      if (marker?.whiteouts === 'overlay') {
        facts = { mode: 'overlay' };
      } else {
        const plan = marker ? await this.planFromRecord(dir, marker.record!) : planFromScan(await scanWhiteouts(dir));
        if (emptyPlan(plan)) facts = { mode: 'clean' };
        else {
          const masks = path.join(this.maskRoot, createHash('sha256').update(dir).digest('hex').slice(0, 32));
          await buildMasks(dir, plan, masks, this.host);
          const parts: ('above' | 'below')[] = [];
          if (plan.hide.length + plan.fixups.length > 0) parts.push('above');
          if (plan.deleted.length + plan.opaque.length > 0) parts.push('below');
          facts = { mode: 'masked', masks, parts };
          this.log?.info(
            {
              layer: dir,
              from: marker ? 'record' : 'scan',
              deleted: plan.deleted.length,
              opaques: plan.opaque.length,
              hidden: plan.hide.length,
              copied: plan.fixups.length,
            },
            marker ? "built overlay masks from the layer's record" : 'layer keeps OCI whiteouts as plain files; built overlay masks',
          );
        }
      }
      await this.cache.put(key, facts);
    }
    return facts;
  }

  /**
   * The masks a version 2 layer needs: its deletions and opaque dirs below
   * it, its hidden files above it, and above it a copy of every entry that
   * has recorded xattrs (a publish without CVMFS_INCLUDE_XATTRS, or an
   * ingest, drops them). CVMFS is not asked whether it kept them: an xattr
   * read is a synchronous call that a stalled client would never answer, and
   * such entries are a few small files (capabilities) per image.
   */
  private async planFromRecord(dir: string, r: LayerRecord): Promise<MaskPlan> {
    const xattrs = new Map<string, Xattr[]>();
    for (const x of r.xattrs) {
      let l = xattrs.get(x.path);
      if (!l) xattrs.set(x.path, (l = []));
      l.push({ name: x.name, value: Buffer.from(x.value, 'base64') });
    }
    const fixups: string[] = [];
    for (const p of xattrs.keys()) if (await pathExists(path.join(dir, p))) fixups.push(p);
    return { deleted: r.deleted, opaque: r.opaque, hide: r.hidden, fixups: fixups.sort(), xattrs };
  }

  /** Our marker of the layer: null when there is none or it is not ours for this layer; throws for a malformed record. */
  async readMarker(repoRoot: string, hex: string, known?: KnownPaths): Promise<LayerMarker | null> {
    const file = layerMarker(repoRoot, hex);
    const text = await textOf(file, known);
    if (text === null) return null;
    try {
      const m = parseLayerMarker(text, hex);
      if (!m) this.log?.warn({ hex }, 'layer marker present but not valid for this layer; scanning instead');
      return m;
    } catch (e) {
      if (!(e instanceof LayerRecordError)) throw e;
      throw new FailedPreconditionError(`layer record ${file}: ${e.message}`, 'CVMFS_THIN_BAD_LAYER_RECORD');
    }
  }
}

/**
 * A stack that may have a chain: more than one layer, all in the DUCC layout of
 * one repository (the chain's ID comes from their digests).
 */
export function chainCandidate(m: ThinManifest): { repository: string; hexes: string[] } | null {
  const repos = new Set(m.layers.map((l) => l.repository));
  if (m.layers.length < 2 || repos.size !== 1 || !m.layers.every((l) => duccLayerHex(l.path) === l.hex)) return null;
  return { repository: [...repos][0]!, hexes: m.layers.map((l) => l.hex) };
}

/** A file's text from what the probe batch read, else from the file (null: absent or unreadable). */
async function textOf(file: string, known?: KnownPaths): Promise<string | null> {
  const k = known?.text.get(file);
  if (k !== undefined) return k;
  return fsp.readFile(file, 'utf8').catch(() => null);
}

/** A path's real path from the probe batch, else asked here; null: it does not resolve. */
async function realOf(p: string, known?: KnownPaths): Promise<{ real: string; dir: boolean } | { code: string } | null> {
  const k = known?.real.get(p);
  if (k) return k;
  try {
    const real = await fsp.realpath(p);
    return { real, dir: (await fsp.stat(real)).isDirectory() };
  } catch (e) {
    return { code: (e as NodeJS.ErrnoException).code ?? 'EIO' };
  }
}

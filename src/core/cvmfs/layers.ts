/**
 * Turns CVMFS layer directories into overlay lower directories that are
 * semantically correct, whatever wrote them:
 *
 *  1. a DUCC `.chains/<id>` directory of the whole stack (whiteouts applied,
 *     tar ownership kept) is preferred when it exists: one lower for the stack;
 *  2. a layer carrying our marker (`.metadata/cvmfs-thin-layer.json`, written
 *     by `cvmfs-thin convert`) holds overlay whiteouts and is used as is;
 *  3. any other layer (DUCC's `layerfs`, which keeps OCI `.wh.*` entries as
 *     plain files, cvmfs#3756) is scanned once; if it has whiteouts, two small
 *     local "mask" directories are built next to it: one *below* it with the
 *     overlay whiteouts/opaque dirs its `.wh.*` entries stand for, one *above*
 *     it hiding the `.wh.*` files themselves (directories in the upper mask
 *     copy the layer's own attributes).
 *
 * The result is a list of host directories, top first, for overlay lowerdir.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import type { Stats } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { type CvmfsLocation, repositoryMountpoint } from '../config.js';
import { FailedPreconditionError, ThinManifestError } from '../errors.js';
import { isInside, pathExists, removeTree } from '../fsutil.js';
import { type Host, systemHost } from '../host.js';
import { duccLayerHex, type ThinManifest } from '../thin/manifest.js';
import { classifyWhiteout, OVERLAY_OPAQUE_XATTR } from '../whiteout.js';
import { chainDir, dirtyChainMarker, duccChainIds, layerMarker, type LayerMarker } from './layout.js';

export interface WhiteoutScan {
  /** Relative paths of `.wh.<name>` entries. */
  whiteouts: string[];
  /** Relative paths of directories holding `.wh..wh..opq`. */
  opaques: string[];
  entries: number;
}

/** What we remember about a layer directory (cached durably by the caller). */
export interface LayerFacts {
  /** 'overlay': trusted marker; 'clean': scanned, no whiteouts; 'masked': scanned, masks built. */
  mode: 'overlay' | 'clean' | 'masked';
  /** Mask directory (for 'masked'). */
  masks?: string | undefined;
}

/** Where facts are kept (core/stack/facts.ts for the daemons). */
export interface LayerFactsCache {
  get(key: string): LayerFacts | undefined;
  put(key: string, facts: LayerFacts): Promise<void>;
}

/** A resolved stack: host directories, top first. `flattened` = the stack is complete by itself. */
export interface ResolvedStack {
  dirs: string[];
  flattened: boolean;
  /** Which mechanism made each part correct (for logs and tests). */
  how: string[];
}

export class CvmfsLayers {
  constructor(
    private readonly loc: CvmfsLocation,
    /** Where mask directories are kept (a local, writable directory). */
    private readonly maskRoot: string,
    private readonly cache: LayerFactsCache,
    private readonly log?: Logger,
    /** xattrs, ownership and whiteouts of the masks go through the host seam. */
    private readonly host: Host = systemHost,
  ) {}

  /**
   * Resolve a layer path inside a repository to a host directory, checking it
   * stays inside the repository (symlinks included) and is a directory.
   * Returns null when it does not exist.
   */
  async locate(repository: string, rel: string, field: string): Promise<string | null> {
    const mp = repositoryMountpoint(this.loc, repository);
    const p = path.join(mp, rel);
    let real: string;
    let realMp: string;
    try {
      realMp = await fsp.realpath(mp);
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
  async resolveThin(m: ThinManifest): Promise<ResolvedStack> {
    const hexes = m.layers.map((l) => l.hex);
    const repos = new Set(m.layers.map((l) => l.repository));
    if (m.layers.length > 1 && repos.size === 1 && m.layers.every((l) => duccLayerHex(l.path) !== null)) {
      const chain = await this.findChain([...repos][0]!, hexes);
      if (chain) return { dirs: [chain], flattened: true, how: ['chain'] };
    }
    const dirs: string[] = [];
    const how: string[] = [];
    for (let i = m.layers.length - 1; i >= 0; i--) {
      const l = m.layers[i]!;
      const field = `layers[${i}]`;
      const dir = await this.locate(l.repository, l.path, `${field}.url`);
      if (dir === null) {
        throw new FailedPreconditionError(
          `thin image manifest: ${field}.url: layer ${l.url} does not exist in CVMFS (${path.join(repositoryMountpoint(this.loc, l.repository), l.path)})`,
          'CVMFS_THIN_LAYER_MISSING',
        );
      }
      const repoRoot = duccLayerHex(l.path) === l.hex ? repositoryMountpoint(this.loc, l.repository) : null;
      const r = await this.layerDirs(dir, repoRoot, l.hex, i === 0);
      dirs.push(...r.dirs);
      how.push(...r.how);
    }
    return { dirs, flattened: true, how };
  }

  /**
   * A DUCC `.chains` directory for the stack `hexes` (bottom first) in
   * `repository`, if it exists and is complete.
   */
  async findChain(repository: string, hexes: readonly string[]): Promise<string | null> {
    if (hexes.length === 0) return null;
    const root = repositoryMountpoint(this.loc, repository);
    const ids = duccChainIds(hexes);
    const top = ids[ids.length - 1]!;
    const dir = chainDir(root, top);
    try {
      const st = await fsp.stat(dir);
      if (!st.isDirectory()) return null;
    } catch {
      return null;
    }
    try {
      await fsp.lstat(dirtyChainMarker(root, top));
      this.log?.warn({ chain: top }, 'DUCC chain directory is marked dirty; not using it');
      return null;
    } catch {
      /* not dirty */
    }
    return dir;
  }

  /** Overlay-correct directories for one layer (top first): [above-mask], layer, [below-mask]. */
  async layerDirs(dir: string, repoRoot: string | null, hex: string | null, isBase: boolean): Promise<ResolvedStack> {
    const key = dir;
    let facts = this.cache.get(key);
    if (facts?.mode === 'masked' && facts.masks && !(await pathExists(path.join(facts.masks, 'done')))) facts = undefined;
    if (!facts) {
      if (repoRoot && hex && (await this.readMarker(repoRoot, hex))) {
        facts = { mode: 'overlay' };
      } else {
        const scan = await scanWhiteouts(dir);
        if (scan.whiteouts.length === 0 && scan.opaques.length === 0) facts = { mode: 'clean' };
        else {
          const masks = path.join(this.maskRoot, createHash('sha256').update(dir).digest('hex').slice(0, 32));
          await buildMasks(dir, scan, masks, this.host);
          facts = { mode: 'masked', masks };
          this.log?.info({ layer: dir, whiteouts: scan.whiteouts.length, opaques: scan.opaques.length }, 'layer keeps OCI whiteouts as plain files; built overlay masks');
        }
      }
      await this.cache.put(key, facts);
    }
    if (facts.mode !== 'masked') return { dirs: [dir], flattened: false, how: [facts.mode] };
    const m = facts.masks!;
    // below the base layer there is nothing to hide
    return isBase
      ? { dirs: [path.join(m, 'above'), dir], flattened: false, how: ['mask-above', 'masked'] }
      : { dirs: [path.join(m, 'above'), dir, path.join(m, 'below')], flattened: false, how: ['mask-above', 'masked', 'mask-below'] };
  }

  async readMarker(repoRoot: string, hex: string): Promise<LayerMarker | null> {
    try {
      const m = JSON.parse(await fsp.readFile(layerMarker(repoRoot, hex), 'utf8')) as Partial<LayerMarker>;
      if (m.schema === 'cvmfs-thin/layer' && m.whiteouts === 'overlay' && m.digest === `sha256:${hex}`) return m as LayerMarker;
      this.log?.warn({ hex }, 'layer marker present but not valid for this layer; scanning instead');
      return null;
    } catch {
      return null;
    }
  }
}


/** Find the OCI whiteout entries of a layer tree (reads directories only). */
export async function scanWhiteouts(root: string): Promise<WhiteoutScan> {
  const res: WhiteoutScan = { whiteouts: [], opaques: [], entries: 0 };
  const queue: string[] = [''];
  const worker = async () => {
    for (;;) {
      const rel = queue.pop();
      if (rel === undefined) return;
      const ents = await fsp.readdir(path.join(root, rel), { withFileTypes: true });
      for (const e of ents) {
        res.entries++;
        const p = rel === '' ? e.name : `${rel}/${e.name}`;
        const w = classifyWhiteout(e.name);
        if (w?.kind === 'opaque') res.opaques.push(rel);
        else if (w?.kind === 'whiteout') res.whiteouts.push(p);
        else if (e.isDirectory()) queue.push(p);
      }
    }
  };
  // a few directory reads in flight: CVMFS answers readdir from its catalog
  for (;;) {
    const n = Math.min(8, queue.length);
    if (n === 0) break;
    await Promise.all(Array.from({ length: n }, worker));
  }
  res.whiteouts.sort();
  res.opaques.sort();
  return res;
}

async function copyDirAttrs(host: Host, src: Stats, srcPath: string, dst: string): Promise<void> {
  await fsp.chmod(dst, src.mode & 0o7777);
  host.lchown(dst, src.uid, src.gid);
  for (const name of host.llistxattr(srcPath)) {
    if (name.startsWith('trusted.overlay.')) continue;
    const v = host.lgetxattr(srcPath, name);
    if (v) {
      try {
        host.lsetxattr(dst, name, v);
      } catch {
        /* e.g. security.selinux on a host without it: attributes are best effort */
      }
    }
  }
  await fsp.lutimes(dst, src.atime, src.mtime);
}

/** Build `<dest>/below` and `<dest>/above` for a scanned layer, atomically (`<dest>/done` last). */
export async function buildMasks(layer: string, scan: WhiteoutScan, dest: string, host: Host = systemHost): Promise<void> {
  const tmp = `${dest}.tmp-${process.pid}-${Date.now()}`;
  await removeTree(tmp);
  const below = path.join(tmp, 'below');
  const above = path.join(tmp, 'above');
  await fsp.mkdir(below, { recursive: true, mode: 0o755 });
  await fsp.mkdir(above, { recursive: true, mode: 0o755 });
  // below: what the .wh.* entries mean for the layers under this one
  for (const w of scan.whiteouts) {
    const dir = path.dirname(w);
    const target = path.basename(w).slice(4);
    await fsp.mkdir(path.join(below, dir), { recursive: true, mode: 0o755 });
    host.mkWhiteout(path.join(below, dir, target));
  }
  for (const d of scan.opaques) {
    await fsp.mkdir(path.join(below, d), { recursive: true, mode: 0o755 });
    host.lsetxattr(path.join(below, d), OVERLAY_OPAQUE_XATTR, 'y');
  }
  // above: hide the .wh.* files; every directory on the way copies the layer's attributes
  const dirs = new Set<string>(['']);
  const names = [...scan.whiteouts, ...scan.opaques.map((d) => (d === '' ? '.wh..wh..opq' : `${d}/.wh..wh..opq`))];
  for (const n of names) {
    let d = path.dirname(n);
    while (d !== '.' && d !== '') {
      dirs.add(d);
      d = path.dirname(d);
    }
  }
  const sorted = [...dirs].sort((a, b) => a.split('/').length - b.split('/').length);
  for (const d of sorted) if (d !== '') await fsp.mkdir(path.join(above, d), { mode: 0o755 });
  for (const n of names) host.mkWhiteout(path.join(above, n));
  // attributes deepest first, so that setting a parent's mtime is not undone by its children
  for (const d of sorted.reverse()) {
    const src = path.join(layer, d);
    await copyDirAttrs(host, await fsp.lstat(src), src, path.join(above, d));
  }
  await fsp.writeFile(path.join(tmp, 'done'), `${layer}\n`);
  if (await pathExists(path.join(dest, 'done'))) {
    // built meanwhile by a concurrent request: keep that one
    await removeTree(tmp);
    return;
  }
  await removeTree(dest);
  try {
    await fsp.rename(tmp, dest);
  } catch (e) {
    await removeTree(tmp);
    if (!(await pathExists(path.join(dest, 'done')))) throw e;
  }
}

/**
 * Removing images from the podman store: explicitly (by ID or name), or as
 * garbage collection after `cvmfs-thin gc`: an image stays while its config
 * and all its layers are referenced by some `.metadata/**\/manifest.json`;
 * an unreferenced one goes once it is older than the grace period, or at
 * once if a layer it needs is gone from the repository. Layers no remaining
 * image uses go with it. `images.json` is written before `layers.json`, and
 * directories are removed last, so readers never see an image without its layers.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { walkFiles } from '../util.js';
import { layerRootfs, METADATA_DIR } from '../../core/cvmfs/layout.js';
import { isDigest, type StoreImage, type StoreLayer, StorePaths } from './format.js';
import { lstatOrNull, readImages, readLayers, type StoreIoOptions, sweepOrphans, withStore, writeImages, writeLayers } from './store-io.js';

interface PodmanGcOptions extends StoreIoOptions {
  graceMs: number;
  dryRun?: boolean | undefined;
  now?: number | undefined;
  log?: Logger | undefined;
}

export interface PodmanGcReport {
  removed_images: { id: string; names: string[]; reason: string }[];
  removed_layers: string[];
  kept_recent: { id: string; names: string[]; age: number }[];
  errors: { path: string; message: string }[];
}

/** The image manifests recorded in `.metadata/`. */
async function* manifests(dir: string): AsyncGenerator<string> {
  for await (const f of walkFiles(dir)) if (!f.isLink && f.name === 'manifest.json') yield f.path;
}

/** Config digests and layer digests referenced by the tree's manifests. */
async function referenced(repoDir: string): Promise<{ configs: Set<string>; layers: Set<string> }> {
  const configs = new Set<string>();
  const layers = new Set<string>();
  for await (const f of manifests(path.join(repoDir, METADATA_DIR))) {
    try {
      const m = JSON.parse(await fsp.readFile(f, 'utf8')) as { config?: { digest?: unknown }; layers?: { digest?: unknown }[] };
      if (isDigest(m.config?.digest)) configs.add(m.config.digest);
      for (const l of Array.isArray(m.layers) ? m.layers : []) if (isDigest(l.digest)) layers.add(l.digest);
    } catch {
      /* an index or not JSON */
    }
  }
  return { configs, layers };
}

/** The chain of a top layer, bottom last: [top, parent, …]. */
function chain(top: string | undefined, byId: Map<string, StoreLayer>): StoreLayer[] {
  const out: StoreLayer[] = [];
  const seen = new Set<string>();
  for (let id = top; id !== undefined && !seen.has(id);) {
    seen.add(id);
    const l = byId.get(id);
    if (!l) break;
    out.push(l);
    id = l.parent;
  }
  return out;
}

/** Remove `drop` images and every layer no kept image needs; returns the removed layer IDs. */
async function removeFromStore(
  p: StorePaths,
  images: StoreImage[],
  layers: StoreLayer[],
  drop: Set<string>,
  errors: PodmanGcReport['errors'],
): Promise<string[]> {
  const keptImages = images.filter((im) => !drop.has(im.id));
  const byId = new Map(layers.map((l) => [l.id, l]));
  const needed = new Set<string>();
  for (const im of keptImages) for (const l of chain(im.layer, byId)) needed.add(l.id);
  const keptLayers = layers.filter((l) => needed.has(l.id));
  const goneLayers = layers.filter((l) => !needed.has(l.id));
  if (keptImages.length !== images.length) await writeImages(p, keptImages);
  if (goneLayers.length > 0) await writeLayers(p, keptLayers);
  for (const id of drop)
    await fsp.rm(p.image(id), { recursive: true, force: true }).catch((e: Error) => errors.push({ path: p.image(id), message: e.message }));
  for (const l of goneLayers) {
    const link = await fsp.readFile(path.join(p.layer(l.id), 'link'), 'utf8').catch(() => null);
    if (link && /^[A-Z2-7]{26}$/.test(link)) await fsp.rm(p.link(link), { force: true }).catch(() => undefined);
    await fsp.rm(p.tarSplit(l.id), { force: true }).catch(() => undefined);
    await fsp.rm(p.layer(l.id), { recursive: true, force: true }).catch((e: Error) => errors.push({ path: p.layer(l.id), message: e.message }));
  }
  return goneLayers.map((l) => l.id);
}

/** Garbage-collect the store of `repoDir` (nothing to do when it has none). */
export async function collectPodmanStore(repoDir: string, o: PodmanGcOptions): Promise<PodmanGcReport> {
  const report: PodmanGcReport = { removed_images: [], removed_layers: [], kept_recent: [], errors: [] };
  const root = path.resolve(repoDir);
  const storeSt = await lstatOrNull(path.join(root, 'podmanStore'));
  if (!storeSt?.isDirectory()) return report;
  const now = o.now ?? Date.now();
  // a dry run writes nothing (not even the update marker): it may run outside a transaction;
  // neither does a run with nothing to remove
  const planned = await plan(root, new StorePaths(root), now, o, report);
  if (o.dryRun || (planned.drop.size === 0 && report.removed_layers.length === 0)) return report;
  report.removed_images = [];
  report.kept_recent = [];
  return withStore(root, o, async ({ paths: p }) => {
    const { images, layers, drop } = await plan(root, p, now, o, report);
    report.removed_layers = await removeFromStore(p, images, layers, drop, report.errors);
    await sweepOrphans(p, o.log);
    for (const im of report.removed_images) o.log?.info({ image: im.id, names: im.names, reason: im.reason }, 'podman store: image removed');
    return report;
  });
}

/** Decide what goes (fills `report.removed_images`, `kept_recent`, and `removed_layers` as planned). */
async function plan(
  root: string,
  p: StorePaths,
  now: number,
  o: PodmanGcOptions,
  report: PodmanGcReport,
): Promise<{ images: StoreImage[]; layers: StoreLayer[]; drop: Set<string> }> {
  const ref = await referenced(root);
  const images = await readImages(p);
  const layers = await readLayers(p);
  const byId = new Map(layers.map((l) => [l.id, l]));
  const drop = new Set<string>();
  for (const im of images) {
    const names = im.names ?? [];
    const stack = chain(im.layer, byId);
    let missing = stack.length === 0 && im.layer !== undefined;
    let unreferenced = !ref.configs.has(`sha256:${im.id}`);
    for (const l of stack) {
      const d = l['compressed-diff-digest'];
      if (!isDigest(d)) continue;
      if (!ref.layers.has(d)) unreferenced = true;
      if (!(await lstatOrNull(layerRootfs(root, d.slice(7))))?.isDirectory()) missing = true;
    }
    if (missing) {
      drop.add(im.id);
      report.removed_images.push({ id: im.id, names, reason: 'a layer is gone from the repository' });
      continue;
    }
    if (!unreferenced) continue;
    const st = await lstatOrNull(p.image(im.id));
    const age = st ? Math.max(0, (now - st.mtimeMs) / 1000) : Infinity;
    if (age * 1000 >= o.graceMs) {
      drop.add(im.id);
      report.removed_images.push({ id: im.id, names, reason: 'no converted image references it' });
    } else {
      report.kept_recent.push({ id: im.id, names, age: Math.round(age) });
    }
  }
  const keep = new Set<string>();
  for (const im of images) if (!drop.has(im.id)) for (const l of chain(im.layer, byId)) keep.add(l.id);
  report.removed_layers = layers.filter((l) => !keep.has(l.id)).map((l) => l.id);
  return { images, layers, drop };
}

/**
 * Take names away from the store's images (`cvmfs-thin rm`): an image left
 * without a name goes, with the layers only it used. Names no image holds
 * are reported, not refused. A dry run reads only.
 */
export async function removeNamesFromPodmanStore(
  repoDir: string,
  names: string[],
  o: StoreIoOptions & { dryRun?: boolean | undefined },
): Promise<{ untagged: { id: string; name: string }[]; removed_images: string[]; removed_layers: string[]; not_found: string[] }> {
  const root = path.resolve(repoDir);
  const decide = (images: StoreImage[], layers: StoreLayer[]) => {
    const untagged: { id: string; name: string }[] = [];
    const notFound: string[] = [];
    for (const n of names) {
      const im = images.find((i) => i.names?.includes(n));
      if (!im) notFound.push(n);
      else untagged.push({ id: im.id, name: n });
    }
    const kept = images.map((im) => ({ ...im, names: (im.names ?? []).filter((n) => !names.includes(n)) }));
    const drop = new Set(kept.filter((im, i) => im.names.length === 0 && (images[i]!.names ?? []).length > 0).map((im) => im.id));
    const byId = new Map(layers.map((l) => [l.id, l]));
    const needed = new Set<string>();
    for (const im of kept) if (!drop.has(im.id)) for (const l of chain(im.layer, byId)) needed.add(l.id);
    return { untagged, notFound, kept, drop, goneLayers: layers.filter((l) => !needed.has(l.id)).map((l) => l.id) };
  };
  if (!(await lstatOrNull(path.join(root, 'podmanStore')))?.isDirectory())
    return { untagged: [], removed_images: [], removed_layers: [], not_found: [...names] };
  if (o.dryRun) {
    const p = new StorePaths(root);
    const d = decide(await readImages(p), await readLayers(p));
    return { untagged: d.untagged, removed_images: [...d.drop], removed_layers: d.goneLayers, not_found: d.notFound };
  }
  return withStore(root, o, async ({ paths: p }) => {
    const images = await readImages(p);
    const layers = await readLayers(p);
    const d = decide(images, layers);
    if (d.untagged.length === 0) return { untagged: [], removed_images: [], removed_layers: [], not_found: d.notFound };
    // the names first (an image keeps the ones it loses in its history, as containers/storage does)
    const named = images.map((im, i) => {
      const lost = (im.names ?? []).filter((n) => names.includes(n));
      if (lost.length === 0) return im;
      return { ...im, names: d.kept[i]!.names, 'names-history': [...lost, ...(im['names-history'] ?? []).filter((n) => !lost.includes(n))] };
    });
    const errors: PodmanGcReport['errors'] = [];
    let removedLayers: string[] = [];
    if (d.drop.size > 0) removedLayers = await removeFromStore(p, named, layers, d.drop, errors);
    else await writeImages(p, named);
    if (errors.length > 0) o.log?.warn({ errors }, 'podman store: some entries could not be removed (the next update sweeps them)');
    return { untagged: d.untagged, removed_images: [...d.drop], removed_layers: removedLayers, not_found: d.notFound };
  });
}

/** Remove images by ID (or unambiguous ID prefix) or name, with the layers only they used. */
export async function removeImagesFromPodmanStore(
  repoDir: string,
  refs: string[],
  o: StoreIoOptions,
): Promise<{ removed_images: string[]; removed_layers: string[]; not_found: string[] }> {
  return withStore(path.resolve(repoDir), o, async ({ paths: p }) => {
    const images = await readImages(p);
    const layers = await readLayers(p);
    const drop = new Set<string>();
    const notFound: string[] = [];
    for (const r of refs) {
      const hits = images.filter((im) => im.id === r || im.names?.includes(r) || (r.length >= 12 && /^[a-f0-9]+$/.test(r) && im.id.startsWith(r)));
      if (hits.length !== 1) notFound.push(r);
      else drop.add(hits[0]!.id);
    }
    const errors: PodmanGcReport['errors'] = [];
    const removedLayers = drop.size > 0 ? await removeFromStore(p, images, layers, drop, errors) : [];
    return { removed_images: [...drop], removed_layers: removedLayers, not_found: notFound };
  });
}

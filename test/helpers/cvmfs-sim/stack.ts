/**
 * A container rootfs over published layers, the way the snapshotter builds
 * one: a thin manifest listing `cvmfs://<repo>/.layers/<xx>/<hex>/layerfs`,
 * resolved by CvmfsLayers (marker, records, masks) with the repository's
 * mountpoint at the simulator's `published/` (what a client sees), then a
 * real read-only overlay of the directories it returns.
 */
import fs from 'node:fs';
import path from 'node:path';
import { cvmfsLocation } from '../../../src/core/cvmfs/location.js';
import { CvmfsLayers, type LayerFacts, type LayerFactsCache, type ResolvedStack } from '../../../src/core/stack/layers.js';
import { duccLayerPath, parseThinManifest, serializeThinManifest } from '../../../src/core/thin/manifest.js';
import { mount, MS_RDONLY } from '../../../src/core/host/sys.js';
import { systemHost } from '../../../src/core/host/host.js';

export class MemoryFacts implements LayerFactsCache {
  readonly facts = new Map<string, LayerFacts>();
  get(key: string): LayerFacts | undefined {
    return this.facts.get(key);
  }
  put(key: string, f: LayerFacts): Promise<void> {
    this.facts.set(key, f);
    return Promise.resolve();
  }
}

/**
 * Resolve the layers `hexes` (bottom first) of `repository` published at
 * `published`, and mount their overlay read-only on `target` (an empty
 * directory is the bottom lower, so that a single layer still makes an overlay).
 */
export async function mountPublishedStack(o: {
  published: string;
  repository: string;
  hexes: string[];
  work: string;
  target: string;
  /** A local directory above the stack (a hot layer). */
  top?: string | undefined;
}): Promise<ResolvedStack> {
  const thinJson = serializeThinManifest({ layers: o.hexes.map((hex) => ({ hex, repository: o.repository, path: duccLayerPath(hex) })) });
  const manifest = parseThinManifest(thinJson, { defaultRepository: o.repository, allowedRepositories: [o.repository] });
  const loc = cvmfsLocation({ repository: o.repository, absoluteMountpoint: o.published, cvmfsRoot: path.dirname(o.published) });
  const masks = path.join(o.work, 'masks');
  const empty = path.join(o.work, 'empty');
  for (const d of [masks, empty, o.target]) fs.mkdirSync(d, { recursive: true });
  const resolved = await new CvmfsLayers(loc, masks, new MemoryFacts(), systemHost).resolveThin(manifest);
  mount('overlay', o.target, 'overlay', MS_RDONLY, `lowerdir=${[...(o.top ? [o.top] : []), ...resolved.dirs, empty].join(':')}`);
  return resolved;
}

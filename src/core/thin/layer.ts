/**
 * How a layer is recognised as a thin layer (thin-image/SPEC.md §3), shared by
 * the snapshotter (at Commit) and the graph driver (after ApplyDiff): a base
 * layer whose root holds exactly one entry, a regular file named like a thin
 * manifest. Reads a local directory (synchronously: two small calls).
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import type { CvmfsLocation } from '../cvmfs/location.js';
import { parseThinManifest, THIN_MANIFEST_NAMES, type ThinManifest } from './manifest.js';

interface ThinLayerFile {
  /** The manifest's file name in the layer (thin.json, or a historical name). */
  file: string;
  manifest: ThinManifest;
}

/** The layer's thin manifest, null for an ordinary layer; throws ThinManifestError for a bad manifest. */
export function readThinLayer(dir: string, loc: CvmfsLocation): ThinLayerFile | null {
  const entries = readdirSync(dir, { withFileTypes: true });
  if (entries.length !== 1) return null;
  const e = entries[0]!;
  if (!e.isFile() || !(THIN_MANIFEST_NAMES as readonly string[]).includes(e.name)) return null;
  const manifest = parseThinManifest(readFileSync(path.join(dir, e.name)), { defaultRepository: loc.repository, allowedRepositories: loc.allowedRepositories });
  return { file: e.name, manifest };
}

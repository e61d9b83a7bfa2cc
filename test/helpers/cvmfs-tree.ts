/**
 * Builds CVMFS-repository-shaped trees (the DUCC layout) in a temp dir, as the
 * converter and DUCC write them, for tests of the snapshotter and graph driver.
 */
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { layerMarker, layerRootfs, type LayerMarker, type LayerRecord } from '../../src/core/cvmfs/layout.js';
import { sha256Hex } from '../../src/core/util/digest.js';
import { lsetxattr, mkWhiteout } from '../../src/core/host/sys.js';

export type Entry =
  | string // file content
  | { dir: true }
  | { symlink: string }
  | { whiteout: true } // overlay whiteout (converter layers) — for DUCC layers write '.wh.x' files instead
  | { opaque: true; dir: true };

/** Write a layer directory. Keys are relative paths; parents are created. */
export function writeTree(root: string, entries: Record<string, Entry>): void {
  mkdirSync(root, { recursive: true });
  for (const [rel, e] of Object.entries(entries)) {
    const p = path.join(root, rel);
    mkdirSync(path.dirname(p), { recursive: true });
    if (typeof e === 'string') writeFileSync(p, e);
    else if ('symlink' in e) symlinkSync(e.symlink, p);
    else if ('whiteout' in e) mkWhiteout(p);
    else {
      mkdirSync(p, { recursive: true });
      if ('opaque' in e) lsetxattr(p, 'trusted.overlay.opaque', 'y');
    }
  }
}

export interface FakeLayer {
  hex: string;
  digest: string;
  dir: string;
}

/**
 * A layer in `<repo>/.layers/<xx>/<hex>/layerfs`; `converter: true` adds our
 * version 1 marker (overlay whiteouts), `record` our version 2 marker with
 * that record (what survives a CVMFS publish; write no whiteouts then).
 */
export function addLayer(
  repoRoot: string,
  name: string,
  entries: Record<string, Entry>,
  opts: { converter?: boolean; record?: Partial<LayerRecord> | unknown } = {},
): FakeLayer {
  const hex = sha256Hex(`layer:${name}:${JSON.stringify(Object.keys(entries))}`);
  const dir = layerRootfs(repoRoot, hex);
  writeTree(dir, entries);
  const base = { schema: 'cvmfs-thin/layer', digest: `sha256:${hex}`, diff_id: `sha256:${sha256Hex(name)}`, created: new Date().toISOString() } as const;
  let m: LayerMarker | Record<string, unknown> | null = null;
  if (opts.converter) m = { ...base, version: 1, whiteouts: 'overlay' };
  if (opts.record !== undefined) m = { ...base, version: 2, whiteouts: 'record', record: opts.record };
  if (m) {
    mkdirSync(path.dirname(layerMarker(repoRoot, hex)), { recursive: true });
    writeFileSync(layerMarker(repoRoot, hex), JSON.stringify(m));
  }
  return { hex, digest: `sha256:${hex}`, dir };
}

export function thinJson(repo: string, layers: FakeLayer[], extra: Record<string, unknown> = {}): string {
  return JSON.stringify({
    version: '1.0',
    origin: 'test',
    ...extra,
    layers: layers.map((l) => ({ digest: l.hex, url: `cvmfs://${repo}/.layers/${l.hex.slice(0, 2)}/${l.hex}/layerfs` })),
  });
}

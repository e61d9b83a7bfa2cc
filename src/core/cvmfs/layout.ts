/**
 * The DUCC layout of an unpacked CVMFS repository such as unpacked.cern.ch
 * (see thin-image/SPEC.md §Layout). Pure path arithmetic and IDs.
 */
import path from 'node:path';
import { sha256Hex } from '../digest.js';

export const LAYERS_DIR = '.layers';
export const CHAINS_DIR = '.chains';
export const DIRTY_CHAINS_DIR = '.dirty-chains';
export const FLAT_DIR = '.flat';
export const METADATA_DIR = '.metadata';
export const LAYER_ROOTFS = 'layerfs';
/** Our record, next to layerfs, that the layer was written by cvmfs-thin with overlay whiteouts. */
export const LAYER_MARKER = 'cvmfs-thin-layer.json';

export const layerDir = (repoRoot: string, hex: string) => path.join(repoRoot, LAYERS_DIR, hex.slice(0, 2), hex);
export const layerRootfs = (repoRoot: string, hex: string) => path.join(layerDir(repoRoot, hex), LAYER_ROOTFS);
export const layerMetadataDir = (repoRoot: string, hex: string) => path.join(layerDir(repoRoot, hex), METADATA_DIR);
export const layerMarker = (repoRoot: string, hex: string) => path.join(layerMetadataDir(repoRoot, hex), LAYER_MARKER);
export const chainDir = (repoRoot: string, id: string) => path.join(repoRoot, CHAINS_DIR, id.slice(0, 2), id);
export const dirtyChainMarker = (repoRoot: string, id: string) => path.join(repoRoot, DIRTY_CHAINS_DIR, id);
export const flatDir = (repoRoot: string, configHex: string) => path.join(repoRoot, FLAT_DIR, configHex.slice(0, 2), configHex);

/**
 * DUCC's chain IDs (`docker-api/util.go:GetChainIDs`): computed from the
 * *compressed* layer digests, c0 = sha256("sha256:<l0>"),
 * cn = sha256("sha256:<c(n-1)> sha256:<ln>"). Returns hex strings, bottom first.
 */
export function duccChainIds(layerHexes: readonly string[]): string[] {
  const out: string[] = [];
  for (const h of layerHexes) {
    const prev = out[out.length - 1];
    out.push(prev === undefined ? sha256Hex(`sha256:${h}`) : sha256Hex(`sha256:${prev} sha256:${h}`));
  }
  return out;
}

/** The marker file's content. */
export interface LayerMarker {
  schema: 'cvmfs-thin/layer';
  version: 1;
  /** sha256:<hex> of the compressed blob (the directory name). */
  digest: string;
  /** sha256 of the uncompressed tar. */
  diff_id: string;
  /** How OCI whiteouts were written into layerfs. */
  whiteouts: 'overlay';
  created: string;
  /** Entry counts, for information. */
  entries?: number;
  whiteout_count?: number;
}

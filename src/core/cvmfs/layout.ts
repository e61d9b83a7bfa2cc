/**
 * The DUCC layout of an unpacked CVMFS repository such as unpacked.cern.ch
 * (see thin-image/SPEC.md §Layout). Pure path arithmetic and IDs.
 */
import path from 'node:path';
import { sha256Hex } from '../util/digest.js';

export const LAYERS_DIR = '.layers';
export const CHAINS_DIR = '.chains';
export const DIRTY_CHAINS_DIR = '.dirty-chains';
export const FLAT_DIR = '.flat';
export const METADATA_DIR = '.metadata';
export const LAYER_ROOTFS = 'layerfs';
/** Our record, next to layerfs, that the layer was written by cvmfs-thin with overlay whiteouts. */
export const LAYER_MARKER = 'cvmfs-thin-layer.json';
/** In the layer's `.metadata/`: its tar without the file contents (tar-split, gzip), from which podman rebuilds the layer tar. */
export const LAYER_TAR_SPLIT = 'tar-split.json.gz';

export const layerDir = (repoRoot: string, hex: string) => path.join(repoRoot, LAYERS_DIR, hex.slice(0, 2), hex);
export const layerRootfs = (repoRoot: string, hex: string) => path.join(layerDir(repoRoot, hex), LAYER_ROOTFS);
export const layerMetadataDir = (repoRoot: string, hex: string) => path.join(layerDir(repoRoot, hex), METADATA_DIR);
export const layerMarker = (repoRoot: string, hex: string) => path.join(layerMetadataDir(repoRoot, hex), LAYER_MARKER);
export const chainDir = (repoRoot: string, id: string) => path.join(repoRoot, CHAINS_DIR, id.slice(0, 2), id);
export const dirtyChainMarker = (repoRoot: string, id: string) => path.join(repoRoot, DIRTY_CHAINS_DIR, id);
/**
 * Our record in a chain's root (thin-image/SPEC.md §6): the chain was built by
 * cvmfs-thin and what its publish may have dropped (xattrs). Hidden from
 * containers like the root's catalog marker.
 */
export const CHAIN_MARKER = '.cvmfs-thin-chain.json';
export const chainMarker = (repoRoot: string, id: string) => path.join(chainDir(repoRoot, id), CHAIN_MARKER);
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

/**
 * What a layer directory cannot say itself after a CVMFS publish (version 2,
 * `whiteouts: "record"`): paths are UTF-8, relative to `layerfs`, without
 * `.`/`..` components (the layer's own resolved paths).
 */
export interface LayerRecord {
  /** OCI deletions (`dir/.wh.name` → `dir/name`): hidden in the layers below. */
  deleted: string[];
  /** Opaque directories (`dir/.wh..wh..opq`; '' = the layer root). */
  opaque: string[];
  /** xattrs of the layer's entries (never `trusted.*`), values base64: restored when the publish dropped them. */
  xattrs: { path: string; name: string; value: string }[];
  /** Files inside `layerfs` that are not part of the image (nested-catalog markers `.cvmfscatalog`). */
  hidden: string[];
}

/** The marker file's content. */
export interface LayerMarker {
  schema: 'cvmfs-thin/layer';
  /** 1: `whiteouts: "overlay"`; 2: `whiteouts: "record"` with `record`. */
  version: 1 | 2;
  /** sha256:<hex> of the compressed blob (the directory name). */
  digest: string;
  /** sha256 of the uncompressed tar. */
  diff_id: string;
  /** How OCI whiteouts are kept: as overlayfs whiteouts in layerfs, or in `record`. */
  whiteouts: 'overlay' | 'record';
  created: string;
  /** Entry counts, for information. */
  entries?: number;
  whiteout_count?: number;
  /** Hardlinked names in the layer (a CVMFS publish splits them into copies). */
  hardlinks?: number;
  record?: LayerRecord;
}

export class LayerRecordError extends Error {
  constructor(
    readonly field: string,
    readonly reason: string,
  ) {
    super(`${field}: ${reason}`);
  }
}

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** A path of a record: relative, no empty/`.`/`..` component, no NUL ('' only where `root` is allowed). */
function checkRel(v: unknown, field: string, root: boolean): string {
  if (typeof v !== 'string') throw new LayerRecordError(field, 'not a string');
  if (v === '') {
    if (root) return v;
    throw new LayerRecordError(field, 'empty path');
  }
  if (v.includes('\0') || v.startsWith('/') || v.split('/').some((c) => c === '' || c === '.' || c === '..')) {
    throw new LayerRecordError(field, `${JSON.stringify(v)} is not a relative path inside the layer`);
  }
  return v;
}

function checkList(v: unknown, field: string, root: boolean): string[] {
  if (v === undefined) return [];
  if (!Array.isArray(v)) throw new LayerRecordError(field, 'not a list');
  return v.map((x, i) => checkRel(x, `${field}[${i}]`, root));
}

/**
 * Parse a layer marker for the layer `hex`. Returns null when it is not ours
 * for this layer (another schema, digest or whiteout form: the reader scans
 * instead); throws LayerRecordError naming the field when a version 2
 * record is malformed or hostile (a path leaving the layer, a trusted.* xattr).
 */
export function parseLayerMarker(text: string, hex: string): LayerMarker | null {
  let m: unknown;
  try {
    m = JSON.parse(text);
  } catch {
    return null;
  }
  if (!isObj(m) || m['schema'] !== 'cvmfs-thin/layer' || m['digest'] !== `sha256:${hex}`) return null;
  if (m['whiteouts'] === 'overlay') return m as unknown as LayerMarker;
  if (m['whiteouts'] !== 'record') return null;
  return { ...(m as unknown as LayerMarker), record: parseRecord(m['record'], 'record') };
}

/** A record (layer or chain), checked field by field; throws LayerRecordError naming the field. */
function parseRecord(r: unknown, at: string): LayerRecord {
  if (!isObj(r)) throw new LayerRecordError(at, 'missing or not an object');
  const xs = r['xattrs'] ?? [];
  if (!Array.isArray(xs)) throw new LayerRecordError(`${at}.xattrs`, 'not a list');
  const xattrs = xs.map((x: unknown, i) => {
    const f = `${at}.xattrs[${i}]`;
    if (!isObj(x)) throw new LayerRecordError(f, 'not an object');
    const name = x['name'];
    if (typeof name !== 'string' || !/^(user|security|system)\.[\x21-\x7e]{1,250}$/.test(name))
      throw new LayerRecordError(`${f}.name`, `${JSON.stringify(name)} is not a user.*, security.* or system.* xattr name`);
    const value = x['value'];
    if (typeof value !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(value) || value.length > 87_384)
      throw new LayerRecordError(`${f}.value`, 'not base64 (at most 64 KiB)');
    return { path: checkRel(x['path'], `${f}.path`, true), name, value };
  });
  return {
    deleted: checkList(r['deleted'], `${at}.deleted`, false),
    opaque: checkList(r['opaque'], `${at}.opaque`, true),
    xattrs,
    hidden: checkList(r['hidden'], `${at}.hidden`, false),
  };
}

/** The marker in a chain's root: which layers it merges and the record of the merged tree (no deletions left). */
export interface ChainMarker {
  schema: 'cvmfs-thin/chain';
  /** The DUCC chain ID (the directory name). */
  chain: string;
  /** The layers merged, bottom first (hex of the compressed digests). */
  layers: string[];
  created: string;
  record: LayerRecord;
}

/**
 * Parse a chain's marker for the chain `id`. Null when it is not ours for this
 * chain (another schema or ID, layers that do not give the ID: the chain is
 * taken as DUCC's); throws LayerRecordError naming the field for a malformed or
 * hostile record.
 */
export function parseChainMarker(text: string, id: string): ChainMarker | null {
  let m: unknown;
  try {
    m = JSON.parse(text);
  } catch {
    return null;
  }
  if (!isObj(m) || m['schema'] !== 'cvmfs-thin/chain' || m['chain'] !== id) return null;
  const layers = m['layers'];
  if (!Array.isArray(layers) || !layers.every((h) => typeof h === 'string' && /^[a-f0-9]{64}$/.test(h)) || duccChainIds(layers as string[]).at(-1) !== id)
    return null;
  const record = parseRecord(m['record'], 'record');
  if (record.deleted.length + record.opaque.length > 0) throw new LayerRecordError('record', 'a chain has its deletions applied: no deleted or opaque entries');
  return { schema: 'cvmfs-thin/chain', chain: id, layers: layers as string[], created: String(m['created'] ?? ''), record };
}

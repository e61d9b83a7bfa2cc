/**
 * The thin-image manifest (`thin.json`): parsing, strict validation and
 * serialisation. Pure: no file system access. The format is specified in
 * thin-image/SPEC.md; this module is its reference reader and writer, shared by
 * the snapshotter, the graph driver and the converter.
 */
import { REPOSITORY_NAME } from '../cvmfs/location.js';
import { ThinManifestError } from '../errors/errors.js';
import { JsonSyntaxError, parseStrictJson } from '../util/json.js';

/** File names a thin layer may carry its manifest under (first is current; others are historical). */
export const THIN_MANIFEST_NAMES = ['thin.json', '.thin.json', '.thin'] as const;
export const THIN_MANIFEST_NAME = 'thin.json';
/** Manifests larger than this are refused (a 500-layer manifest is ~100 KiB). */
export const MAX_MANIFEST_BYTES = 1 << 20;
/** overlayfs stacks at most 500 lower layers. */
const MAX_THIN_LAYERS = 500;
/** The version we write, and the highest major version we read. */
const THIN_FORMAT_VERSION = '1.0';

export interface ThinLayer {
  /** `sha256:<hex>` of the compressed layer blob. */
  digest: string;
  hex: string;
  /** CVMFS repository of the layer directory. */
  repository: string;
  /** Path of the layer directory inside the repository (no leading slash). */
  path: string;
  /** The URL as written (or as derived when the manifest had none). */
  url: string;
}

export interface ThinManifest {
  version: string;
  minVersion?: string | undefined;
  origin?: string | undefined;
  comment?: string | undefined;
  /** Bottom (base) layer first, as in the image manifest. */
  layers: ThinLayer[];
}

interface ParseOptions {
  /** Repository used when a layer has no `url` (DUCC always writes one). */
  defaultRepository: string;
  /** Repositories a manifest may reference; anything else is refused. */
  allowedRepositories: readonly string[];
}

const HEX64 = /^[a-f0-9]{64}$/;
const VERSION = /^(\d+)(\.\d+){0,2}$/;
/** The DUCC layout of a layer directory inside a repository. */
const DUCC_LAYER_PATH = /^\.layers\/([a-f0-9]{2})\/([a-f0-9]{64})\/layerfs$/;

/** Path of a layer in the DUCC layout, inside its repository. */
export function duccLayerPath(hex: string): string {
  return `.layers/${hex.slice(0, 2)}/${hex}/layerfs`;
}

/** If `p` is a DUCC-layout layer path, the hex digest it names. */
export function duccLayerHex(p: string): string | null {
  const m = DUCC_LAYER_PATH.exec(p);
  return m && m[2]!.startsWith(m[1]!) ? m[2]! : null;
}

function compareVersions(a: string, b: string): number {
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

/**
 * Parse `cvmfs://<repository>/<path>`. The path is kept literally (no percent
 * decoding) and must be a clean relative path: no empty, `.` or `..` segments,
 * no control characters, no backslashes.
 */
export function parseCvmfsUrl(url: string, field: string): { repository: string; path: string } {
  const prefix = 'cvmfs://';
  if (!url.startsWith(prefix)) {
    throw new ThinManifestError(field, `${JSON.stringify(url)} is not a cvmfs:// URL`);
  }
  const rest = url.slice(prefix.length);
  const slash = rest.indexOf('/');
  const repository = slash < 0 ? rest : rest.slice(0, slash);
  const p = slash < 0 ? '' : rest.slice(slash + 1);
  if (!REPOSITORY_NAME.test(repository)) {
    throw new ThinManifestError(field, `${JSON.stringify(repository)} is not a CVMFS repository name`);
  }
  if (p === '') throw new ThinManifestError(field, `${JSON.stringify(url)} names no directory inside the repository`);

  if (/[\x00-\x1f\x7f\\]/.test(p)) throw new ThinManifestError(field, `path contains control characters or backslashes`);
  for (const seg of p.split('/')) {
    if (seg === '' || seg === '.' || seg === '..') {
      throw new ThinManifestError(field, `path ${JSON.stringify(p)} has an empty, "." or ".." segment (paths must stay inside the repository)`);
    }
  }
  return { repository, path: p };
}

function optString(obj: Record<string, unknown>, key: string, field: string): string | undefined {
  const v = obj[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') throw new ThinManifestError(field, `must be a string, got ${typeof v}`);
  return v;
}

/** Parse and validate a thin manifest. Throws ThinManifestError naming the bad field. */
export function parseThinManifest(input: string | Uint8Array, opts: ParseOptions): ThinManifest {
  const bytes = typeof input === 'string' ? Buffer.byteLength(input) : input.byteLength;
  if (bytes > MAX_MANIFEST_BYTES) {
    throw new ThinManifestError('(file)', `${bytes} bytes is larger than the ${MAX_MANIFEST_BYTES}-byte limit`);
  }
  let text: string;
  if (typeof input === 'string') text = input;
  else {
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(input);
    } catch {
      throw new ThinManifestError('(file)', 'is not valid UTF-8');
    }
  }
  let raw: unknown;
  try {
    raw = parseStrictJson(text);
  } catch (e) {
    throw new ThinManifestError('(file)', `is not valid JSON: ${e instanceof JsonSyntaxError ? e.message : String(e)}`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new ThinManifestError('(file)', 'must be a JSON object');
  }
  const obj = raw as Record<string, unknown>;

  const version = obj['version'];
  if (typeof version !== 'string') throw new ThinManifestError('version', 'is required and must be a string like "1.0"');
  const vm = VERSION.exec(version);
  if (!vm) throw new ThinManifestError('version', `${JSON.stringify(version)} is not a version like "1.0"`);
  if (Number(vm[1]) > 1) {
    throw new ThinManifestError('version', `${version} is not supported (this reader understands 0.x and 1.x)`);
  }
  const minVersion = optString(obj, 'min_version', 'min_version');
  if (minVersion !== undefined) {
    if (!VERSION.test(minVersion)) throw new ThinManifestError('min_version', `${JSON.stringify(minVersion)} is not a version like "1.0"`);
    if (compareVersions(minVersion, THIN_FORMAT_VERSION) > 0) {
      throw new ThinManifestError('min_version', `the image needs a reader of version ${minVersion}; this one is ${THIN_FORMAT_VERSION}`);
    }
  }
  const origin = optString(obj, 'origin', 'origin');
  const comment = optString(obj, 'comment', 'comment');

  const layersRaw = obj['layers'];
  if (!Array.isArray(layersRaw)) throw new ThinManifestError('layers', 'is required and must be an array');
  if (layersRaw.length > MAX_THIN_LAYERS) {
    throw new ThinManifestError('layers', `${layersRaw.length} layers exceed the overlayfs limit of ${MAX_THIN_LAYERS}`);
  }
  const allowed = new Set(opts.allowedRepositories);
  const layers: ThinLayer[] = layersRaw.map((l, i) => {
    const field = `layers[${i}]`;
    if (typeof l !== 'object' || l === null || Array.isArray(l)) throw new ThinManifestError(field, 'must be an object');
    const lo = l as Record<string, unknown>;
    const d = lo['digest'];
    if (typeof d !== 'string') throw new ThinManifestError(`${field}.digest`, 'is required and must be a string');
    const hex = d.startsWith('sha256:') ? d.slice(7) : d;
    if (!HEX64.test(hex)) {
      throw new ThinManifestError(`${field}.digest`, `${JSON.stringify(d)} is not a sha256 digest (64 lowercase hex, optionally prefixed by "sha256:")`);
    }
    let url = optString(lo, 'url', `${field}.url`);
    if (url === undefined || url === '') url = `cvmfs://${opts.defaultRepository}/${duccLayerPath(hex)}`;
    const { repository, path } = parseCvmfsUrl(url, `${field}.url`);
    if (!allowed.has(repository)) {
      throw new ThinManifestError(`${field}.url`, `repository ${JSON.stringify(repository)} is not allowed (allowed: ${[...allowed].join(', ')})`);
    }
    const pathHex = duccLayerHex(path);
    if (pathHex !== null && pathHex !== hex) {
      throw new ThinManifestError(`${field}.url`, `names layer ${pathHex} but digest is ${hex}`);
    }
    if (path.startsWith('.layers/') && pathHex === null) {
      throw new ThinManifestError(`${field}.url`, `${JSON.stringify(path)} is not a .layers/<xx>/<digest>/layerfs path`);
    }
    return { digest: `sha256:${hex}`, hex, repository, path, url };
  });
  return { version, minVersion, origin, comment, layers };
}

/** Serialise a manifest the way DUCC does (bare hex digests, cvmfs:// URLs), indented. */
export function serializeThinManifest(m: {
  origin?: string | undefined;
  comment?: string | undefined;
  layers: readonly { hex: string; repository: string; path: string }[];
}): string {
  const out: Record<string, unknown> = { version: THIN_FORMAT_VERSION };
  if (m.origin) out['origin'] = m.origin;
  out['layers'] = m.layers.map((l) => ({ digest: l.hex, url: `cvmfs://${l.repository}/${l.path}` }));
  if (m.comment) out['comment'] = m.comment;
  return `${JSON.stringify(out, null, 2)}\n`;
}

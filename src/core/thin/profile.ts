/**
 * Access profiles (thin-image/SPEC.md §8): which files a container of an
 * image read in its first seconds, learnt from real starts (core/stack/
 * access-recorder.ts on a node), kept with the image in the repository
 * (`.profiles/<xx>/<stack id>.json`, published by `cvmfs-thin profile
 * publish`) and prefetched on every later node (core/stack/prefetch.ts).
 *
 * An image is its ordered layer stack: the profile's key is the DUCC chain ID
 * of the stack's top layer, so every tag and thin manifest of the same layers
 * shares one profile. Entries name a path in the container's root and the
 * layer (hex digest) that served it. Pure: no file system access.
 */
import path from 'node:path';
import { InvalidArgumentError } from '../errors/errors.js';
import { JsonSyntaxError, parseStrictJson } from '../util/json.js';
import { duccChainIds } from '../cvmfs/layout.js';

export const PROFILES_DIR = '.profiles';
export const PROFILE_SCHEMA = 'cvmfs-thin/access-profile';
/** Files of one profile (a start that reads more is cut: the first ones matter). */
const MAX_PROFILE_FILES = 20_000;
export const MAX_PROFILE_BYTES = 8 << 20;

export interface ProfileEntry {
  /** Path in the container's root, without a leading slash. */
  path: string;
  /** The layer that served it (hex digest), when known. */
  layer?: string | undefined;
  size: number;
  /** ms after the recording started (order of first access). */
  at?: number | undefined;
}

export interface AccessProfile {
  schema: typeof PROFILE_SCHEMA;
  version: 1;
  /** The layer stack, bottom first (hex digests). */
  layers: string[];
  /** false: the image opted out (no prefetch, no recording). */
  prefetch: boolean;
  created: string;
  /** How it was learnt (recorder, window), free text. */
  source?: string | undefined;
  files: ProfileEntry[];
  /**
   * The profile's files packed into one tar beside it (`<stack id>.pack`,
   * SPEC §8): a node fetches that one object and starts its containers with
   * those files from a local layer above the image's (core/stack/hot.ts).
   */
  pack?: ProfilePack | undefined;
  /**
   * The same files as an EROFS image beside it (`<stack id>.erofs`, SPEC §8):
   * a node mounts it from CVMFS as the hot layer, nothing copied or unpacked.
   */
  image?: ProfileImage | undefined;
}

export interface ProfilePack {
  /** Size of the tar. */
  bytes: number;
  /** sha256 (hex) of the tar: a node uses it only when it matches. */
  sha256: string;
  /** Regular files in it (the first ones of `files` that were found, in access order). */
  files: number;
}

export interface ProfileImage extends ProfilePack {
  /** The image's superblock uuid (hex): a node mounts only the image its profile names. */
  uuid: string;
  /** Its data file (`<stack id>.erofs-data`: the image's extra device, the files' contents in access order). */
  data: { bytes: number; sha256: string };
}

/** The most a pack may hold (a node's local copy of the hottest files of one image). */
export const MAX_PACK_BYTES = 1 << 30;

const HEX64 = /^[a-f0-9]{64}$/;

/** The key of a layer stack (bottom first): its top layer's DUCC chain ID. */
export function stackId(layers: readonly string[]): string {
  if (layers.length === 0) throw new ProfileError('layers', 'is empty');
  return duccChainIds(layers).at(-1)!;
}

/** Where the profile of a stack lives, relative to the repository root. */
export function profilePath(layers: readonly string[]): string {
  const id = stackId(layers);
  return path.posix.join(PROFILES_DIR, id.slice(0, 2), `${id}.json`);
}

/** Where the pack of a stack's profile lives, relative to the repository root. */
export const packPath = (layers: readonly string[]): string => profilePath(layers).replace(/\.json$/, '.pack');
/** Where the EROFS image of a stack's profile lives (its metadata, and its data), relative to the repository root. */
export const imagePath = (layers: readonly string[]): string => profilePath(layers).replace(/\.json$/, '.erofs');
export const imageDataPath = (layers: readonly string[]): string => `${imagePath(layers)}-data`;

class ProfileError extends InvalidArgumentError {
  constructor(field: string, why: string) {
    super(`access profile: ${field}: ${why}`, 'CVMFS_THIN_BAD_PROFILE');
  }
}

/** A profile path: relative, normalised, no `..`, no NUL. */
function checkProfilePath(p: unknown, field: string): string {
  if (typeof p !== 'string' || p === '') throw new ProfileError(field, 'must be a non-empty string');
  if (p.length > 4096 || p.includes('\0')) throw new ProfileError(field, 'is longer than 4096 bytes or holds a NUL byte');
  const rel = p.replace(/^\/+/, '');
  const norm = path.posix.normalize(rel);
  if (norm !== rel || norm === '.' || norm.startsWith('../') || norm === '..')
    throw new ProfileError(field, `${JSON.stringify(p)} is not a normalised path inside the container's root`);
  return norm;
}

/** Parse and validate a profile (strict: unknown fields refused, every path checked). */
export function parseProfile(text: string): AccessProfile {
  if (text.length > MAX_PROFILE_BYTES) throw new ProfileError('file', `is larger than ${MAX_PROFILE_BYTES} bytes`);
  let o: unknown;
  try {
    o = parseStrictJson(text);
  } catch (e) {
    if (e instanceof JsonSyntaxError) throw new ProfileError('file', `is not valid JSON (${e.message})`);
    throw e;
  }
  if (!o || typeof o !== 'object' || Array.isArray(o)) throw new ProfileError('file', 'must be a JSON object');
  const r = o as Record<string, unknown>;
  for (const k of Object.keys(r))
    if (!['schema', 'version', 'layers', 'prefetch', 'created', 'source', 'files', 'pack', 'image'].includes(k))
      throw new ProfileError(k, 'is not a known field');
  if (r['schema'] !== PROFILE_SCHEMA) throw new ProfileError('schema', `must be ${JSON.stringify(PROFILE_SCHEMA)}`);
  if (r['version'] !== 1) throw new ProfileError('version', 'must be 1');
  const layers = r['layers'];
  if (!Array.isArray(layers) || layers.length === 0 || layers.length > 500 || !layers.every((h) => typeof h === 'string' && HEX64.test(h))) {
    throw new ProfileError('layers', 'must be 1-500 hex sha256 digests');
  }
  if (typeof r['prefetch'] !== 'boolean') throw new ProfileError('prefetch', 'must be true or false');
  if (typeof r['created'] !== 'string' || Number.isNaN(Date.parse(r['created']))) throw new ProfileError('created', 'must be a date');
  if (r['source'] !== undefined && typeof r['source'] !== 'string') throw new ProfileError('source', 'must be a string');
  const files = r['files'];
  if (!Array.isArray(files) || files.length > MAX_PROFILE_FILES) throw new ProfileError('files', `must be an array of at most ${MAX_PROFILE_FILES} entries`);
  const known = new Set(layers as string[]);
  const out: ProfileEntry[] = files.map((f: unknown, i) => {
    const field = `files[${i}]`;
    if (!f || typeof f !== 'object' || Array.isArray(f)) throw new ProfileError(field, 'must be an object');
    const e = f as Record<string, unknown>;
    for (const k of Object.keys(e)) if (!['path', 'layer', 'size', 'at'].includes(k)) throw new ProfileError(`${field}.${k}`, 'is not a known field');
    const layer = e['layer'];
    if (layer !== undefined && (typeof layer !== 'string' || !known.has(layer)))
      throw new ProfileError(`${field}.layer`, "must be one of the profile's layers");
    const size = e['size'];
    if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) throw new ProfileError(`${field}.size`, 'must be a byte count');
    const at = e['at'];
    if (at !== undefined && (typeof at !== 'number' || !Number.isFinite(at) || at < 0))
      throw new ProfileError(`${field}.at`, 'must be a non-negative number of ms');
    return { path: checkProfilePath(e['path'], `${field}.path`), layer: layer as string | undefined, size, at: at as number | undefined };
  });
  return {
    schema: PROFILE_SCHEMA,
    version: 1,
    layers: layers as string[],
    prefetch: r['prefetch'],
    created: r['created'],
    source: r['source'] as string | undefined,
    files: out,
    pack: r['pack'] === undefined ? undefined : parsePack(r['pack']),
    image: r['image'] === undefined ? undefined : parseImage(r['image']),
  };
}

function parsePack(v: unknown, field = 'pack', extra: string[] = []): ProfilePack {
  if (!v || typeof v !== 'object' || Array.isArray(v)) throw new ProfileError(field, 'must be an object');
  const p = v as Record<string, unknown>;
  for (const k of Object.keys(p)) if (![...['bytes', 'sha256', 'files'], ...extra].includes(k)) throw new ProfileError(`${field}.${k}`, 'is not a known field');
  const { bytes, sha256, files } = p;
  if (typeof bytes !== 'number' || !Number.isSafeInteger(bytes) || bytes < 1024 || bytes > MAX_PACK_BYTES)
    throw new ProfileError(`${field}.bytes`, `must be a byte count from 1024 to ${MAX_PACK_BYTES}`);
  if (typeof sha256 !== 'string' || !HEX64.test(sha256)) throw new ProfileError(`${field}.sha256`, 'must be a hex sha256');
  if (typeof files !== 'number' || !Number.isSafeInteger(files) || files < 0 || files > MAX_PROFILE_FILES)
    throw new ProfileError(`${field}.files`, `must be a count of at most ${MAX_PROFILE_FILES}`);
  return { bytes, sha256, files };
}

function parseImage(v: unknown): ProfileImage {
  const p = parsePack(v, 'image', ['uuid', 'data']);
  const { uuid, data } = v as Record<string, unknown>;
  if (p.bytes % 4096 !== 0) throw new ProfileError('image.bytes', 'must be a multiple of 4096');
  if (typeof uuid !== 'string' || !/^[a-f0-9]{32}$/.test(uuid)) throw new ProfileError('image.uuid', 'must be 32 hex digits');
  if (!data || typeof data !== 'object' || Array.isArray(data)) throw new ProfileError('image.data', 'must be an object');
  const d = data as Record<string, unknown>;
  for (const k of Object.keys(d)) if (!['bytes', 'sha256'].includes(k)) throw new ProfileError(`image.data.${k}`, 'is not a known field');
  if (typeof d['bytes'] !== 'number' || !Number.isSafeInteger(d['bytes']) || d['bytes'] < 4096 || d['bytes'] > MAX_PACK_BYTES || d['bytes'] % 4096 !== 0)
    throw new ProfileError('image.data.bytes', `must be a multiple of 4096 from 4096 to ${MAX_PACK_BYTES}`);
  if (typeof d['sha256'] !== 'string' || !HEX64.test(d['sha256'])) throw new ProfileError('image.data.sha256', 'must be a hex sha256');
  return { ...p, uuid, data: { bytes: d['bytes'], sha256: d['sha256'] } };
}

export function serializeProfile(p: AccessProfile): string {
  return `${JSON.stringify(p, (_k, v: unknown) => (v === undefined ? undefined : v), 1)}\n`;
}

/**
 * OCI / Docker v2 image structures: media types, descriptors, manifests,
 * indexes, configs; strict parsing (duplicate keys refused) with errors that
 * name the field. Pure.
 */
import { parseDigest, sha256Digest } from '../../core/util/digest.js';
import { JsonSyntaxError, parseStrictJson } from '../../core/util/json.js';
import { BadContentError } from '../errors.js';
import { compressionForMediaType } from '../tar.js';

export const MT = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayer: 'application/vnd.oci.image.layer.v1.tar',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  ociLayerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  ociLayerNondistGzip: 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
  ociLayerNondistZstd: 'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd',
  ociLayerNondist: 'application/vnd.oci.image.layer.nondistributable.v1.tar',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayer: 'application/vnd.docker.image.rootfs.diff.tar',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  dockerLayerZstd: 'application/vnd.docker.image.rootfs.diff.tar.zstd',
  dockerForeignGzip: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
  dockerSchema1: 'application/vnd.docker.distribution.manifest.v1+json',
  dockerSchema1Signed: 'application/vnd.docker.distribution.manifest.v1+prettyjws',
} as const;

export const MANIFEST_ACCEPT = [MT.ociIndex, MT.dockerList, MT.ociManifest, MT.dockerManifest].join(', ');
export const MAX_MANIFEST_BYTES = 4 << 20;
export const MAX_CONFIG_BYTES = 8 << 20;

export interface Platform {
  os: string;
  architecture: string;
  variant?: string | undefined;
  'os.version'?: string | undefined;
  'os.features'?: string[] | undefined;
}

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  urls?: string[] | undefined;
  annotations?: Record<string, string> | undefined;
  platform?: Platform | undefined;
  artifactType?: string | undefined;
}

export interface ImageManifest {
  schemaVersion: 2;
  mediaType?: string | undefined;
  config: Descriptor;
  layers: Descriptor[];
  annotations?: Record<string, string> | undefined;
}

export interface ImageIndex {
  schemaVersion: 2;
  mediaType?: string | undefined;
  manifests: Descriptor[];
  annotations?: Record<string, string> | undefined;
}

/** The image config (only the parts we read; the whole object is kept for the thin image). */
export interface ImageConfig {
  architecture?: string;
  os?: string;
  variant?: string;
  created?: string;
  config?: Record<string, unknown> & { Env?: string[]; Labels?: Record<string, string> | null };
  rootfs?: { type: string; diff_ids: string[] };
  history?: unknown[];
  [k: string]: unknown;
}

/** Raw manifest bytes as fetched, with their media type and digest. */
export interface RawManifest {
  bytes: Buffer;
  mediaType: string;
  digest: string;
}

type ParsedManifest = { kind: 'manifest'; manifest: ImageManifest; raw: RawManifest } | { kind: 'index'; index: ImageIndex; raw: RawManifest };

type Compression = 'gzip' | 'zstd' | 'none' | 'auto';

/** How a layer blob is compressed, from its media type. Throws for things that are not image layers. */
export function layerCompression(mediaType: string, where: string): Compression {
  const mt = mediaType.split(';')[0]!.trim();
  if (mt === '' || mt === 'application/octet-stream') return 'auto';
  if (mt.endsWith('+encrypted')) throw new BadContentError(`${where}: encrypted layers (${mt}) are not supported`, 'CVMFS_THIN_UNSUPPORTED');
  try {
    return compressionForMediaType(mt);
  } catch {
    throw new BadContentError(`${where}: media type ${JSON.stringify(mt)} is not an image layer`, 'CVMFS_THIN_UNSUPPORTED');
  }
}

function parseJson(bytes: Buffer, what: string): Record<string, unknown> {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new BadContentError(`${what}: not valid UTF-8`);
  }
  let v: unknown;
  try {
    v = parseStrictJson(text);
  } catch (e) {
    throw new BadContentError(`${what}: not valid JSON: ${e instanceof JsonSyntaxError ? e.message : String(e)}`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new BadContentError(`${what}: must be a JSON object`);
  return v as Record<string, unknown>;
}

function str(o: Record<string, unknown>, k: string, what: string, optional = false): string | undefined {
  const v = o[k];
  if (v === undefined || v === null) {
    if (optional) return undefined;
    throw new BadContentError(`${what}.${k}: missing`);
  }
  if (typeof v !== 'string') throw new BadContentError(`${what}.${k}: must be a string`);
  return v;
}

function annotations(o: Record<string, unknown>, what: string): Record<string, string> | undefined {
  const a = o['annotations'];
  if (a === undefined || a === null) return undefined;
  if (typeof a !== 'object' || Array.isArray(a)) throw new BadContentError(`${what}.annotations: must be an object`);
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(a as Record<string, unknown>)) {
    if (typeof v !== 'string') throw new BadContentError(`${what}.annotations.${k}: must be a string`);
    out[k] = v;
  }
  return out;
}

function parseDescriptor(v: unknown, what: string): Descriptor {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new BadContentError(`${what}: must be an object`);
  const o = v as Record<string, unknown>;
  const mediaType = str(o, 'mediaType', what, true) ?? '';
  const digest = str(o, 'digest', what)!;
  if (!parseDigest(digest)) throw new BadContentError(`${what}.digest: ${JSON.stringify(digest)} is not a sha256 digest`);
  const size = o['size'];
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) throw new BadContentError(`${what}.size: must be a non-negative integer`);
  const d: Descriptor = { mediaType, digest, size };
  const urls = o['urls'];
  if (Array.isArray(urls)) d.urls = urls.filter((u): u is string => typeof u === 'string');
  const ann = annotations(o, what);
  if (ann) d.annotations = ann;
  const p = o['platform'];
  if (p !== undefined && p !== null) {
    if (typeof p !== 'object' || Array.isArray(p)) throw new BadContentError(`${what}.platform: must be an object`);
    const po = p as Record<string, unknown>;
    d.platform = {
      os: str(po, 'os', `${what}.platform`)!,
      architecture: str(po, 'architecture', `${what}.platform`)!,
      variant: str(po, 'variant', `${what}.platform`, true),
      'os.version': str(po, 'os.version', `${what}.platform`, true),
    };
  }
  const at = str(o, 'artifactType', what, true);
  if (at) d.artifactType = at;
  return d;
}

/**
 * Parse a manifest or index. `declared` is the Content-Type / descriptor media
 * type; the document's own `mediaType` wins when present, and must agree.
 */
export function parseManifest(raw: RawManifest, what: string): ParsedManifest {
  if (raw.bytes.length > MAX_MANIFEST_BYTES) throw new BadContentError(`${what}: manifest of ${raw.bytes.length} bytes is larger than ${MAX_MANIFEST_BYTES}`);
  const o = parseJson(raw.bytes, what);
  const inner = str(o, 'mediaType', what, true);
  const declared = raw.mediaType.split(';')[0]!.trim();
  if (o['schemaVersion'] === 1 || declared === MT.dockerSchema1 || declared === MT.dockerSchema1Signed) {
    throw new BadContentError(
      `${what}: Docker schema 1 manifests are not supported (deprecated since 2017); re-push the image with a current client`,
      'CVMFS_THIN_UNSUPPORTED',
    );
  }
  if (o['schemaVersion'] !== 2) throw new BadContentError(`${what}.schemaVersion: must be 2`);
  let mt = inner ?? declared;
  if (!mt || mt === 'application/json' || mt === 'application/octet-stream') mt = Array.isArray(o['manifests']) ? MT.ociIndex : MT.ociManifest;
  const fixedRaw: RawManifest = { ...raw, mediaType: mt };
  if (mt === MT.ociIndex || mt === MT.dockerList) {
    const ms = o['manifests'];
    if (!Array.isArray(ms)) throw new BadContentError(`${what}.manifests: must be an array`);
    const index: ImageIndex = {
      schemaVersion: 2,
      mediaType: inner,
      manifests: ms.map((m, i) => parseDescriptor(m, `${what}.manifests[${i}]`)),
      annotations: annotations(o, what),
    };
    return { kind: 'index', index, raw: fixedRaw };
  }
  if (mt === MT.ociManifest || mt === MT.dockerManifest) {
    const layers = o['layers'];
    if (!Array.isArray(layers)) throw new BadContentError(`${what}.layers: must be an array`);
    const manifest: ImageManifest = {
      schemaVersion: 2,
      mediaType: inner,
      config: parseDescriptor(o['config'], `${what}.config`),
      layers: layers.map((l, i) => parseDescriptor(l, `${what}.layers[${i}]`)),
      annotations: annotations(o, what),
    };
    return { kind: 'manifest', manifest, raw: fixedRaw };
  }
  throw new BadContentError(`${what}: media type ${JSON.stringify(mt)} is not an image manifest or index`, 'CVMFS_THIN_UNSUPPORTED');
}

export function parseConfig(bytes: Buffer, what: string, layerCount: number): ImageConfig {
  if (bytes.length > MAX_CONFIG_BYTES) throw new BadContentError(`${what}: config of ${bytes.length} bytes is larger than ${MAX_CONFIG_BYTES}`);
  const o = parseJson(bytes, what) as ImageConfig;
  const rootfs = o.rootfs;
  if (rootfs !== undefined) {
    if (typeof rootfs !== 'object' || rootfs === null || !Array.isArray(rootfs.diff_ids))
      throw new BadContentError(`${what}.rootfs.diff_ids: must be an array`);
    rootfs.diff_ids.forEach((d, i) => {
      if (typeof d !== 'string' || !parseDigest(d)) throw new BadContentError(`${what}.rootfs.diff_ids[${i}]: ${JSON.stringify(d)} is not a sha256 digest`);
    });
    if (rootfs.diff_ids.length !== layerCount) {
      throw new BadContentError(`${what}.rootfs.diff_ids: ${rootfs.diff_ids.length} entries but the manifest lists ${layerCount} layers`);
    }
  }
  if (o.config !== undefined && o.config !== null && (typeof o.config !== 'object' || Array.isArray(o.config))) {
    throw new BadContentError(`${what}.config: must be an object`);
  }
  return o;
}

/** A manifest whose digest we computed from its bytes. */
export function rawManifest(bytes: Buffer, mediaType: string): RawManifest {
  return { bytes, mediaType, digest: sha256Digest(bytes) };
}

export function isIndexMediaType(mt: string): boolean {
  return mt === MT.ociIndex || mt === MT.dockerList;
}

export function isManifestMediaType(mt: string): boolean {
  return mt === MT.ociManifest || mt === MT.dockerManifest;
}

/** JSON the way registries and containerd expect (no indentation), deterministic key order as given. */
export function canonicalJson(v: unknown): Buffer {
  return Buffer.from(JSON.stringify(v));
}

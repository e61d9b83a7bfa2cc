/**
 * The thin image: one layer holding only `thin.json` (mode 0644, uid/gid 0,
 * packed by the shared tar writer, src/core/tar),
 * and a config that keeps the source image's whole runtime config plus
 * `CVMFS_IMAGE=true`, labelled with the source. Deterministic: converting
 * the same image twice gives the same digests.
 */
import { gzipSync } from 'node:zlib';
import { sha256Digest } from '../core/util/digest.js';
import { duccLayerPath, parseThinManifest, serializeThinManifest, THIN_MANIFEST_NAME } from '../core/thin/manifest.js';
import type { ImageToWrite } from './image/source.js';
import { packEntriesToBuffer } from './tar.js';
import { canonicalJson, type Descriptor, type ImageConfig, MT, type Platform, type RawManifest, rawManifest } from './image/types.js';

const LABEL_SOURCE = 'cvmfs-thin.source';
const LABEL_SOURCE_DIGEST = 'cvmfs-thin.source.digest';
const LABEL_REPOSITORY = 'cvmfs-thin.repository';

interface ThinInput {
  /** The source image (informational `origin` of thin.json). */
  origin: string;
  /** Digest of the source platform manifest. */
  manifestDigest: string;
  /** Digest of the source index the manifest was chosen from, if any. */
  indexDigest?: string | undefined;
  config: ImageConfig;
  /** Layer hexes (compressed digests), bottom first. */
  layers: readonly string[];
  repository: string;
  platform: Platform;
}

/** The exact thin.json text for these layers. */
function thinManifestText(i: Pick<ThinInput, 'origin' | 'layers' | 'repository'>): string {
  const text = serializeThinManifest({
    origin: i.origin,
    layers: i.layers.map((hex) => ({ hex, repository: i.repository, path: duccLayerPath(hex) })),
  });
  // the reference reader must accept what we write
  parseThinManifest(text, { defaultRepository: i.repository, allowedRepositories: [i.repository] });
  return text;
}

export async function buildThinImage(i: ThinInput): Promise<ImageToWrite> {
  const text = thinManifestText(i);
  const created = typeof i.config.created === 'string' && !Number.isNaN(Date.parse(i.config.created)) ? i.config.created : '1970-01-01T00:00:00Z';
  // one file, mode 0644, uid/gid 0, stamped with the image's creation time (whole seconds)
  const tar = packEntriesToBuffer([{ name: THIN_MANIFEST_NAME, data: text, mode: 0o644, mtime: Math.floor(Date.parse(created) / 1000) }]);
  const diffId = sha256Digest(tar);
  const gz = gzipSync(tar, { level: 9 });
  const layerDigest = sha256Digest(gz);

  const src = i.config;
  const runtime: Record<string, unknown> = { ...(src.config ?? {}) };
  const env = (Array.isArray(runtime['Env']) ? (runtime['Env'] as unknown[]) : []).filter(
    (e): e is string => typeof e === 'string' && !e.startsWith('CVMFS_IMAGE='),
  );
  env.push('CVMFS_IMAGE=true');
  runtime['Env'] = env;
  const labels = runtime['Labels'] && typeof runtime['Labels'] === 'object' ? { ...(runtime['Labels'] as Record<string, string>) } : {};
  labels[LABEL_SOURCE] = i.origin;
  labels[LABEL_SOURCE_DIGEST] = i.manifestDigest;
  labels[LABEL_REPOSITORY] = i.repository;
  runtime['Labels'] = labels;

  const config: Record<string, unknown> = { ...src };
  config['created'] = created;
  config['architecture'] = i.platform.architecture;
  config['os'] = i.platform.os;
  if (i.platform.variant) config['variant'] = i.platform.variant;
  config['config'] = runtime;
  config['rootfs'] = { type: 'layers', diff_ids: [diffId] };
  config['history'] = [{ created, created_by: 'cvmfs-thin convert', comment: `thin image of ${i.origin} (${i.manifestDigest})` }];
  delete config['container_config'];
  const configBytes = canonicalJson(config);
  const configDigest = sha256Digest(configBytes);

  const annotations: Record<string, string> = {
    'org.opencontainers.image.base.name': i.origin,
    'org.opencontainers.image.base.digest': i.manifestDigest,
    [LABEL_SOURCE_DIGEST]: i.manifestDigest,
    [LABEL_REPOSITORY]: i.repository,
  };
  if (i.indexDigest) annotations['cvmfs-thin.source.index-digest'] = i.indexDigest;
  const manifest = {
    schemaVersion: 2,
    mediaType: MT.ociManifest,
    config: { mediaType: MT.ociConfig, digest: configDigest, size: configBytes.length },
    layers: [{ mediaType: MT.ociLayerGzip, digest: layerDigest, size: gz.length }],
    annotations,
  };
  return {
    manifest: rawManifest(canonicalJson(manifest), MT.ociManifest),
    config: { digest: configDigest, mediaType: MT.ociConfig, bytes: configBytes },
    layers: [{ digest: layerDigest, mediaType: MT.ociLayerGzip, bytes: gz, tar, diffId }],
    platform: i.platform,
  };
}

/** An OCI index over per-platform thin images. */
export function buildThinIndex(images: ImageToWrite[], annotations: Record<string, string>): RawManifest {
  const manifests: Descriptor[] = images.map((img) => ({
    mediaType: img.manifest.mediaType,
    digest: img.manifest.digest,
    size: img.manifest.bytes.length,
    platform: { os: img.platform.os, architecture: img.platform.architecture, ...(img.platform.variant ? { variant: img.platform.variant } : {}) },
  }));
  return rawManifest(canonicalJson({ schemaVersion: 2, mediaType: MT.ociIndex, manifests, annotations }), MT.ociIndex);
}

/**
 * containers/storage's on-disk format, as read by podman 4.3 / CRI-O
 * (containers/storage v1.43, overlay driver) from an *additional image
 * store*. Pure: record types, IDs, file names. Paths are relative to the
 * store directory (`<repository>/podmanStore`).
 *
 *   overlay/<layer id>/diff      → <mount root>/.layers/<xx>/<hex>/layerfs (the repository's layer, no copy;
 *                                  absolute, as containers/storage requires, at the repository's mount point on the nodes)
 *   overlay/<layer id>/link      short link name (26 chars, no newline)
 *   overlay/<layer id>/lower     `l/<parent link>:l/<grandparent link>…` (top first; absent for a base layer)
 *   overlay/l/<link>             → ../<layer id>/diff
 *   overlay-layers/layers.json   [Layer…]      overlay-layers/layers.lock
 *   overlay-layers/<layer id>.tar-split.gz → ../../.layers/<xx>/<hex>/.metadata/tar-split.json.gz (when the layer has one)
 *   overlay-images/images.json   [Image…]      overlay-images/images.lock
 *   overlay-images/<image id>/<big data file> (manifest, manifest-<digest>, the config)
 */
import { createHash, randomBytes } from 'node:crypto';
import path from 'node:path';
import { LAYER_ROOTFS, LAYER_TAR_SPLIT, LAYERS_DIR, METADATA_DIR } from '../../core/cvmfs/layout.js';
import { InvalidArgumentError } from '../../core/errors/errors.js';
import { canonicalRegistry, type DockerReference } from '../reference.js';

export const STORE_DIR = 'podmanStore';
const DRIVER = 'overlay';
const LINK_DIR = 'l';
const LAYERS_SUBDIR = 'overlay-layers';
const IMAGES_SUBDIR = 'overlay-images';
const LAYERS_JSON = 'layers.json';
const IMAGES_JSON = 'images.json';
const LAYERS_LOCK = 'layers.lock';
const IMAGES_LOCK = 'images.lock';
/** Our per-layer note inside `overlay/<id>/` (containers/storage ignores other names). */
export const LAYER_NOTE = 'cvmfs-thin.json';
/** Present while an update runs; found by the next run, which then repairs and re-announces the store. */
const UPDATE_MARKER = '.cvmfs-thin-update';
/** containers/storage's image big-data key of the default manifest. */
export const MANIFEST_KEY = 'manifest';
/** Length of containers/storage's last-writer token at the start of a lock file. */
export const LAST_WRITER_SIZE = 64;

/** The `diff` links of stores written by earlier versions (relative: containers/storage refuses them for commit, build, save). */
export const OLD_DIFF_TARGET = /^\.\.\/\.\.\/\.\.\/\.layers\/[a-f0-9]{2}\/[a-f0-9]{64}\/layerfs$/;
/** An absolute `diff` link into a repository layer: group 1 is the mount root, group 2 the layer's hex. */
export const DIFF_TARGET = /^(\/.*)\/\.layers\/[a-f0-9]{2}\/([a-f0-9]{64})\/layerfs$/;
/** containers/storage's tar-split of a layer, beside layers.json. */
const TAR_SPLIT_SUFFIX = '.tar-split.gz';

/**
 * Where the repository is mounted on the nodes that read the store
 * (`/cvmfs/<repository>`): absolute, normalised, not `/`, no control characters.
 */
export function checkStoreRoot(root: unknown, what = '--podman-store-root'): string {
  if (
    typeof root !== 'string' ||
    !path.isAbsolute(root) ||
    root === '/' ||
    path.normalize(root) !== root ||
    root.endsWith('/') ||
    /[\u0000-\u001f\u007f]/.test(root)
  ) {
    throw new InvalidArgumentError(
      `${what} ${JSON.stringify(root)} is not an absolute, normalised directory path (where the repository is mounted on the nodes, e.g. /cvmfs/unpacked.cern.ch)`,
      'CVMFS_THIN_PODMAN_STORE_ROOT',
    );
  }
  return root;
}

/** A `layers.json` record (containers/storage Layer; unknown fields are kept as they are). */
export interface StoreLayer {
  id: string;
  parent?: string;
  created?: string;
  'compressed-diff-digest'?: string;
  'compressed-size'?: number;
  'diff-digest'?: string;
  'diff-size'?: number;
  compression?: number;
  names?: string[];
  [k: string]: unknown;
}

/** An `images.json` record (containers/storage Image; unknown fields are kept). */
export interface StoreImage {
  id: string;
  digest?: string;
  names?: string[];
  'names-history'?: string[];
  layer?: string;
  metadata?: string;
  'big-data-names'?: string[];
  'big-data-sizes'?: Record<string, number>;
  'big-data-digests'?: Record<string, string>;
  created?: string;
  [k: string]: unknown;
}

/** What we note about a store layer (overlay/<id>/cvmfs-thin.json). */
export interface LayerNote {
  schema: 'cvmfs-thin/podman-layer';
  /** sha256:<hex> of the compressed blob: the repository's `.layers/<xx>/<hex>`. */
  digest: string;
  diff_id: string;
  /** How deletions are written in the layer: overlay whiteouts, none at all, or plain `.wh.*` files (fuse-overlayfs only). */
  whiteouts: 'overlay' | 'none' | 'plain';
}

const SHA256 = /^sha256:[a-f0-9]{64}$/;

export function isDigest(s: unknown): s is string {
  return typeof s === 'string' && SHA256.test(s);
}

export function mustDigest(s: unknown, what: string): string {
  if (!isDigest(s))
    throw new InvalidArgumentError(`${what}: ${JSON.stringify(s)} is not a sha256 digest (want sha256:<64 lowercase hex>)`, 'CVMFS_THIN_PODMAN_BAD_DIGEST');
  return s;
}

/**
 * Layer IDs as containers/image computes them when it pulls (storage_dest.go):
 * the first is the diff ID's hex, each next one sha256(<parent id> + "+" + <diff id hex>).
 * Using the same IDs means a node that pulls an image normally reuses the
 * store's layers, and a layer at another position of another stack gets its own entry.
 */
export function layerIds(diffIds: readonly string[]): string[] {
  const out: string[] = [];
  for (const d of diffIds) {
    const hex = mustDigest(d, 'diff ID').slice(7);
    const prev = out[out.length - 1];
    out.push(prev === undefined ? hex : createHash('sha256').update(`${prev}+${hex}`).digest('hex'));
  }
  return out;
}

const BASE32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

/** The overlay driver's short link name (26 base32 characters), derived from the layer ID so every writer agrees. */
export function shortLink(layerId: string): string {
  const b = createHash('sha256').update(`cvmfs-thin/podman-link:${layerId}`).digest();
  let bits = 0;
  let value = 0;
  let out = '';
  for (const byte of b) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5 && out.length < 26) {
      out += BASE32[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
    value &= (1 << bits) - 1;
  }
  return out.slice(0, 26);
}

/** containers/storage's makeBigDataBaseName: plain if only [a-z0-9.], else `=` + base64. */
export function bigDataFileName(key: string): string {
  if (key !== '' && /^[a-z0-9.]+$/.test(key) && !key.startsWith('..') && key !== '.') return key;
  return `=${Buffer.from(key, 'utf8').toString('base64')}`;
}

/** The big-data key of a manifest by digest (containers/image's manifestBigDataKey). */
export function manifestKey(digest: string): string {
  return `${MANIFEST_KEY}-${digest}`;
}

/** The name containers/storage knows an image by: `docker.io/library/busybox:latest`, `host:5000/a/b@sha256:…`. */
export function podmanName(r: DockerReference): string {
  const registry = canonicalRegistry(r.registry);
  const base = `${registry}/${r.repository}`;
  if (r.tag !== undefined) return `${base}:${r.tag}`;
  if (r.digest !== undefined) return `${base}@${r.digest}`;
  return `${base}:latest`;
}

/** A store name we accept: a reference without white space or control characters, at most 512 bytes. */
export function checkName(n: unknown): string {
  if (typeof n !== 'string' || n.length === 0 || n.length > 512 || /[\s\u0000-\u001f\u007f]/.test(n) || !n.includes('/')) {
    throw new InvalidArgumentError(
      `podman store: image name ${JSON.stringify(n)} is not a full reference (registry/repository:tag)`,
      'CVMFS_THIN_PODMAN_BAD_NAME',
    );
  }
  return n;
}

/** A fresh last-writer token in containers/storage's layout (time, counter, pid, random). */
let counter = 0n;
export function lastWriterToken(): Buffer {
  const b = Buffer.alloc(LAST_WRITER_SIZE);
  b.writeBigUInt64LE(BigInt(Date.now()) * 1_000_000n, 0);
  counter++;
  b.writeBigUInt64LE(counter, 8);
  b.writeUInt32LE(process.pid >>> 0, 16);
  randomBytes(LAST_WRITER_SIZE - 20).copy(b, 20);
  return b;
}

/** Paths of a store. */
export class StorePaths {
  /** Where the nodes see the repository (the `diff` links' prefix); default: the repository directory. */
  readonly mountRoot: string;
  /** `root` overrides `<repoDir>/podmanStore` (a store being built under a temporary name). */
  constructor(
    readonly repoDir: string,
    private readonly rootOverride?: string,
    mountRoot?: string,
  ) {
    this.mountRoot = mountRoot ?? repoDir;
  }
  get root(): string {
    return this.rootOverride ?? path.join(this.repoDir, STORE_DIR);
  }
  get overlay(): string {
    return path.join(this.root, DRIVER);
  }
  get links(): string {
    return path.join(this.overlay, LINK_DIR);
  }
  get layersDir(): string {
    return path.join(this.root, LAYERS_SUBDIR);
  }
  get imagesDir(): string {
    return path.join(this.root, IMAGES_SUBDIR);
  }
  get layersJson(): string {
    return path.join(this.layersDir, LAYERS_JSON);
  }
  get imagesJson(): string {
    return path.join(this.imagesDir, IMAGES_JSON);
  }
  get layersLock(): string {
    return path.join(this.layersDir, LAYERS_LOCK);
  }
  get imagesLock(): string {
    return path.join(this.imagesDir, IMAGES_LOCK);
  }
  get marker(): string {
    return path.join(this.root, UPDATE_MARKER);
  }
  layer(id: string): string {
    return path.join(this.overlay, id);
  }
  link(short: string): string {
    return path.join(this.links, short);
  }
  image(id: string): string {
    return path.join(this.imagesDir, id);
  }
  /** The `diff` symlink's target for a repository layer: absolute, at the repository's mount point on the nodes. */
  diffTarget(layerHex: string): string {
    return path.join(this.mountRoot, LAYERS_DIR, layerHex.slice(0, 2), layerHex, LAYER_ROOTFS);
  }
  /** A `diff` target of this store's mount root → the layer's hex, else null. */
  diffHex(target: string): string | null {
    const m = DIFF_TARGET.exec(target);
    return m && m[1] === this.mountRoot ? m[2]! : null;
  }
  /** A layer's `layerfs` in the repository directory (where this process sees it). */
  localRootfs(layerHex: string): string {
    return path.join(this.repoDir, LAYERS_DIR, layerHex.slice(0, 2), layerHex, LAYER_ROOTFS);
  }
  /** `overlay-layers/<id>.tar-split.gz`. */
  tarSplit(id: string): string {
    return path.join(this.layersDir, `${id}${TAR_SPLIT_SUFFIX}`);
  }
  /** Its target: the repository layer's own tar-split (relative: overlay-layers/ is two levels below the repository). */
  tarSplitTarget(layerHex: string): string {
    return path.join('..', '..', LAYERS_DIR, layerHex.slice(0, 2), layerHex, METADATA_DIR, LAYER_TAR_SPLIT);
  }
  /** The repository layer's tar-split, where this process sees it. */
  localTarSplit(layerHex: string): string {
    return path.join(this.repoDir, LAYERS_DIR, layerHex.slice(0, 2), layerHex, METADATA_DIR, LAYER_TAR_SPLIT);
  }
}

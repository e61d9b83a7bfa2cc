/**
 * Adding an image to the repository's podman store: the layers' overlay
 * directories (their `diff` is a relative symlink to the repository's own
 * `layerfs`, never a copy), short links, `layers.json`, the image's big data
 * (manifest, config) and `images.json`. Only what is missing is written:
 * layers already in the store are reused, other images are untouched except
 * when they lose a name this image takes (containers/storage requires names
 * to be unique; the old holder keeps it in `names-history`).
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { FailedPreconditionError, InvalidArgumentError, NotFoundError } from '../../core/errors/errors.js';
import { layerRootfs } from '../../core/cvmfs/layout.js';
import { writeFileAtomic } from '../../core/fs/fsutil.js';
import {
  bigDataFileName,
  checkName,
  checkStoreRoot,
  isDigest,
  type LayerNote,
  layerIds,
  MANIFEST_KEY,
  manifestKey,
  mustDigest,
  shortLink,
  type StoreImage,
  type StoreLayer,
  StorePaths,
} from './format.js';
import { assertMountRoot, ensureLayerDir, ensureLayerRoot, ensureTarSplitLink, layerDiffSize, reconcileMountRoot, whiteoutMode } from './layers.js';
import { isPresent } from './present.js';
import { lstatOrNull, readImages, readLayers, setSymlink, type StoreIoOptions, tmpName, withStore, writeImages, writeLayers } from './store-io.js';

export { layerDiffSize };

export interface PodmanLayerInput {
  /** Compressed blob digest: the repository's `.layers/<xx>/<hex>`. */
  digest: string;
  /** Uncompressed digest (the config's rootfs.diff_ids entry). */
  diffId: string;
  /** Compressed size (the manifest's). */
  size?: number | undefined;
  /** Uncompressed size, when known (saves podman walking the layer to size it). */
  diffSize?: number | undefined;
}

export interface PodmanImageInput {
  /** containers/storage names, e.g. `docker.io/library/busybox:latest` (see podmanName()). */
  names: string[];
  /** The registry manifest, byte for byte. */
  manifest: Buffer;
  /** The image config, byte for byte. */
  config: Buffer;
  layers: PodmanLayerInput[];
  /** Image creation time (default: the config's `created`). */
  created?: string | undefined;
}

export interface AddOptions extends StoreIoOptions {
  /**
   * Accept layers that keep deletions as plain `.wh.*` files (`--whiteouts keep`,
   * DUCC's layers): only fuse-overlayfs applies those. Default: refuse them.
   */
  allowPlainWhiteouts?: boolean | undefined;
  /**
   * Where the repository is mounted on the nodes that read the store
   * (`/cvmfs/<repository>`); the layers' `diff` links point there. Default:
   * the repository directory itself.
   */
  storeRoot?: string | undefined;
}

export interface AddResult {
  image_id: string;
  names: string[];
  status: 'added' | 'updated' | 'present';
  layers_added: string[];
  layers_reused: string[];
  /** Names taken from other images (which keep them in names-history). */
  names_moved: { name: string; from: string }[];
  /** The previous update had been interrupted and was repaired. */
  repaired: boolean;
  warnings: string[];
}

const sha256 = (b: Buffer | string) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

function parseJson(b: Buffer, what: string): Record<string, unknown> {
  try {
    const v = JSON.parse(b.toString('utf8')) as unknown;
    if (typeof v === 'object' && v !== null && !Array.isArray(v)) return v as Record<string, unknown>;
  } catch {
    /* below */
  }
  throw new InvalidArgumentError(`podman store: the ${what} is not a JSON object`, 'CVMFS_THIN_PODMAN_BAD_INPUT');
}

/** Check the input against itself: manifest layers = input layers, config diff_ids = input diff IDs. */
function validate(input: PodmanImageInput): { configDigest: string; manifestDigest: string; created: string | undefined } {
  const names = input.names.map(checkName);
  if (names.length === 0) throw new InvalidArgumentError('podman store: an image needs at least one name', 'CVMFS_THIN_PODMAN_BAD_NAME');
  const manifest = parseJson(input.manifest, 'manifest');
  const config = parseJson(input.config, 'config');
  const configDigest = sha256(input.config);
  const mc = manifest['config'] as { digest?: unknown } | undefined;
  if (mc?.digest !== configDigest)
    throw new InvalidArgumentError(
      `podman store: the manifest names config ${JSON.stringify(mc?.digest)}, the config given has digest ${configDigest}`,
      'CVMFS_THIN_PODMAN_BAD_INPUT',
    );
  const ml = manifest['layers'];
  if (!Array.isArray(ml))
    throw new InvalidArgumentError('podman store: the manifest has no layers list (an index is not an image)', 'CVMFS_THIN_PODMAN_BAD_INPUT');
  if (input.layers.length === 0) throw new InvalidArgumentError('podman store: an image without layers cannot be stored', 'CVMFS_THIN_PODMAN_BAD_INPUT');
  if (ml.length !== input.layers.length)
    throw new InvalidArgumentError(`podman store: the manifest has ${ml.length} layers, ${input.layers.length} were given`, 'CVMFS_THIN_PODMAN_BAD_INPUT');
  const diffIds = ((config['rootfs'] as { diff_ids?: unknown } | undefined)?.diff_ids ?? []) as unknown[];
  if (!Array.isArray(diffIds) || diffIds.length !== input.layers.length) {
    throw new InvalidArgumentError(
      `podman store: the config lists ${Array.isArray(diffIds) ? diffIds.length : 'no'} diff_ids for ${input.layers.length} layers`,
      'CVMFS_THIN_PODMAN_BAD_INPUT',
    );
  }
  input.layers.forEach((l, i) => {
    mustDigest(l.digest, `layer ${i} digest`);
    mustDigest(l.diffId, `layer ${i} diff ID`);
    if ((ml[i] as { digest?: unknown }).digest !== l.digest)
      throw new InvalidArgumentError(
        `podman store: layer ${i} is ${l.digest}, the manifest says ${JSON.stringify((ml[i] as { digest?: unknown }).digest)}`,
        'CVMFS_THIN_PODMAN_BAD_INPUT',
      );
    if (diffIds[i] !== l.diffId)
      throw new InvalidArgumentError(
        `podman store: layer ${i} has diff ID ${l.diffId}, the config says ${JSON.stringify(diffIds[i])}`,
        'CVMFS_THIN_PODMAN_BAD_INPUT',
      );
  });
  const created = input.created ?? (typeof config['created'] === 'string' ? config['created'] : undefined);
  return { configDigest, manifestDigest: sha256(input.manifest), created: created && !Number.isNaN(Date.parse(created)) ? created : undefined };
}

/** Big-data files of an image directory; each written atomically when missing or different. Returns true if any was written. */
async function ensureBigData(p: StorePaths, id: string, items: { key: string; data: Buffer }[]): Promise<boolean> {
  const dir = p.image(id);
  const st = await lstatOrNull(dir);
  if (st && !st.isDirectory()) throw new FailedPreconditionError(`podman store: ${dir} is not a directory`, 'CVMFS_THIN_PODMAN_BAD_STORE');
  if (!st) {
    const tmp = path.join(p.imagesDir, tmpName(id.slice(0, 12)));
    await fsp.mkdir(tmp, { mode: 0o755 });
    for (const it of items) await fsp.writeFile(path.join(tmp, bigDataFileName(it.key)), it.data, { mode: 0o644 });
    await fsp.rename(tmp, dir);
    return true;
  }
  let wrote = false;
  for (const it of items) {
    const f = path.join(dir, bigDataFileName(it.key));
    const cur = await fsp.readFile(f).catch(() => null);
    if (cur && cur.equals(it.data)) continue;
    await writeFileAtomic(f, it.data, 0o644);
    wrote = true;
  }
  return wrote;
}

/**
 * Add one image to `<repoDir>/podmanStore` (created when missing). Idempotent:
 * adding an image that is there writes nothing.
 */
export async function addImageToPodmanStore(repoDir: string, input: PodmanImageInput, o: AddOptions): Promise<AddResult> {
  const v = validate(input);
  const names = [...new Set(input.names)];
  const hexes = input.layers.map((l) => l.digest.slice(7));
  const ids = layerIds(input.layers.map((l) => l.diffId));
  const imageId = v.configDigest.slice(7);
  const warnings: string[] = [];

  // already there, complete: write nothing (not even the lock's marker)
  const keys = [MANIFEST_KEY, manifestKey(v.manifestDigest), v.configDigest];
  const storeRoot = o.storeRoot === undefined ? undefined : checkStoreRoot(o.storeRoot);
  const paths = new StorePaths(path.resolve(repoDir), undefined, storeRoot);
  if (await isPresent(paths, { imageId, names, ids, bigDataKeys: keys.slice(1) })) {
    return { image_id: imageId, names, status: 'present', layers_added: [], layers_reused: ids, names_moved: [], repaired: false, warnings };
  }

  // the repository's layers must be there, with deletions overlay understands
  const modes: LayerNote['whiteouts'][] = [];
  for (const [i, hex] of hexes.entries()) {
    const st = await lstatOrNull(layerRootfs(path.resolve(repoDir), hex)).catch(() => null);
    if (!st?.isDirectory())
      throw new NotFoundError(
        `podman store: layer ${i} sha256:${hex} is not in the repository (${layerRootfs(repoDir, hex)} is missing)`,
        'CVMFS_THIN_PODMAN_LAYER_MISSING',
      );
    const w = await whiteoutMode(path.resolve(repoDir), hex);
    if (w.mode === 'record') {
      throw new FailedPreconditionError(
        `podman store: layer sha256:${hex} keeps its deletions in its record (e.g. ${w.example}), the form that survives a CVMFS publish, and podman stacks layer directories itself: containers would show deleted files. ` +
          'Build the podman store from a tree converted without publishing (overlay whiteouts), or convert with --ingest --whiteouts keep for nodes that use fuse-overlayfs',
        'CVMFS_THIN_PODMAN_RECORD_WHITEOUTS',
      );
    }
    if (w.mode === 'plain') {
      const msg = `layer sha256:${hex} keeps deletions as plain .wh.* files (e.g. ${path.relative(layerRootfs(repoDir, hex), w.example!)}), which kernel overlay does not apply`;
      if (!o.allowPlainWhiteouts) {
        throw new FailedPreconditionError(
          `podman store: ${msg}; convert with --whiteouts overlay (and --overwrite-layers for DUCC's layers), or allow it for nodes that use fuse-overlayfs`,
          'CVMFS_THIN_PODMAN_PLAIN_WHITEOUTS',
        );
      }
      warnings.push(`${msg}: nodes must use fuse-overlayfs (mount_program)`);
    }
    modes.push(w.mode);
  }
  // a store for another mount point is refused before anything is written
  if ((await lstatOrNull(paths.root))?.isDirectory()) await assertMountRoot(paths, await readLayers(paths));
  const diffSizes = await Promise.all(input.layers.map((l, i) => (l.diffSize !== undefined ? l.diffSize : layerDiffSize(path.resolve(repoDir), hexes[i]!))));

  return withStore(repoDir, { ...o, storeRoot }, async (s) => {
    const p = s.paths;
    const added: string[] = [];
    const reused: string[] = [];
    // 0. one mount root per store (a store of earlier versions gets absolute links)
    const layers = await readLayers(p);
    const relinkedOld = await reconcileMountRoot(p, layers);
    if (relinkedOld > 0) o.log?.info({ store: p.root, links: relinkedOld }, 'podman store: diff links made absolute');
    // 1. layer directories, tar-split and short links (invisible to readers until layers.json lists them),
    // and the layers' roots as podman's own unpack leaves them (a container's / gets the top layer's mode)
    let lower: string | null = null;
    const noTarSplit: string[] = [];
    for (const [i, id] of ids.entries()) {
      const link = shortLink(id);
      const note: LayerNote = { schema: 'cvmfs-thin/podman-layer', digest: input.layers[i]!.digest, diff_id: input.layers[i]!.diffId, whiteouts: modes[i]! };
      const dir = await ensureLayerDir(p, id, { hex: hexes[i]!, link, lower, note });
      const rooted = await ensureLayerRoot(o.host, p.localRootfs(dir.hex));
      const [split, hasSplit] = await ensureTarSplitLink(p, id, dir.hex);
      if (!hasSplit) noTarSplit.push(`sha256:${dir.hex}`);
      const relinked = await setSymlink(p.link(link), `../${id}/diff`);
      (dir.wrote || rooted || split || relinked ? added : reused).push(id);
      lower = lower === null ? `l/${link}` : `l/${link}:${lower}`;
    }
    if (noTarSplit.length > 0) {
      warnings.push(
        `layers without a tar-split (converted by DUCC or an earlier cvmfs-thin): ${noTarSplit.join(', ')}; podman run, commit and build work, podman save and push of this image fail ("Digest did not match")`,
      );
    }

    // 2. layers.json: append the missing records (existing ones are kept as they are)
    const known = new Map(layers.map((l) => [l.id, l]));
    let layersChanged = false;
    const now = new Date().toISOString();
    for (const [i, id] of ids.entries()) {
      const l = input.layers[i]!;
      const rec: StoreLayer = {
        id,
        ...(i > 0 ? { parent: ids[i - 1]! } : {}),
        created: now,
        'compressed-diff-digest': l.digest,
        ...(l.size !== undefined ? { 'compressed-size': l.size } : {}),
        'diff-digest': l.diffId,
        ...(diffSizes[i] !== undefined ? { 'diff-size': diffSizes[i] } : {}),
      };
      const cur = known.get(id);
      if (cur) {
        if ((cur.parent ?? null) === (rec.parent ?? null)) continue;
        // a record with the wrong parent (written by someone else): ours is right by construction of the ID
        Object.assign(cur, rec);
      } else {
        layers.push(rec);
        known.set(id, rec);
        const ri = reused.indexOf(id);
        if (ri >= 0) reused.splice(ri, 1);
        if (!added.includes(id)) added.push(id);
      }
      layersChanged = true;
    }
    if (layersChanged) await writeLayers(p, layers);

    // 3. big data, then images.json
    const bigData = [
      { key: MANIFEST_KEY, data: input.manifest },
      { key: manifestKey(v.manifestDigest), data: input.manifest },
      { key: v.configDigest, data: input.config },
    ];
    const images = await readImages(p);
    let image = images.find((im) => im.id === imageId);
    // the default "manifest" of an existing image stays its first one; this manifest is added by digest
    const items = image && (image['big-data-digests']?.[MANIFEST_KEY] ?? v.manifestDigest) !== v.manifestDigest ? bigData.slice(1) : bigData;
    const bigDataWritten = await ensureBigData(p, imageId, items);
    let status: AddResult['status'] = 'present';
    const moved: AddResult['names_moved'] = [];
    if (!image) {
      image = {
        id: imageId,
        digest: v.manifestDigest,
        names: [],
        layer: ids[ids.length - 1]!,
        'big-data-names': [],
        'big-data-sizes': {},
        'big-data-digests': {},
        created: v.created ?? now,
      };
      images.push(image);
      status = 'added';
    }
    let changed = status === 'added';
    const img: StoreImage = image;
    const bn: string[] = (img['big-data-names'] ??= []);
    const bs: Record<string, number> = (img['big-data-sizes'] ??= {});
    const bd: Record<string, string> = (img['big-data-digests'] ??= {});
    for (const it of items) {
      const digest = sha256(it.data);
      if (!bn.includes(it.key)) {
        bn.push(it.key);
        changed = true;
      }
      if (bs[it.key] !== it.data.length || bd[it.key] !== digest) {
        bs[it.key] = it.data.length;
        bd[it.key] = digest;
        changed = true;
      }
    }
    const top = ids[ids.length - 1]!;
    if (img.layer !== top || !isDigest(img.digest)) {
      img.layer = top;
      if (!isDigest(img.digest)) img.digest = v.manifestDigest;
      changed = true;
    }
    const own: string[] = (img.names ??= []);
    for (const n of names) {
      for (const other of images) {
        if (other === img || !other.names?.includes(n)) continue;
        other.names = other.names.filter((x) => x !== n);
        other['names-history'] = [n, ...(other['names-history'] ?? []).filter((x) => x !== n)];
        moved.push({ name: n, from: other.id });
        changed = true;
      }
      if (!own.includes(n)) {
        own.push(n);
        changed = true;
      }
    }
    if (changed) {
      await writeImages(p, images);
      if (status === 'present') status = 'updated';
    } else if (bigDataWritten || added.length > 0 || relinkedOld > 0) {
      status = 'updated';
    }
    o.log?.info({ image: imageId, names, status, layers_added: added.length, layers_reused: reused.length }, 'podman store updated');
    return {
      image_id: imageId,
      names,
      status,
      layers_added: added,
      layers_reused: reused,
      names_moved: moved,
      repaired: s.recovered || s.cleaned.length > 0,
      warnings,
    };
  });
}

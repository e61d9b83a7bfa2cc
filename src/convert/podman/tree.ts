/**
 * Reading a converted image back from the repository tree
 * (`.metadata/<name>/{manifest.json,config.json}`, the layers'
 * `.metadata/layers.json` for uncompressed sizes), so that an image already
 * in the tree can be added to the podman store without the registry.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { InvalidArgumentError, NotFoundError } from '../../core/errors/errors.js';
import { METADATA_DIR } from '../../core/cvmfs/layout.js';
import { type DockerReference, parseDockerReference } from '../reference.js';
import { MULTIARCH_DIR } from '../repo.js';
import { type AddOptions, type AddResult, addImageToPodmanStore, layerDiffSize, type PodmanImageInput } from './add.js';
import { isDigest, podmanName } from './format.js';

/** Build the store input of an image from its manifest and config bytes (as the converter has them). */
export async function podmanInput(repoDir: string, m: { names: string[]; manifest: Buffer; config: Buffer }): Promise<PodmanImageInput> {
  let manifest: { layers?: { digest?: unknown; size?: unknown }[] };
  let config: { rootfs?: { diff_ids?: unknown[] } };
  try {
    manifest = JSON.parse(m.manifest.toString('utf8')) as typeof manifest;
    config = JSON.parse(m.config.toString('utf8')) as typeof config;
  } catch (e) {
    throw new InvalidArgumentError(`podman store: manifest or config is not JSON: ${(e as Error).message}`, 'CVMFS_THIN_PODMAN_BAD_INPUT');
  }
  const layers = Array.isArray(manifest.layers) ? manifest.layers : [];
  const diffIds = Array.isArray(config.rootfs?.diff_ids) ? config.rootfs.diff_ids : [];
  const out: PodmanImageInput['layers'] = [];
  for (const [i, l] of layers.entries()) {
    const digest = typeof l.digest === 'string' ? l.digest : '';
    out.push({
      digest,
      diffId: typeof diffIds[i] === 'string' ? diffIds[i] : '',
      size: typeof l.size === 'number' ? l.size : undefined,
      diffSize: isDigest(digest) ? await layerDiffSize(repoDir, digest.slice(7)) : undefined,
    });
  }
  return { names: m.names, manifest: m.manifest, config: m.config, layers: out };
}

/** The store name of a tree name (`registry.hub.docker.com/library/x:1` → `docker.io/library/x:1`). */
export function podmanNameOfTreeName(treeName: string): string {
  return podmanName(parseDockerReference(treeName));
}

/**
 * Add an image already converted into the tree, by its tree name
 * (`<registry>/<repository>:<tag>`), optionally from `.metadata/.multiarch/<platformDir>/`.
 */
export async function addTreeImageToPodmanStore(
  repoDir: string,
  treeName: string,
  o: AddOptions & { platformDir?: string | undefined; names?: string[] | undefined },
): Promise<AddResult> {
  let ref: DockerReference;
  try {
    ref = parseDockerReference(treeName);
  } catch (e) {
    throw new InvalidArgumentError(`podman store: ${(e as Error).message}`, 'CVMFS_THIN_PODMAN_BAD_NAME');
  }
  const rel = o.platformDir ? path.join(METADATA_DIR, MULTIARCH_DIR, o.platformDir, treeName) : path.join(METADATA_DIR, treeName);
  const dir = path.resolve(repoDir, rel);
  if (!dir.startsWith(path.resolve(repoDir, METADATA_DIR) + path.sep))
    throw new InvalidArgumentError(`podman store: image name ${JSON.stringify(treeName)} leaves .metadata`, 'CVMFS_THIN_PODMAN_BAD_NAME');
  let manifest: Buffer;
  let config: Buffer;
  try {
    manifest = await fsp.readFile(path.join(dir, 'manifest.json'));
    config = await fsp.readFile(path.join(dir, 'config.json'));
  } catch {
    throw new NotFoundError(
      `podman store: image ${treeName} is not converted in ${repoDir} (no ${rel}/manifest.json and config.json)`,
      'CVMFS_THIN_PODMAN_IMAGE_MISSING',
    );
  }
  const input = await podmanInput(repoDir, { names: o.names ?? [podmanName(ref)], manifest, config });
  return addImageToPodmanStore(repoDir, input, o);
}

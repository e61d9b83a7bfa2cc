/**
 * `cvmfs-thin rm`: take converted images out of a repository tree — their
 * `.metadata/<name>` records (every platform), their readable links, and
 * their names in the podman store (an image left without a name goes, with
 * the layers only it used). Layers, chains and flat trees stay until `gc`
 * finds them unreferenced (DUCC's `delete-image` does the same).
 *
 * Every name is checked before anything is changed: a malformed reference or
 * an image that is not there is refused and nothing is removed. The changes
 * happen inside one publishing session (a `cvmfs_server` transaction when
 * hooks are configured), under the host-wide publishing lock.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { METADATA_DIR } from '../core/cvmfs/layout.js';
import { InvalidArgumentError, NotFoundError } from '../core/errors/errors.js';
import { removeTree } from '../core/fs/fsutil.js';
import { podmanName, removeNamesFromPodmanStore } from './podman/index.js';
import type { Publisher } from './publish.js';
import { duccImageName, parseDockerReference } from './reference.js';
import { MULTIARCH_DIR } from './repo.js';

interface RemoveOptions {
  repositoryDir: string;
  /** As the user wrote them: `registry.example.org/team/app:1.2`, with or without `docker://`. */
  images: string[];
  dryRun: boolean;
  log: Logger;
  publisher: Publisher;
  /** Give up waiting for the podman store's writer lock after this long (default: wait). */
  lockTimeoutMs?: number | undefined;
}

interface RemovedImage {
  image: string;
  /** The name in the tree (`.metadata/<tree_name>`), DUCC's form. */
  tree_name: string;
  /** `.metadata` directories removed, relative to the repository. */
  metadata: string[];
  /** Readable links removed, relative to the repository. */
  links: string[];
  /** The name in the podman store, if the image had one there. */
  podman_name: string | null;
}

interface RemoveReport {
  dry_run: boolean;
  removed: RemovedImage[];
  podman: { removed_images: string[]; removed_layers: string[] } | null;
}

async function isDir(p: string): Promise<boolean> {
  return (await fsp.lstat(p).catch(() => null))?.isDirectory() === true;
}
async function isLink(p: string): Promise<boolean> {
  return (await fsp.lstat(p).catch(() => null))?.isSymbolicLink() === true;
}

/** The platform directories of `.metadata/.multiarch` (or the root's `.multiarch`). */
async function platformDirs(dir: string): Promise<string[]> {
  return (await fsp.readdir(dir, { withFileTypes: true }).catch(() => [])).filter((e) => e.isDirectory()).map((e) => e.name);
}

/** `rel` joined under `base`, refused if it would leave it (names come from users). */
function inside(base: string, rel: string): string {
  const p = path.resolve(base, rel);
  if (!p.startsWith(base + path.sep)) throw new InvalidArgumentError(`rm: ${JSON.stringify(rel)} leaves ${base}`, 'CVMFS_THIN_BAD_REFERENCE');
  return p;
}

/** What is there of one image. */
async function find(root: string, image: string, storeNames: Set<string>): Promise<RemovedImage> {
  const ref = parseDockerReference(image.replace(/^docker:\/\//, ''));
  const tree = duccImageName(ref);
  const meta = path.join(root, METADATA_DIR);
  const found: RemovedImage = { image, tree_name: tree, metadata: [], links: [], podman_name: null };
  if (await isDir(inside(meta, tree))) found.metadata.push(path.join(METADATA_DIR, tree));
  for (const pd of await platformDirs(path.join(meta, MULTIARCH_DIR))) {
    if (await isDir(inside(meta, path.join(MULTIARCH_DIR, pd, tree)))) found.metadata.push(path.join(METADATA_DIR, MULTIARCH_DIR, pd, tree));
  }
  if (await isLink(inside(root, tree))) found.links.push(tree);
  for (const pd of await platformDirs(path.join(root, MULTIARCH_DIR))) {
    if (await isLink(inside(root, path.join(MULTIARCH_DIR, pd, tree)))) found.links.push(path.join(MULTIARCH_DIR, pd, tree));
  }
  const name = podmanName(ref);
  if (storeNames.has(name)) found.podman_name = name;
  return found;
}

/** Remove `dir`'s now empty parents up to (not including) `stop`. */
async function pruneEmpty(dir: string, stop: string): Promise<void> {
  for (let d = dir; d.startsWith(stop + path.sep); d = path.dirname(d)) {
    try {
      await fsp.rmdir(d);
    } catch {
      return; // not empty (or gone): stop here
    }
  }
}

async function storeNamesOf(root: string): Promise<Set<string>> {
  try {
    const images = JSON.parse(await fsp.readFile(path.join(root, 'podmanStore', 'overlay-images', 'images.json'), 'utf8')) as { names?: unknown }[];
    return new Set(images.flatMap((i) => (Array.isArray(i.names) ? i.names.filter((n): n is string => typeof n === 'string') : [])));
  } catch {
    return new Set();
  }
}

export async function removeImages(o: RemoveOptions): Promise<RemoveReport> {
  const root = path.resolve(o.repositoryDir);
  if (!(await isDir(root))) throw new InvalidArgumentError(`rm: repository directory ${root} does not exist`, 'CVMFS_THIN_NO_REPOSITORY_DIR');
  if (o.images.length === 0) throw new InvalidArgumentError('rm: name at least one image', 'CVMFS_THIN_BAD_FLAG');
  // 1. everything checked before anything changes
  const storeNames = await storeNamesOf(root);
  const found: RemovedImage[] = [];
  const seen = new Set<string>();
  for (const image of o.images) {
    const f = await find(root, image, storeNames);
    if (seen.has(f.tree_name)) continue;
    seen.add(f.tree_name);
    found.push(f);
  }
  const missing = found.filter((f) => f.metadata.length === 0 && f.links.length === 0 && f.podman_name === null);
  if (missing.length > 0) {
    throw new NotFoundError(
      `rm: ${missing.map((m) => `${m.image} (${m.tree_name})`).join(', ')} ${missing.length === 1 ? 'is' : 'are'} not in ${root}: no ${METADATA_DIR}/<name>, no readable link, no podman store name; nothing was removed`,
      'CVMFS_THIN_IMAGE_NOT_FOUND',
    );
  }
  const report: RemoveReport = { dry_run: o.dryRun, removed: found, podman: null };
  const names = found.flatMap((f) => (f.podman_name ? [f.podman_name] : []));
  if (o.dryRun) {
    if (names.length > 0) {
      const r = await removeNamesFromPodmanStore(root, names, { host: o.publisher.host, dryRun: true });
      report.podman = { removed_images: r.removed_images, removed_layers: r.removed_layers };
    }
    return report;
  }
  // 2. the changes, in one transaction: the store first (if its lock cannot be had, nothing else changed)
  await o.publisher.session(async () => {
    if (names.length > 0) {
      const r = await removeNamesFromPodmanStore(root, names, { host: o.publisher.host, log: o.log, lockTimeoutMs: o.lockTimeoutMs });
      report.podman = { removed_images: r.removed_images, removed_layers: r.removed_layers };
    }
    for (const f of found) {
      for (const l of f.links) {
        await fsp.rm(path.join(root, l), { force: true });
        await pruneEmpty(path.dirname(path.join(root, l)), root);
      }
      for (const m of f.metadata) {
        await removeTree(path.join(root, m));
        await pruneEmpty(path.dirname(path.join(root, m)), path.join(root, METADATA_DIR));
      }
      o.log.info({ image: f.image, tree_name: f.tree_name, metadata: f.metadata, links: f.links, podman: f.podman_name }, 'image removed');
    }
  });
  return report;
}

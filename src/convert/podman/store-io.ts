/**
 * File-level operations on a podman store: the skeleton, the store lock,
 * atomic JSON replacement, last-writer tokens, and the repair of what an
 * interrupted update left behind.
 *
 * Consistency without blocking readers: every file is replaced by
 * temp + fsync + rename, `layers.json` is written before `images.json` when
 * adding (an image never names a layer that is not listed yet) and after it
 * when removing, and each JSON change is announced by a new last-writer
 * token in the matching lock file (what containers/storage's `Modified()`
 * compares, so long-running readers such as CRI-O reload). Writers
 * (converters, gc) serialise on an exclusive flock of `layers.lock`
 * (through the Host seam); containers/storage readers take fcntl read locks,
 * which flock never blocks.
 */
import { CATALOG_MARKER } from '../../core/cvmfs/masks.js';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { FailedPreconditionError, InvalidArgumentError } from '../../core/errors/errors.js';
import { writeFileAtomic } from '../../core/fs/fsutil.js';
import type { Host } from '../../core/host/host.js';
import { acquireLock } from '../../core/state/lock.js';
import { tmpName, tmpOwner, TMP_PREFIX } from '../repo.js';
import { pidAlive } from '../util.js';
import { LAST_WRITER_SIZE, lastWriterToken, type StoreImage, type StoreLayer, StorePaths } from './format.js';

export interface StoreIoOptions {
  log?: Logger | undefined;
  /** Takes the store's writer lock. */
  host: Host;
  /** Give up waiting for another writer after this long (default: wait). */
  lockTimeoutMs?: number | undefined;
  signal?: AbortSignal | undefined;
  /** Where the nodes mount the repository (the prefix of the `diff` links written); default: the repository directory. */
  storeRoot?: string | undefined;
}

/** lstat that answers null for a missing path. */
export async function lstatOrNull(p: string): Promise<import('node:fs').Stats | null> {
  try {
    return await fsp.lstat(p);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
}

/** A directory we create or accept: never a symlink (it could lead our writes out of the repository). */
async function ensureRealDir(dir: string): Promise<void> {
  const st = await lstatOrNull(dir);
  if (st === null) {
    await fsp.mkdir(dir, { mode: 0o755 });
    return;
  }
  if (!st.isDirectory())
    throw new FailedPreconditionError(
      `podman store: ${dir} exists and is not a directory (a symbolic link or a file is refused)`,
      'CVMFS_THIN_PODMAN_BAD_STORE',
    );
}

/** A lock file with a valid last-writer token (created when missing; a shorter one gets a token). */
async function ensureLockFile(file: string): Promise<void> {
  const st = await lstatOrNull(file);
  if (st && !st.isFile()) throw new FailedPreconditionError(`podman store: ${file} is not a regular file`, 'CVMFS_THIN_PODMAN_BAD_STORE');
  if (st && st.size >= LAST_WRITER_SIZE) return;
  await touchLock(file);
}

/** Write a new last-writer token in place (the inode stays: readers keep their open lock file). */
async function touchLock(file: string): Promise<void> {
  const fh = await fsp.open(file, (await lstatOrNull(file)) ? 'r+' : 'w', 0o644);
  try {
    await fh.write(lastWriterToken(), 0, LAST_WRITER_SIZE, 0);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Create the store's directories and lock files (idempotent). */
async function ensureSkeleton(p: StorePaths): Promise<void> {
  const repo = await lstatOrNull(p.repoDir);
  if (!repo || !repo.isDirectory())
    throw new InvalidArgumentError(`podman store: repository directory ${p.repoDir} does not exist`, 'CVMFS_THIN_PODMAN_BAD_STORE');
  if ((await lstatOrNull(p.root)) === null) {
    // a new store appears whole (directories and lock files) or not at all
    const tmpRoot = path.join(p.repoDir, tmpName('podmanStore'));
    const tmp = new StorePaths(p.repoDir, tmpRoot);
    for (const d of [tmp.root, tmp.overlay, tmp.links, tmp.layersDir, tmp.imagesDir]) await fsp.mkdir(d, { mode: 0o755 });
    await touchLock(tmp.layersLock);
    await touchLock(tmp.imagesLock);
    await fsp.rename(tmpRoot, p.root).catch(async (e: NodeJS.ErrnoException) => {
      await fsp.rm(tmpRoot, { recursive: true, force: true });
      if (e.code !== 'ENOTEMPTY' && e.code !== 'EEXIST') throw e;
    });
  }
  for (const d of [p.root, p.overlay, p.links, p.layersDir, p.imagesDir]) await ensureRealDir(d);
  await ensureLockFile(p.layersLock);
  await ensureLockFile(p.imagesLock);
  // nested catalogs, as DUCC's store has them: a published store of thousands of images stays
  // below CVMFS's 200 000 entries per catalog (containers/storage never lists these directories)
  for (const d of [p.root, p.overlay, p.imagesDir]) {
    await fsp.writeFile(path.join(d, CATALOG_MARKER), '', { flag: 'wx', mode: 0o644 }).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'EEXIST') throw e;
    });
  }
}

export async function readJsonArray<T extends { id: string }>(file: string, what: string): Promise<T[]> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
  if (text.trim() === '') return [];
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new FailedPreconditionError(
      `podman store: ${file} is not valid JSON (${(e as Error).message}); remove the store directory and convert again to rebuild it`,
      'CVMFS_THIN_PODMAN_BAD_STORE',
    );
  }
  if (!Array.isArray(v) || v.some((x) => typeof x !== 'object' || x === null || typeof (x as { id?: unknown }).id !== 'string')) {
    throw new FailedPreconditionError(`podman store: ${file} is not a list of ${what} records with an "id"`, 'CVMFS_THIN_PODMAN_BAD_STORE');
  }
  return v as T[];
}

async function writeJsonAtomic(file: string, value: unknown): Promise<void> {
  // compact, as containers/storage writes it; 0644 so that unprivileged podman can read the store
  await writeFileAtomic(file, JSON.stringify(value), 0o644);
}

export const readLayers = (p: StorePaths) => readJsonArray<StoreLayer>(p.layersJson, 'layer');
export const readImages = (p: StorePaths) => readJsonArray<StoreImage>(p.imagesJson, 'image');

export async function writeLayers(p: StorePaths, layers: StoreLayer[]): Promise<void> {
  await writeJsonAtomic(p.layersJson, layers);
  await touchLock(p.layersLock);
}

export async function writeImages(p: StorePaths, images: StoreImage[]): Promise<void> {
  await writeJsonAtomic(p.imagesJson, images);
  await touchLock(p.imagesLock);
}

/** Remove temporary names (`.tmp-*`, and writeFileAtomic's `.<name>.tmp-*`) in the store's directories. Call under the lock. */
async function removeTemps(p: StorePaths, log?: Logger): Promise<string[]> {
  const removed: string[] = [];
  for (const dir of [p.root, p.overlay, p.links, p.layersDir, p.imagesDir]) {
    let names: string[];
    try {
      names = await fsp.readdir(dir);
    } catch {
      continue;
    }
    for (const n of names) {
      if (!n.startsWith(TMP_PREFIX) && !/^\..+\.tmp-\d+-[a-z0-9]+$/.test(n)) continue;
      const full = path.join(dir, n);
      log?.info({ path: full }, 'podman store: removing a temporary name left by an interrupted update');
      await fsp.rm(full, { recursive: true, force: true });
      removed.push(full);
    }
  }
  // temporaries inside image big-data directories
  return removed;
}

/**
 * Remove layer directories, short links, tar-split links and image directories that neither
 * JSON file lists (left by an update killed before it listed them). A full
 * scan: done when an interrupted update is found, and by gc. Call under the lock.
 */
export async function sweepOrphans(p: StorePaths, log?: Logger): Promise<string[]> {
  const layerIds = new Set((await readLayers(p)).map((l) => l.id));
  const imageIds = new Set((await readImages(p)).map((i) => i.id));
  const removed: string[] = [];
  const rm = async (f: string) => {
    log?.info({ path: f }, 'podman store: removing an entry no JSON file lists');
    await fsp.rm(f, { recursive: true, force: true });
    removed.push(f);
  };
  for (const n of await fsp.readdir(p.overlay).catch(() => [] as string[])) {
    if (/^[a-f0-9]{64}$/.test(n) && !layerIds.has(n)) await rm(p.layer(n));
  }
  for (const n of await fsp.readdir(p.links).catch(() => [] as string[])) {
    const t = await fsp.readlink(p.link(n)).catch(() => null);
    const m = t ? /^\.\.\/([a-f0-9]{64})\/diff$/.exec(t) : null;
    if (!m || !layerIds.has(m[1]!)) await rm(p.link(n));
  }
  for (const n of await fsp.readdir(p.layersDir).catch(() => [] as string[])) {
    const m = /^([a-f0-9]{64})\.tar-split\.gz$/.exec(n);
    if (m && !layerIds.has(m[1]!)) await rm(p.tarSplit(m[1]!));
  }
  for (const n of await fsp.readdir(p.imagesDir).catch(() => [] as string[])) {
    if (/^[a-f0-9]{64}$/.test(n) && !imageIds.has(n)) await rm(p.image(n));
  }
  return removed;
}

/** Remove store skeletons left half-built in the repository directory by killed writers. */
async function removeStaleSkeletons(p: StorePaths, log?: Logger): Promise<void> {
  for (const n of await fsp.readdir(p.repoDir).catch(() => [] as string[])) {
    const pid = tmpOwner(n);
    if (!n.startsWith(`${TMP_PREFIX}podmanStore-`) || pid === null || pid === process.pid || pidAlive(pid)) continue;
    log?.info({ path: path.join(p.repoDir, n) }, 'podman store: removing a store skeleton left by an interrupted update');
    await fsp.rm(path.join(p.repoDir, n), { recursive: true, force: true });
  }
}

interface StoreSession {
  paths: StorePaths;
  /** True when the previous update did not finish (its marker was still there). */
  recovered: boolean;
  /** Temporary names removed at the start. */
  cleaned: string[];
}

/**
 * Run `fn` holding the store's writer lock, with the update marker set.
 * Leftovers of an interrupted update are removed first, and if one was
 * interrupted both tokens are renewed at the end so that readers reload.
 */
export async function withStore<T>(repoDir: string, o: StoreIoOptions, fn: (s: StoreSession) => Promise<T>): Promise<T> {
  const paths = new StorePaths(path.resolve(repoDir), undefined, o.storeRoot);
  await ensureSkeleton(paths);
  const lock = await acquireLock(paths.layersLock, {
    host: o.host,
    ...(o.lockTimeoutMs !== undefined ? { timeoutMs: o.lockTimeoutMs } : {}),
    ...(o.signal ? { signal: o.signal } : {}),
    onWait: () => o.log?.info({ lock: paths.layersLock }, 'podman store: waiting for another writer'),
  });
  try {
    const recovered = (await lstatOrNull(paths.marker)) !== null;
    await removeStaleSkeletons(paths, o.log);
    const cleaned = await removeTemps(paths, o.log);
    if (recovered) cleaned.push(...(await sweepOrphans(paths, o.log)));
    await writeFileAtomic(paths.marker, `${process.pid}\n`, 0o644);
    const result = await fn({ paths, recovered, cleaned });
    if (recovered) {
      o.log?.warn({ store: paths.root }, 'podman store: the previous update was interrupted; repaired');
      await touchLock(paths.layersLock);
      await touchLock(paths.imagesLock);
    }
    await fsp.rm(paths.marker, { force: true });
    return result;
  } finally {
    lock.release();
  }
}

/** Replace a symlink atomically (temp link + rename). Returns whether it changed. */
export async function setSymlink(link: string, target: string): Promise<boolean> {
  const st = await lstatOrNull(link);
  if (st?.isSymbolicLink() && (await fsp.readlink(link)) === target) return false;
  if (st && st.isDirectory()) await fsp.rm(link, { recursive: true, force: true });
  const tmp = path.join(path.dirname(link), tmpName('link'));
  await fsp.symlink(target, tmp);
  await fsp.rename(tmp, link);
  return true;
}

export { tmpName };

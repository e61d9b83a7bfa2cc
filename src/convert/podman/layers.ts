/**
 * A store layer and the repository layer under it: how the layer writes
 * deletions, its uncompressed size, its `overlay/<id>` entry (`diff` →
 * the layer's `layerfs` at the repository's mount point, `link`, `lower`,
 * our note), its tar-split link, and the mode of its root, which podman
 * copies to a container's `/`.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { layerMarker, layerMetadataDir, layerRootfs, parseLayerMarker } from '../../core/cvmfs/layout.js';
import { FailedPreconditionError } from '../../core/errors/errors.js';
import type { Host } from '../../core/host/host.js';
import { DIFF_TARGET, LAYER_NOTE, type LayerNote, OLD_DIFF_TARGET, type StoreLayer, type StorePaths } from './format.js';
import { lstatOrNull, setSymlink, tmpName } from './store-io.js';

/**
 * The mode containers/storage gives every layer's `diff` root when it unpacks
 * an image itself (overlay driver: 0555, owned by root; the tar's `./` entry
 * is ignored). A container's `/` is created with the mode of its image's top
 * layer root, so the store's layer roots get it too.
 */
const LAYER_ROOT_MODE = 0o555;

const isRoot = () => process.geteuid?.() === 0;

/** Is a layer root as podman's own unpack leaves it (mode; owner when we can set it)? */
export function layerRootOk(st: { mode: number; uid: number; gid: number }): boolean {
  return (st.mode & 0o7777) === LAYER_ROOT_MODE && (!isRoot() || (st.uid === 0 && st.gid === 0));
}

/** Give a repository layer's root podman's mode and owner (`host` sets the owner). Returns true when it changed. */
export async function ensureLayerRoot(host: Host, rootfs: string): Promise<boolean> {
  const st = await fsp.lstat(rootfs);
  if (layerRootOk(st)) return false;
  // owner first: a chown may clear mode bits
  if (isRoot() && (st.uid !== 0 || st.gid !== 0)) host.lchown(rootfs, 0, 0);
  await fsp.chmod(rootfs, LAYER_ROOT_MODE);
  return true;
}

/** The uncompressed size DUCC and the converter record in `.layers/<xx>/<hex>/.metadata/layers.json`. */
export async function layerDiffSize(repoDir: string, hex: string): Promise<number | undefined> {
  try {
    const v = JSON.parse(await fsp.readFile(path.join(layerMetadataDir(repoDir, hex), 'layers.json'), 'utf8')) as { 'diff-size'?: unknown }[];
    const n = Array.isArray(v) ? v[0]?.['diff-size'] : undefined;
    return typeof n === 'number' && Number.isSafeInteger(n) && n >= 0 ? n : undefined;
  } catch {
    return undefined;
  }
}

/** Does a directory tree hold a name starting with `.wh.`? (Plain whiteouts: kernel overlay ignores them.) */
async function hasPlainWhiteouts(dir: string, depth = 0): Promise<string | null> {
  if (depth > 256) return null;
  let ents;
  try {
    ents = await fsp.readdir(dir, { withFileTypes: true });
  } catch {
    return null;
  }
  for (const e of ents) if (e.name.startsWith('.wh.')) return path.join(dir, e.name);
  for (const e of ents) {
    if (!e.isDirectory()) continue;
    const f = await hasPlainWhiteouts(path.join(dir, e.name), depth + 1);
    if (f) return f;
  }
  return null;
}

/** How the repository layer writes deletions: our marker, or a scan. */
export async function whiteoutMode(repoDir: string, hex: string): Promise<{ mode: LayerNote['whiteouts'] | 'record'; example: string | null }> {
  try {
    const m = parseLayerMarker(await fsp.readFile(layerMarker(repoDir, hex), 'utf8'), hex);
    if (m?.whiteouts === 'overlay') return { mode: 'overlay', example: null };
    if (m?.record) {
      const r = m.record;
      const ex = r.deleted[0] ?? (r.opaque[0] !== undefined ? `${r.opaque[0]}/ (opaque)` : r.hidden[0]);
      return ex === undefined ? { mode: 'none', example: null } : { mode: 'record', example: ex };
    }
  } catch {
    /* no marker: a DUCC layer or --whiteouts keep */
  }
  const ex = await hasPlainWhiteouts(layerRootfs(repoDir, hex));
  return { mode: ex ? 'plain' : 'none', example: ex };
}

async function readText(p: string): Promise<string | null> {
  try {
    return await fsp.readFile(p, 'utf8');
  } catch {
    return null;
  }
}

/**
 * Make overlay/<id> hold exactly diff→target, link, lower and our note;
 * replace it if anything differs. A layer already there that points at
 * another blob of the same content (gzip vs zstd: same ID) is kept. Returns
 * whether it was written and the blob `diff` points at.
 */
export async function ensureLayerDir(
  p: StorePaths,
  id: string,
  want: { hex: string; link: string; lower: string | null; note: LayerNote },
): Promise<{ wrote: boolean; hex: string }> {
  const dir = p.layer(id);
  const target = p.diffTarget(want.hex);
  const st = await lstatOrNull(dir);
  if (st?.isDirectory()) {
    const diff = await fsp.readlink(path.join(dir, 'diff')).catch(() => null);
    const note = await readText(path.join(dir, LAYER_NOTE));
    const other = diff === null || diff === target ? null : p.diffHex(diff);
    const diffOk =
      diff === target
        ? note === `${JSON.stringify(want.note)}\n`
        : other !== null &&
          note !== null &&
          (await fsp.stat(p.localRootfs(other)).then(
            (x) => x.isDirectory(),
            () => false,
          ));
    const ok = diffOk && (await readText(path.join(dir, 'link'))) === want.link && (await readText(path.join(dir, 'lower'))) === want.lower;
    if (ok) return { wrote: false, hex: other ?? want.hex };
  }
  const tmp = path.join(p.overlay, tmpName(id.slice(0, 12)));
  await fsp.mkdir(tmp, { mode: 0o755 });
  await fsp.symlink(target, path.join(tmp, 'diff'));
  await fsp.writeFile(path.join(tmp, 'link'), want.link, { mode: 0o644 });
  if (want.lower !== null) await fsp.writeFile(path.join(tmp, 'lower'), want.lower, { mode: 0o644 });
  await fsp.writeFile(path.join(tmp, LAYER_NOTE), `${JSON.stringify(want.note)}\n`, { mode: 0o644 });
  if (st) {
    const aside = path.join(p.overlay, tmpName(`old-${id.slice(0, 12)}`));
    await fsp.rename(dir, aside);
    await fsp.rename(tmp, dir);
    await fsp.rm(aside, { recursive: true, force: true });
  } else {
    await fsp.rename(tmp, dir);
  }
  return { wrote: true, hex: want.hex };
}

/**
 * `overlay-layers/<id>.tar-split.gz` → the repository layer's tar-split when
 * it has one (else none: podman then tars the directory anew and `save`
 * fails "Digest did not match"). Returns [changed, has one].
 */
export async function ensureTarSplitLink(p: StorePaths, id: string, hex: string): Promise<[boolean, boolean]> {
  const link = p.tarSplit(id);
  const has = (await lstatOrNull(p.localTarSplit(hex)))?.isFile() === true;
  if (has) return [await setSymlink(link, p.tarSplitTarget(hex)), true];
  if ((await lstatOrNull(link)) === null) return [false, false];
  await fsp.rm(link, { force: true });
  return [true, false];
}

/** The `diff` link of a listed layer, or null. */
const diffOf = (p: StorePaths, id: string) => fsp.readlink(path.join(p.layer(id), 'diff')).catch(() => null);

/**
 * The store's mount root against ours, read from its first listed layer:
 * another absolute root is refused (the store must be valid at one mount
 * point). Read-only. Returns whether the store has relative links (written
 * by earlier versions).
 */
export async function assertMountRoot(p: StorePaths, layers: StoreLayer[]): Promise<boolean> {
  const first = layers[0];
  const t = first ? await diffOf(p, first.id) : null;
  if (t === null) return false;
  const m = DIFF_TARGET.exec(t);
  if (m && m[1] !== p.mountRoot) {
    throw new FailedPreconditionError(
      `podman store ${p.root}: its layers point into ${m[1]} (the repository's mount point when they were written), this run would write ${p.mountRoot}; ` +
        `give --podman-store-root ${m[1]} (or remove ${p.root} to rebuild the store for ${p.mountRoot})`,
      'CVMFS_THIN_PODMAN_STORE_ROOT',
    );
  }
  return OLD_DIFF_TARGET.test(t);
}

/** assertMountRoot, then every relative link made absolute. Returns the number rewritten. Call under the lock. */
export async function reconcileMountRoot(p: StorePaths, layers: StoreLayer[]): Promise<number> {
  if (!(await assertMountRoot(p, layers))) return 0;
  let n = 0;
  for (const l of layers) {
    const old = await diffOf(p, l.id);
    if (old === null || !OLD_DIFF_TARGET.test(old)) continue;
    await setSymlink(path.join(p.layer(l.id), 'diff'), p.diffTarget(old.split('/')[5]!));
    n++;
  }
  return n;
}

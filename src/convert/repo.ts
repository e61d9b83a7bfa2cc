/**
 * The DUCC tree of a repository directory (thin-image/SPEC.md §5), as the
 * converter writes it: layer directories committed by rename, per-layer and
 * per-image metadata, readable links, `.cvmfscatalog` markers, and the
 * cleaning of temporary names left by killed converters.
 */
import { constants as fsConstants, promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { InternalError, InvalidArgumentError } from '../core/errors/errors.js';
import { CHAINS_DIR, FLAT_DIR, LAYER_ROOTFS, LAYERS_DIR, layerDir, layerMarker, METADATA_DIR, parseLayerMarker } from '../core/cvmfs/layout.js';
import { pathExists, removeTree, writeFileAtomic } from '../core/fs/fsutil.js';
import { pidAlive } from './util.js';

export const CATALOG_MARKER = '.cvmfscatalog';
export const IMAGE_RECORD = 'cvmfs-thin.json';
export const MULTIARCH_DIR = '.multiarch';
/** Temporary names: `.tmp-<what>-<pid>-<random>`; never a valid final name. */
export const TMP_PREFIX = '.tmp-';

export interface ImageRecord {
  schema: 'cvmfs-thin/image';
  version: 1;
  source: string;
  name: string;
  platform: string;
  manifest_digest: string;
  config_digest: string;
  layers: string[];
  chains: boolean;
  flat: string | null;
  thin: { target: string; digest: string } | null;
  converted_at: string;
}

export function tmpName(what: string): string {
  return `${TMP_PREFIX}${what}-${process.pid}-${Math.random().toString(36).slice(2, 10)}`;
}

/** The pid encoded in a temporary name, or null. */
export function tmpOwner(name: string): number | null {
  const m = /^\.tmp-.*-(\d+)-[a-z0-9]+$/.exec(name);
  return m ? Number(m[1]) : null;
}

export class RepoTree {
  constructor(
    readonly root: string,
    readonly repository: string,
    private readonly log?: Logger,
  ) {}

  /** Check the directory and create the top-level structure with its catalog markers. */
  async init(): Promise<void> {
    let st;
    try {
      st = await fsp.stat(this.root);
    } catch {
      throw new InvalidArgumentError(
        `--repository-dir ${this.root} does not exist (create it, or mount the repository / open a transaction)`,
        'CVMFS_THIN_NO_REPOSITORY_DIR',
      );
    }
    if (!st.isDirectory()) throw new InvalidArgumentError(`--repository-dir ${this.root} is not a directory`, 'CVMFS_THIN_NO_REPOSITORY_DIR');
    try {
      await fsp.access(this.root, fsConstants.W_OK);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code ?? 'EACCES';
      // an I/O-class failure: inside a publishing transaction it aborts it
      throw new InternalError(`--repository-dir ${this.root} is not writable (${code}); is the repository in a transaction?`, `CVMFS_THIN_IO_${code}`);
    }
    await this.ensureCatalog(path.join(this.root, LAYERS_DIR));
    await fsp.mkdir(path.join(this.root, METADATA_DIR), { recursive: true });
  }

  /** Create `dir` (and parents) and an empty `.cvmfscatalog` in it. */
  async ensureCatalog(dir: string): Promise<void> {
    await fsp.mkdir(dir, { recursive: true });
    const m = path.join(dir, CATALOG_MARKER);
    if (!(await pathExists(m))) await fsp.writeFile(m, '', { mode: 0o644 });
  }

  bucket(kind: typeof LAYERS_DIR | typeof CHAINS_DIR | typeof FLAT_DIR, hex: string): string {
    return path.join(this.root, kind, hex.slice(0, 2));
  }

  /** A layer already in the tree: 'ours' (valid marker), 'foreign' (e.g. written by DUCC), or null. */
  async layerState(hex: string): Promise<'ours' | 'foreign' | null> {
    const dir = layerDir(this.root, hex);
    try {
      const st = await fsp.stat(path.join(dir, LAYER_ROOTFS));
      if (!st.isDirectory()) return null;
    } catch {
      return null;
    }
    try {
      if (parseLayerMarker(await fsp.readFile(layerMarker(this.root, hex), 'utf8'), hex)) return 'ours';
    } catch {
      /* no marker */
    }
    return 'foreign';
  }

  /** A fresh temporary layer directory in the layer's bucket (same file system as the final name). */
  async tmpLayerDir(hex: string): Promise<string> {
    const bucket = this.bucket(LAYERS_DIR, hex);
    await this.ensureCatalog(bucket);
    const dir = path.join(bucket, tmpName(hex));
    await fsp.mkdir(dir, { mode: 0o755 });
    return dir;
  }

  /**
   * Rename a finished temporary directory to its final name. Returns false when
   * the final name appeared meanwhile (another converter won): the temporary
   * directory is then removed.
   */
  async commitDir(tmp: string, final: string, opts: { replace?: boolean } = {}): Promise<boolean> {
    if (opts.replace && (await pathExists(final))) {
      // move the old one aside first (a temporary name, removed after the swap)
      const aside = path.join(path.dirname(final), tmpName(`old-${path.basename(final)}`));
      await fsp.rename(final, aside);
      await fsp.rename(tmp, final);
      // a layer in a podman store has a 0555 root (podman/layers.ts): writable again to empty it
      await fsp.chmod(path.join(aside, LAYER_ROOTFS), 0o755).catch(() => undefined);
      await removeTree(aside);
      return true;
    }
    try {
      await fsp.rename(tmp, final);
      return true;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOTEMPTY' || code === 'EEXIST') {
        await removeTree(tmp);
        return false;
      }
      throw e;
    }
  }

  /** Mark a layer as used now (GC's grace period counts from the last use). */
  async touchLayer(hex: string): Promise<void> {
    const now = new Date();
    await fsp.utimes(layerDir(this.root, hex), now, now).catch(() => undefined);
  }

  /** Add an image config digest to the layer's `origin.json` back-links (DUCC format). */
  async addOrigin(hex: string, configDigest: string): Promise<void> {
    const file = path.join(layerDir(this.root, hex), METADATA_DIR, 'origin.json');
    let origin: string[] = [];
    try {
      const o = JSON.parse(await fsp.readFile(file, 'utf8')) as { origin?: unknown };
      if (Array.isArray(o.origin)) origin = o.origin.filter((x): x is string => typeof x === 'string');
    } catch {
      /* none yet */
    }
    if (origin.includes(configDigest)) return;
    origin.push(configDigest);
    await fsp.mkdir(path.dirname(file), { recursive: true });
    await writeFileAtomic(file, `${JSON.stringify({ origin })}\n`);
  }

  /** `.metadata/<name>/` or, per platform, `.metadata/.multiarch/<platform>/<name>/`. */
  metadataDir(name: string, platformDir?: string): string {
    return platformDir ? path.join(this.root, METADATA_DIR, MULTIARCH_DIR, platformDir, name) : path.join(this.root, METADATA_DIR, name);
  }

  async readRecord(name: string, platformDir?: string): Promise<ImageRecord | null> {
    try {
      const r = JSON.parse(await fsp.readFile(path.join(this.metadataDir(name, platformDir), IMAGE_RECORD), 'utf8')) as ImageRecord;
      return r.schema === 'cvmfs-thin/image' ? r : null;
    } catch {
      return null;
    }
  }

  /** Write an image's metadata; manifest.json last (DUCC's "already converted" marker). */
  async writeImageMetadata(name: string, platformDir: string | undefined, m: { manifest: Buffer; config: Buffer; record: ImageRecord }): Promise<void> {
    const dir = this.metadataDir(name, platformDir);
    await fsp.mkdir(dir, { recursive: true });
    await writeFileAtomic(path.join(dir, 'config.json'), m.config);
    await writeFileAtomic(path.join(dir, IMAGE_RECORD), `${JSON.stringify(m.record, null, 2)}\n`);
    await writeFileAtomic(path.join(dir, 'manifest.json'), m.manifest);
  }

  /** Record an index for multi-platform conversions: `.metadata/<name>/index.json`. */
  async writeIndexMetadata(name: string, index: Buffer): Promise<void> {
    const dir = this.metadataDir(name);
    await fsp.mkdir(dir, { recursive: true });
    await writeFileAtomic(path.join(dir, 'index.json'), index);
  }

  /** The readable link `<name>` (or `.multiarch/<platform>/<name>`) → `target`, relative, replaced atomically. */
  async link(name: string, platformDir: string | undefined, target: string): Promise<string> {
    const link = platformDir ? path.join(this.root, MULTIARCH_DIR, platformDir, name) : path.join(this.root, name);
    await fsp.mkdir(path.dirname(link), { recursive: true });
    const rel = path.relative(path.dirname(link), target);
    try {
      if ((await fsp.readlink(link)) === rel) return link;
    } catch {
      /* missing or not a link */
    }
    const st = await fsp.lstat(link).catch(() => null);
    if (st && !st.isSymbolicLink()) throw new InvalidArgumentError(`${link} exists and is not a symbolic link; not replacing it`, 'CVMFS_THIN_PATH_OCCUPIED');
    const tmp = path.join(path.dirname(link), tmpName('link'));
    await fsp.symlink(rel, tmp);
    await fsp.rename(tmp, link);
    return link;
  }

  /**
   * Remove temporary directories left by converters that no longer run
   * (killed, crashed) in the layer, chain and flat buckets.
   */
  async cleanStaleTemps(): Promise<string[]> {
    const removed: string[] = [];
    for (const kind of [LAYERS_DIR, CHAINS_DIR, FLAT_DIR]) {
      const top = path.join(this.root, kind);
      let buckets: string[];
      try {
        buckets = await fsp.readdir(top);
      } catch {
        continue;
      }
      for (const b of buckets) {
        if (!/^[a-f0-9]{2}$/.test(b)) continue;
        let names: string[];
        try {
          names = await fsp.readdir(path.join(top, b));
        } catch {
          continue;
        }
        for (const n of names) {
          const pid = tmpOwner(n);
          if (pid === null || (pid !== process.pid && pidAlive(pid))) continue;
          if (pid === process.pid) continue;
          const p = path.join(top, b, n);
          this.log?.info({ path: p }, 'removing a temporary directory left by an interrupted conversion');
          await removeTree(p);
          removed.push(p);
        }
      }
    }
    return removed;
  }
}

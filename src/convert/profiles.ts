/**
 * Access profiles in a repository (thin-image/SPEC.md §8): publish profiles
 * recorded on nodes (`<snapshotter root>/profiles/*.json`) into
 * `.profiles/<xx>/<stack id>.json`, and opt an image out of prefetching
 * (a profile with `"prefetch": false` and no files). Each profile is
 * validated before anything is written; everything is written in one
 * publishing session (a cvmfs_server transaction on a publisher).
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { METADATA_DIR } from '../core/cvmfs/layout.js';
import { NotFoundError } from '../core/errors/errors.js';
import { writeFileAtomic } from '../core/fs/fsutil.js';
import type { Logger } from 'pino';
import {
  type AccessProfile,
  imageDataPath,
  imagePath,
  packPath,
  PROFILE_SCHEMA,
  PROFILES_DIR,
  parseProfile,
  profilePath,
  serializeProfile,
} from '../core/thin/profile.js';
import { writeProfilePack } from './profile-pack.js';
import type { Publisher } from './publish.js';
import { duccImageName, parseDockerReference } from './reference.js';
import type { ImageRecord } from './repo.js';
import { CATALOG_MARKER, IMAGE_RECORD } from './repo.js';

export interface ProfileWrite {
  /** Relative to the repository. */
  path: string;
  profile: AccessProfile;
  /** What it replaced: none, or a profile with this many files. */
  replaced: number | null;
  /** Profile files left out of its pack (not found as listed, or over the size limit). */
  packSkipped?: number | undefined;
}

/** Read and validate profile files (a bad one stops everything, naming the file). */
export async function readProfiles(files: readonly string[]): Promise<AccessProfile[]> {
  const out: AccessProfile[] = [];
  for (const f of files) {
    let text: string;
    try {
      text = await fsp.readFile(f, 'utf8');
    } catch (e) {
      throw new NotFoundError(`profile ${f}: ${(e as Error).message}`, 'CVMFS_THIN_INPUT_NOT_FOUND');
    }
    try {
      out.push(parseProfile(text));
    } catch (e) {
      (e as Error).message = `${f}: ${(e as Error).message}`;
      throw e;
    }
  }
  return out;
}

/** The layers (hex, bottom first) of a converted image, from its `.metadata` record. */
export async function imageLayers(repositoryDir: string, image: string): Promise<string[]> {
  const tree = duccImageName(parseDockerReference(image.replace(/^docker:\/\//, '')));
  const file = path.join(repositoryDir, METADATA_DIR, tree, IMAGE_RECORD);
  let rec: ImageRecord;
  try {
    rec = JSON.parse(await fsp.readFile(file, 'utf8')) as ImageRecord;
  } catch {
    throw new NotFoundError(
      `image ${image} is not converted in ${repositoryDir} (no ${path.relative(repositoryDir, file)}; a multi-platform image: give its platform's layers with a profile file)`,
      'CVMFS_THIN_IMAGE_NOT_FOUND',
    );
  }
  return rec.layers.map((d) => d.replace(/^sha256:/, ''));
}

/** An opt-out: this image is neither prefetched nor recorded. */
export function disabledProfile(layers: string[], why: string): AccessProfile {
  return { schema: PROFILE_SCHEMA, version: 1, layers, prefetch: false, created: new Date().toISOString(), source: why, files: [] };
}

/** How profiles are written: packs (default: with one, at most 256 MiB of files), a dry run. */
interface PublishProfileOptions {
  dryRun?: boolean | undefined;
  /** Write each profile's pack (profile-pack.ts); default true. */
  pack?: boolean | undefined;
  /** Write the pack's files as an EROFS image too (core/fs/erofs.ts); default true. */
  image?: boolean | undefined;
  packMaxBytes?: number | undefined;
  log: Logger;
}

/**
 * Write `profiles` into the repository in one publishing session, each with
 * its pack and image (written first: a node that reads the profile finds the
 * pack and image it names); a profile whose files are none of them there has
 * neither, and an older pack or image of it goes.
 */
export async function publishProfiles(
  repositoryDir: string,
  profiles: readonly AccessProfile[],
  publisher: Publisher,
  o: PublishProfileOptions,
): Promise<ProfileWrite[]> {
  const dryRun = o.dryRun === true;
  const writes: ProfileWrite[] = [];
  for (const p of profiles) {
    const rel = profilePath(p.layers);
    let replaced: number | null = null;
    try {
      replaced = parseProfile(await fsp.readFile(path.join(repositoryDir, rel), 'utf8')).files.length;
    } catch {
      /* none, or not valid: replaced */
    }
    writes.push({ path: rel, profile: p, replaced });
  }
  if (dryRun || writes.length === 0) return writes;
  await publisher.session(async () => {
    // its own catalog: profiles change more often than layers
    const dir = path.join(repositoryDir, PROFILES_DIR);
    await fsp.mkdir(dir, { recursive: true, mode: 0o755 });
    await fsp.writeFile(path.join(dir, CATALOG_MARKER), '', { flag: 'a' });
    for (const w of writes) {
      const f = path.join(repositoryDir, w.path);
      await fsp.mkdir(path.dirname(f), { recursive: true, mode: 0o755 });
      const packFile = path.join(repositoryDir, packPath(w.profile.layers));
      const imageFile = path.join(repositoryDir, imagePath(w.profile.layers));
      const dataFile = path.join(repositoryDir, imageDataPath(w.profile.layers));
      const [tmp, tmpImage, tmpData] = [packFile, imageFile, dataFile].map((f) => `${f}.tmp-${process.pid}`) as [string, string, string];
      for (const t of [tmp, tmpImage, tmpData]) await fsp.rm(t, { force: true });
      const withImage = o.image !== false;
      const packed =
        o.pack !== false && w.profile.prefetch && w.profile.files.length > 0
          ? await writeProfilePack(repositoryDir, w.profile, tmp, {
              host: publisher.host,
              log: o.log,
              maxBytes: o.packMaxBytes,
              imageOut: withImage ? { meta: tmpImage, data: tmpData } : undefined,
            })
          : null;
      const { pack: _p, image: _i, ...rest } = w.profile;
      w.profile = rest;
      if (packed) {
        await fsp.rename(tmp, packFile);
        w.profile.pack = packed.pack;
        w.packSkipped = packed.skipped;
      } else await fsp.rm(packFile, { force: true });
      if (packed?.image) {
        // the data first: a node that finds the metadata finds its device
        await fsp.rename(tmpData, dataFile);
        await fsp.rename(tmpImage, imageFile);
        w.profile.image = packed.image;
      } else for (const f of [imageFile, dataFile]) await fsp.rm(f, { force: true });
      await writeFileAtomic(f, serializeProfile(w.profile));
    }
  });
  return writes;
}

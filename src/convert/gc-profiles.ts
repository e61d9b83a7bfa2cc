/**
 * Garbage collection of access profiles (`.profiles/<xx>/<stack id>.json`,
 * thin-image/SPEC.md §8): a profile goes when a layer of its stack is no
 * longer in the repository (it goes with its layers, whatever its age), or —
 * after the grace period — when no image's stack is its stack any more.
 * Opt-outs (`profile disable`) follow the same rule. Anything under
 * `.profiles` that is not a regular file named by its own stack id and
 * holding a valid profile is reported and left alone: no symlink is followed,
 * nothing outside `.profiles` is read or removed.
 */
import { constants, promises as fsp } from 'node:fs';
import path from 'node:path';
import { layerDir } from '../core/cvmfs/layout.js';
import { MAX_PROFILE_BYTES, parseProfile, PROFILES_DIR, stackId } from '../core/thin/profile.js';
import { CATALOG_MARKER } from './repo.js';

interface ProfileVictim {
  path: string;
  /** Seconds since the last modification. */
  age: number;
  why: string;
  /** With its layers: goes whatever its age. */
  dependent: boolean;
  /** The file read (a profile replaced since is not removed). */
  ino: bigint;
  mtimeNs: bigint;
}

interface ProfilePlan {
  /** Removable now. */
  go: ProfileVictim[];
  /** Unreferenced, younger than the grace period. */
  young: ProfileVictim[];
  leftAlone: { path: string; reason: string }[];
}

interface ProfilePlanOptions {
  /** Stack ids of the images in the repository (their top layer's DUCC chain id). */
  imageStacks: ReadonlySet<string>;
  /** Layers (hex) this gc removes: taken as gone already. */
  removedLayers: ReadonlySet<string>;
  now: number;
  graceMs: number;
}

const BUCKET = /^[a-f0-9]{2}$/;
const NAME = /^([a-f0-9]{64})\.json$/;
/** A profile's pack and image files (profile-pack.ts): judged with their profile, removed with it; one without its profile goes. */
const PACK = /^([a-f0-9]{64})\.(?:pack|erofs|erofs-data)$/;
const PACK_SUFFIXES = ['.pack', '.erofs', '.erofs-data'];

/** Read a profile without following a symlink or blocking on a FIFO; a reason when it is not one to judge. */
async function readProfileFile(file: string): Promise<{ text: string; ino: bigint; mtimeNs: bigint } | string> {
  let fh;
  try {
    fh = await fsp.open(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ELOOP' ? 'is a symbolic link' : `cannot be read (${(e as Error).message})`;
  }
  try {
    const st = await fh.stat({ bigint: true });
    if (!st.isFile()) return 'is not a regular file';
    if (st.size > BigInt(MAX_PROFILE_BYTES)) return `is larger than ${MAX_PROFILE_BYTES} bytes`;
    return { text: await fh.readFile('utf8'), ino: st.ino, mtimeNs: st.mtimeNs };
  } catch (e) {
    return `cannot be read (${(e as Error).message})`;
  } finally {
    await fh.close();
  }
}

/** What goes, what stays young, what is not ours to judge. Reads only. */
export async function planProfiles(root: string, o: ProfilePlanOptions): Promise<ProfilePlan> {
  const plan: ProfilePlan = { go: [], young: [], leftAlone: [] };
  const top = path.join(root, PROFILES_DIR);
  const st = await fsp.lstat(top).catch(() => null);
  if (!st) return plan;
  if (!st.isDirectory()) {
    plan.leftAlone.push({ path: top, reason: st.isSymbolicLink() ? 'is a symbolic link' : 'is not a directory' });
    return plan;
  }
  const present = new Map<string, Promise<boolean>>();
  const layerPresent = (hex: string): Promise<boolean> => {
    if (o.removedLayers.has(hex)) return Promise.resolve(false);
    let p = present.get(hex);
    if (!p) {
      p = fsp.lstat(layerDir(root, hex)).then(
        (s) => s.isDirectory(),
        () => false,
      );
      present.set(hex, p);
    }
    return p;
  };
  const list = (dir: string) =>
    fsp.readdir(dir, { withFileTypes: true }).catch((e: unknown) => {
      plan.leftAlone.push({ path: dir, reason: `cannot be listed (${(e as Error).message})` });
      return [];
    });
  for (const b of await list(top)) {
    const bucket = path.join(top, b.name);
    if (b.name === CATALOG_MARKER) continue;
    if (!BUCKET.test(b.name) || !b.isDirectory()) {
      plan.leftAlone.push({ path: bucket, reason: b.isSymbolicLink() ? 'is a symbolic link' : 'is not a profile directory (.profiles/<xx>)' });
      continue;
    }
    const entries = await list(bucket);
    const names = new Set(entries.map((e) => e.name));
    for (const f of entries) {
      const file = path.join(bucket, f.name);
      if (f.name === CATALOG_MARKER) continue;
      const packOf = PACK.exec(f.name)?.[1];
      if (packOf?.startsWith(b.name)) {
        if (names.has(`${packOf}.json`)) continue; // goes or stays with its profile
        const ps = await fsp.lstat(file, { bigint: true }).catch(() => null);
        if (!ps?.isFile()) plan.leftAlone.push({ path: file, reason: ps?.isSymbolicLink() ? 'is a symbolic link' : 'is not a regular file' });
        else {
          const age = Math.round(Math.max(0, (o.now - Number(ps.mtimeNs / 1_000_000n)) / 1000));
          plan.go.push({ path: file, age, why: 'the pack or image of a profile that is gone', dependent: true, ino: ps.ino, mtimeNs: ps.mtimeNs });
        }
        continue;
      }
      const id = NAME.exec(f.name)?.[1];
      if (!id || !id.startsWith(b.name)) {
        plan.leftAlone.push({ path: file, reason: 'is not named <stack id>.json in its <xx> directory' });
        continue;
      }
      const read = await readProfileFile(file);
      if (typeof read === 'string') {
        plan.leftAlone.push({ path: file, reason: read });
        continue;
      }
      let layers: string[];
      try {
        layers = parseProfile(read.text).layers;
      } catch (e) {
        plan.leftAlone.push({ path: file, reason: (e as Error).message });
        continue;
      }
      if (stackId(layers) !== id) {
        plan.leftAlone.push({ path: file, reason: `holds the profile of another stack (${stackId(layers)})` });
        continue;
      }
      const age = Math.max(0, (o.now - Number(read.mtimeNs / 1_000_000n)) / 1000);
      const victim = { path: file, age: Math.round(age), ino: read.ino, mtimeNs: read.mtimeNs };
      let gone: string | undefined;
      for (const h of layers) if (!gone && !(await layerPresent(h))) gone = h;
      if (gone) plan.go.push({ ...victim, why: `its layer ${gone.slice(0, 12)} is gone`, dependent: true });
      else if (!o.imageStacks.has(id)) {
        const v = { ...victim, why: 'no image has its layers', dependent: false };
        if (age * 1000 >= o.graceMs) plan.go.push(v);
        else plan.young.push(v);
      }
    }
  }
  return plan;
}

/**
 * Remove a planned profile if the file is still the one judged (a profile
 * published since is left); its `<xx>` directory too when that is now empty.
 * Answers whether it was removed.
 */
export async function removeProfile(v: ProfileVictim): Promise<boolean> {
  const st = await fsp.lstat(v.path, { bigint: true }).catch(() => null);
  if (!st?.isFile() || st.ino !== v.ino || st.mtimeNs !== v.mtimeNs) return false;
  await fsp.unlink(v.path);
  // its pack and image, when they are plain files
  for (const suffix of PACK_SUFFIXES) {
    const f = v.path.replace(/\.json$/, suffix);
    if (f !== v.path && (await fsp.lstat(f).catch(() => null))?.isFile()) await fsp.unlink(f);
  }
  await fsp.rmdir(path.dirname(v.path)).catch(() => undefined);
  return true;
}

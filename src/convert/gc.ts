/**
 * Garbage collection of a repository tree: layers, chains and flat trees no
 * image references any more, older (by mtime) than a grace period, and the
 * temporary directories of converters that no longer run. References are
 * every `manifest.json` under `.metadata/` (layers, and the chains of their
 * prefixes — DUCC never collects chains, cvmfs#3318), the readable links and
 * the image records (flat trees). Access profiles go with their layers, or
 * when no image has their stack (gc-profiles.ts).
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { CHAINS_DIR, DIRTY_CHAINS_DIR, duccChainIds, FLAT_DIR, LAYER_ROOTFS, LAYERS_DIR, METADATA_DIR } from '../core/cvmfs/layout.js';
import { removeTree } from '../core/fs/fsutil.js';
import { planProfiles, removeProfile } from './gc-profiles.js';
import { collectPodmanStore, type PodmanGcReport, STORE_DIR } from './podman/index.js';
import type { Publisher } from './publish.js';
import { IMAGE_RECORD, type ImageRecord, tmpOwner } from './repo.js';
import { pidAlive, walkFiles } from './util.js';

interface GcOptions {
  repositoryDir: string;
  graceMs: number;
  dryRun: boolean;
  log: Logger;
  publisher: Publisher;
  now?: number | undefined;
  /** Give up waiting for the podman store's writer lock after this long (default: wait). */
  lockTimeoutMs?: number | undefined;
}

interface GcItem {
  kind: 'layer' | 'chain' | 'flat' | 'temporary' | 'dirty-chain-marker' | 'profile';
  path: string;
  /** Seconds since the last modification. */
  age: number;
  /** Why a profile goes (its layers are gone, or no image has them). */
  why?: string | undefined;
}

interface GcReport {
  dry_run: boolean;
  removed: GcItem[];
  /** Unreferenced but younger than the grace period. */
  kept_recent: GcItem[];
  referenced: { layers: number; chains: number; flat: number; images: number };
  errors: { path: string; message: string }[];
  /** Under `.profiles`, what is not a valid profile named by its stack: reported, never touched. */
  left_alone: { path: string; reason: string }[];
  /** The podman store's images and layers removed (planned, with --dry-run); null without a store. */
  podman: PodmanGcReport | null;
}

const HEX64 = /^[a-f0-9]{64}$/;

/** Layer hexes of a registry manifest; null if it is not one (e.g. an index). */
function manifestLayers(text: string): string[] | null {
  try {
    const m = JSON.parse(text) as { layers?: { digest?: unknown }[] };
    if (!Array.isArray(m.layers)) return null;
    return m.layers.map((l) => (typeof l.digest === 'string' ? l.digest.replace(/^sha256:/, '') : '')).filter((h) => HEX64.test(h));
  } catch {
    return null;
  }
}

function profileItem(v: { path: string; age: number; why: string }): GcItem {
  return { kind: 'profile', path: v.path, age: v.age, why: v.why };
}

export async function collectGarbage(o: GcOptions): Promise<GcReport> {
  const root = path.resolve(o.repositoryDir);
  const now = o.now ?? Date.now();
  const report: GcReport = {
    dry_run: o.dryRun,
    removed: [],
    kept_recent: [],
    referenced: { layers: 0, chains: 0, flat: 0, images: 0 },
    errors: [],
    left_alone: [],
    podman: null,
  };

  // 1. what is referenced
  const usedLayers = new Set<string>();
  const usedChains = new Set<string>();
  const usedFlat = new Set<string>();
  const imageStacks = new Set<string>();
  for await (const f of walkFiles(path.join(root, METADATA_DIR))) {
    if (f.isLink) continue;
    if (f.name === 'manifest.json') {
      const layers = manifestLayers(await fsp.readFile(f.path, 'utf8').catch(() => ''));
      if (!layers) continue;
      report.referenced.images++;
      for (const h of layers) usedLayers.add(h);
      const chains = duccChainIds(layers);
      for (const c of chains) usedChains.add(c);
      if (chains.length) imageStacks.add(chains.at(-1)!);
    } else if (f.name === IMAGE_RECORD) {
      try {
        const r = JSON.parse(await fsp.readFile(f.path, 'utf8')) as ImageRecord;
        if (r.flat) usedFlat.add(path.resolve(root, r.flat));
      } catch {
        /* not ours */
      }
    }
  }
  // readable links: every symlink outside the dot directories (and in .multiarch) that points into .flat
  const flatRoot = path.join(root, FLAT_DIR);
  const tops = (await fsp.readdir(root, { withFileTypes: true }).catch(() => [])).filter(
    (e) => e.isDirectory() && (!e.name.startsWith('.') || e.name === '.multiarch'),
  );
  for (const t of tops) {
    for await (const f of walkFiles(path.join(root, t.name))) {
      if (!f.isLink) continue;
      const target = path.resolve(path.dirname(f.path), await fsp.readlink(f.path).catch(() => ''));
      const rel = path.relative(flatRoot, target);
      const m = /^([a-f0-9]{2})\/([a-f0-9]{64})/.exec(rel);
      if (m) usedFlat.add(path.join(flatRoot, m[1]!, m[2]!));
    }
  }
  report.referenced.layers = usedLayers.size;
  report.referenced.chains = usedChains.size;
  report.referenced.flat = usedFlat.size;

  // 2. candidates
  const candidates: GcItem[] = [];
  const consider = async (kind: GcItem['kind'], p: string, used: boolean) => {
    if (used) return;
    let st;
    try {
      st = await fsp.lstat(p);
    } catch {
      return;
    }
    const age = Math.max(0, (now - st.mtimeMs) / 1000);
    const item: GcItem = { kind, path: p, age: Math.round(age) };
    if (kind === 'temporary' || age * 1000 >= o.graceMs) candidates.push(item);
    else report.kept_recent.push(item);
  };
  for (const [kindDir, kind, used] of [
    [LAYERS_DIR, 'layer', (h: string) => usedLayers.has(h)],
    [CHAINS_DIR, 'chain', (h: string) => usedChains.has(h)],
    [FLAT_DIR, 'flat', (_h: string, p: string) => usedFlat.has(p)],
  ] as const) {
    const top = path.join(root, kindDir);
    const buckets = await fsp.readdir(top).catch(() => [] as string[]);
    for (const b of buckets) {
      if (!/^[a-f0-9]{2}$/.test(b)) continue;
      const names = await fsp.readdir(path.join(top, b)).catch(() => [] as string[]);
      for (const n of names) {
        const p = path.join(top, b, n);
        if (HEX64.test(n) && n.startsWith(b)) await consider(kind, p, used(n, p));
        else {
          const pid = tmpOwner(n);
          if (pid !== null && pid !== process.pid && !pidAlive(pid)) await consider('temporary', p, false);
        }
      }
    }
  }
  const dirty = path.join(root, DIRTY_CHAINS_DIR);
  for (const n of await fsp.readdir(dirty).catch(() => [] as string[])) {
    if (!HEX64.test(n)) continue;
    const chainExists = await fsp.lstat(path.join(root, CHAINS_DIR, n.slice(0, 2), n)).then(
      () => true,
      () => false,
    );
    if (!chainExists || !usedChains.has(n)) await consider('dirty-chain-marker', path.join(dirty, n), false);
  }

  // access profiles: with the layers that go now, or unreferenced (and old)
  const removedLayers = new Set(candidates.filter((c) => c.kind === 'layer').map((c) => path.basename(c.path)));
  const profileOptions = { imageStacks, now, graceMs: o.graceMs };
  const profiles = await planProfiles(root, { ...profileOptions, removedLayers });
  report.left_alone = profiles.leftAlone;
  report.kept_recent.push(...profiles.young.map((v) => profileItem(v)));

  // the podman store, planned first (read-only): its images whose layers go now go with them
  const hasStore = (await fsp.lstat(path.join(root, STORE_DIR)).catch(() => null))?.isDirectory() === true;
  const storePlan = hasStore ? await collectPodmanStore(root, { host: o.publisher.host, graceMs: o.graceMs, now, dryRun: true, log: o.log }) : null;
  const storeWork = storePlan !== null && storePlan.removed_images.length + storePlan.removed_layers.length > 0;

  // 3. remove (inside a publishing transaction when hooks are configured)
  if (o.dryRun || (candidates.length === 0 && profiles.go.length === 0 && !storeWork)) {
    report.removed = [...candidates, ...profiles.go.map((v) => profileItem(v))];
    report.podman = storePlan;
    return report;
  }
  await o.publisher.session(async () => {
    for (const c of candidates) {
      try {
        // a layer's root may be 0555 (as podman's own unpack leaves it, see podman/layers.ts): writable again to empty it
        if (c.kind === 'layer') await fsp.chmod(path.join(c.path, LAYER_ROOTFS), 0o755).catch(() => undefined);
        await removeTree(c.path);
        report.removed.push(c);
        o.log.info({ kind: c.kind, path: c.path, age: c.age }, 'removed');
      } catch (e) {
        report.errors.push({ path: c.path, message: (e as Error).message });
      }
    }
    // judged again now that layers are gone (one that did not go keeps its profiles), each removed if still the file judged
    for (const v of (await planProfiles(root, { ...profileOptions, removedLayers: new Set() })).go) {
      try {
        if (!(await removeProfile(v))) continue;
        report.removed.push(profileItem(v));
        o.log.info({ kind: 'profile', path: v.path, why: v.why }, 'removed');
      } catch (e) {
        report.errors.push({ path: v.path, message: (e as Error).message });
      }
    }
    // planned again now that layers are gone (its images on them go at once); writes nothing when nothing goes
    if (hasStore) {
      report.podman = await collectPodmanStore(root, { host: o.publisher.host, graceMs: o.graceMs, now, log: o.log, lockTimeoutMs: o.lockTimeoutMs });
      for (const e of report.podman.errors) report.errors.push(e);
    }
  });
  return report;
}

/**
 * DUCC's merged trees: `.chains/<xx>/<chain id>` (layers 0..n applied, whiteouts
 * applied) and `.flat/<xx>/<config hex>` (the whole image, plus Apptainer's
 * `.singularity.d` files). Built from the unpacked layers by copying and
 * applying them in order with overlay semantics (0/0 character devices and
 * `trusted.overlay.opaque` — and, for layers written by DUCC, `.wh.*` files),
 * each into a temporary name renamed into place. Device nodes, owners,
 * xattrs and times go through the host seam.
 */
import fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import {
  CHAIN_MARKER,
  type ChainMarker,
  chainMarker,
  CHAINS_DIR,
  chainDir,
  DIRTY_CHAINS_DIR,
  dirtyChainMarker,
  duccChainIds,
  FLAT_DIR,
  flatDir,
  layerMarker,
  type LayerRecord,
  layerRootfs,
  parseChainMarker,
  parseLayerMarker,
} from '../core/cvmfs/layout.js';
import { isCvmfsMagicXattr } from '../core/cvmfs/xattrs.js';
import { removeTree } from '../core/fs/fsutil.js';
import type { Host } from '../core/host/host.js';
import { S_IFBLK, S_IFCHR, S_IFIFO } from '../core/host/sys.js';
import { classifyWhiteout, OVERLAY_OPAQUE_XATTR } from '../core/fs/whiteout.js';
import type { ImageConfig } from './image/types.js';
import { addSingularityFiles } from './singularity.js';
import { CATALOG_MARKER, type RepoTree, tmpName } from './repo.js';

const enc = 'latin1' as const;
/** Byte-string path → what node:fs takes (bytes intact). */
const fp = (b: string): string | Buffer => (/^[\x00-\x7f]*$/.test(b) ? b : Buffer.from(b, enc));
/** Byte-string path → what the host's calls take (bytes intact). */
const sp = fp;

function lstatOrNull(p: string): fs.BigIntStats | null {
  try {
    return fs.lstatSync(fp(p), { bigint: true });
  } catch {
    return null;
  }
}

const lstatBig = (p: string): fs.BigIntStats => fs.lstatSync(fp(p), { bigint: true });

function rmrf(p: string): void {
  fs.rmSync(fp(p), { recursive: true, force: true });
}

/**
 * The source's xattrs onto `dst` — unless the source has a record, which is
 * then the whole truth (applied by applyTree): a published tree read back
 * through a client lists the client's made-up attributes and may have lost
 * its own. Overlay's and CVMFS's own names are never copied.
 */
function copyXattrs(state: ApplyState, src: string, dst: string): void {
  if (state.recorded) return;
  let names: string[];
  try {
    names = state.host.llistxattr(sp(src));
  } catch {
    return;
  }
  for (const n of names) {
    if (n.startsWith('trusted.overlay.') || isCvmfsMagicXattr(n)) continue;
    const v = state.host.lgetxattr(sp(src), n);
    if (v) {
      state.host.lsetxattr(sp(dst), n, v);
      state.xattrPaths.add(dst);
    }
  }
}

/** Owner, mode (after chown, which clears set-id bits), xattrs (after chown, which clears capabilities), times (ns). */
function copyMeta(state: ApplyState, src: string, st: fs.BigIntStats, dst: string): void {
  const host = state.host;
  const d = fp(dst);
  host.lchown(sp(dst), Number(st.uid), Number(st.gid));
  if (!st.isSymbolicLink()) fs.chmodSync(d, Number(st.mode & 0o7777n));
  copyXattrs(state, src, dst);
  const ns = 1_000_000_000n;
  host.lutimesNs(sp(dst), Number(st.atimeNs / ns), Number(st.atimeNs % ns), Number(st.mtimeNs / ns), Number(st.mtimeNs % ns));
}

function isOpaque(host: Host, dir: string): boolean {
  try {
    return host.lgetxattr(sp(dir), OVERLAY_OPAQUE_XATTR)?.toString() === 'y';
  } catch {
    return false;
  }
}

interface ApplyState {
  host: Host;
  links: Map<string, string>;
  entries: number;
  sinceYield: number;
  /** source paths that are not image content (a record's catalog markers) */
  hidden: Set<string>;
  /** the source has a record: its xattrs come from it, never from listing the source */
  recorded: boolean;
  /** destination paths given an xattr (what a chain's marker records, if they are still there at the end) */
  xattrPaths: Set<string>;
}

/** glibc major()/minor() of a dev_t. */
function devParts(rdev: bigint): [number, number] {
  const d = rdev;
  const major = Number(((d >> 8n) & 0xfffn) | ((d >> 32n) & ~0xfffn));
  const minor = Number((d & 0xffn) | ((d >> 12n) & ~0xffn));
  return [major, minor];
}

function createNode(src: string, st: fs.BigIntStats, dst: string, state: ApplyState): void {
  const key = `${st.dev}:${st.ino}`;
  if (!st.isDirectory() && st.nlink > 1n) {
    const first = state.links.get(key);
    if (first !== undefined) {
      fs.linkSync(fp(first), fp(dst));
      return;
    }
    state.links.set(key, dst);
  }
  if (st.isFile()) fs.copyFileSync(fp(src), fp(dst));
  else if (st.isSymbolicLink()) fs.symlinkSync(fs.readlinkSync(fp(src), { encoding: 'buffer' }), fp(dst));
  else if (st.isCharacterDevice()) state.host.mknod(sp(dst), S_IFCHR | Number(st.mode & 0o7777n), ...devParts(st.rdev));
  else if (st.isBlockDevice()) state.host.mknod(sp(dst), S_IFBLK | Number(st.mode & 0o7777n), ...devParts(st.rdev));
  else if (st.isFIFO()) state.host.mknod(sp(dst), S_IFIFO | Number(st.mode & 0o7777n));
  else return; // sockets are not image content
  copyMeta(state, src, st, dst);
}

async function applyDir(srcDir: string, dstDir: string, state: ApplyState): Promise<void> {
  const names = fs.readdirSync(fp(srcDir), { encoding: enc });
  // DUCC-written layers keep OCI whiteouts as files: honour them first
  if (names.includes('.wh..wh..opq')) for (const n of fs.readdirSync(fp(dstDir), { encoding: enc })) rmrf(`${dstDir}/${n}`);
  for (const n of names) {
    const w = classifyWhiteout(n);
    if (w?.kind === 'whiteout') rmrf(`${dstDir}/${w.target}`);
  }
  for (const name of names) {
    if (classifyWhiteout(name)) continue;
    const s = `${srcDir}/${name}`;
    if (state.hidden.has(s)) continue;
    const d = `${dstDir}/${name}`;
    const st = lstatBig(s);
    let dst = lstatOrNull(d);
    if (st.isCharacterDevice() && st.rdev === 0n) {
      if (dst) rmrf(d);
      continue;
    }
    if (st.isDirectory()) {
      if (dst && !dst.isDirectory()) {
        rmrf(d);
        dst = null;
      }
      if (!dst) fs.mkdirSync(fp(d), { mode: 0o700 });
      else if (isOpaque(state.host, s)) for (const n of fs.readdirSync(fp(d), { encoding: enc })) rmrf(`${d}/${n}`);
      await applyDir(s, d, state);
      copyMeta(state, s, st, d);
    } else {
      if (dst) rmrf(d);
      createNode(s, st, d, state);
    }
    state.entries++;
    if (++state.sinceYield >= 2000) {
      state.sinceYield = 0;
      await new Promise<void>((r) => setImmediate(r));
    }
  }
}

/**
 * Apply the tree `src` (a layer in overlay or OCI form, or a merged tree)
 * onto `dst` with overlay semantics. A layer kept in record form (marker
 * version 2) has its deletions and opaque dirs applied first, its hidden
 * catalog markers skipped and its recorded xattrs set last (a publish may
 * have dropped them from `src`).
 */
async function applyTree(src: string, dst: string, state: Omit<ApplyState, 'hidden' | 'recorded' | 'links'>, record?: LayerRecord): Promise<void> {
  const st: ApplyState = { ...state, links: new Map(), hidden: new Set((record?.hidden ?? []).map((h) => `${src}/${bs(h)}`)), recorded: record !== undefined };
  const host = st.host;
  if (isOpaque(host, src)) for (const n of fs.readdirSync(fp(dst), { encoding: enc })) rmrf(`${dst}/${n}`);
  if (record) {
    for (const d of record.opaque) {
      const p = d === '' ? dst : `${dst}/${bs(d)}`;
      if (lstatOrNull(p)?.isDirectory()) for (const n of fs.readdirSync(fp(p), { encoding: enc })) rmrf(`${p}/${n}`);
    }
    for (const w of record.deleted) rmrf(`${dst}/${bs(w)}`);
  }
  await applyDir(src, dst, st);
  copyMeta(st, src, lstatBig(src), dst);
  for (const x of record?.xattrs ?? []) {
    const p = x.path === '' ? dst : `${dst}/${bs(x.path)}`;
    if (lstatOrNull(p)) {
      host.lsetxattr(sp(p), x.name, Buffer.from(x.value, 'base64'));
      st.xattrPaths.add(p);
    }
  }
  state.entries = st.entries;
  state.sinceYield = st.sinceYield;
}

/** UTF-8 text (a record's path) → byte string. */
const bs = (t: string): string => Buffer.from(t, 'utf8').toString(enc);

/** The record of a layer in record form, or undefined. */
async function layerRecord(root: string, hex: string): Promise<LayerRecord | undefined> {
  try {
    return parseLayerMarker(await fsp.readFile(layerMarker(root, hex), 'utf8'), hex)?.record;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}

interface MergeResult {
  chains: string[];
  flat: string | null;
}

/**
 * Which chains to build: every prefix of the image (DUCC's `.chains`), only the
 * image's own (what its containers start from), or — the converter's default —
 * the image's own when it has AUTO_CHAIN_LAYERS layers or more (on a cold CVMFS
 * client each layer of a stack costs a catalog load, ~10 ms: bench/layer-count.ts).
 */
export type ChainsMode = 'all' | 'top' | 'auto';
export const AUTO_CHAIN_LAYERS = 16;

/** What `mode` builds for an image of `layers` layers. */
export const chainsFor = (mode: ChainsMode | undefined, layers: number): 'all' | 'top' | null =>
  mode === 'auto' ? (layers >= AUTO_CHAIN_LAYERS ? 'top' : null) : (mode ?? null);

/** A chain we built (its marker valid, not dirty): its directory and record, else null. */
async function ourChain(root: string, id: string): Promise<{ dir: string; marker: ChainMarker } | null> {
  if (lstatOrNull(dirtyChainMarker(root, id))) return null;
  try {
    const marker = parseChainMarker(await fsp.readFile(chainMarker(root, id), 'utf8'), id);
    return marker ? { dir: chainDir(root, id), marker } : null;
  } catch {
    return null;
  }
}

/** The record a chain keeps: the xattrs its tree has now (what a publish may drop), its own two files hidden. */
function chainRecord(tmp: string, xattrPaths: ReadonlySet<string>, host: Host, log: Logger): LayerRecord {
  const xattrs: LayerRecord['xattrs'] = [];
  for (const p of [...xattrPaths].sort()) {
    if (!lstatOrNull(p)) continue;
    const rel = p === tmp ? '' : p.slice(tmp.length + 1);
    const text = Buffer.from(rel, enc).toString('utf8');
    if (bs(text) !== rel) {
      log.warn({ path: text }, 'chain: an entry with xattrs has a name that is not UTF-8; its xattrs are not recorded');
      continue;
    }
    for (const name of host.llistxattr(sp(p))) {
      if (!/^(user|security|system)\.[\x21-\x7e]{1,250}$/.test(name) || isCvmfsMagicXattr(name)) continue;
      const v = host.lgetxattr(sp(p), name);
      if (v && v.length <= 65_536) xattrs.push({ path: text, name, value: v.toString('base64') });
    }
  }
  return { deleted: [], opaque: [], xattrs, hidden: [CATALOG_MARKER, CHAIN_MARKER] };
}

/**
 * Build the chain `ids[n-1]` of the layers `hexes[0..n-1]`: from `base` (one of
 * our chains of a shorter prefix) plus the layers above it, else from the
 * layers; its marker records its xattrs. Dirty while it is being built.
 */
async function buildChain(
  tree: RepoTree,
  hexes: readonly string[],
  id: string,
  base: { dir: string; marker: ChainMarker } | null,
  o: { host: Host; log: Logger },
): Promise<string> {
  const root = tree.root;
  const final = chainDir(root, id);
  const dirty = dirtyChainMarker(root, id);
  await tree.ensureCatalog(tree.bucket(CHAINS_DIR, id));
  await fsp.mkdir(path.join(root, DIRTY_CHAINS_DIR), { recursive: true });
  await fsp.mkdir(dirty, { recursive: true });
  const tmp = path.join(tree.bucket(CHAINS_DIR, id), tmpName(id));
  await fsp.mkdir(tmp, { mode: 0o755 });
  try {
    const state = { host: o.host, entries: 0, sinceYield: 0, xattrPaths: new Set<string>() };
    if (base) await applyTree(base.dir, tmp, state, base.marker.record);
    for (const h of hexes.slice(base?.marker.layers.length ?? 0)) await applyTree(layerRootfs(root, h), tmp, state, await layerRecord(root, h));
    const marker: ChainMarker = {
      schema: 'cvmfs-thin/chain',
      chain: id,
      layers: [...hexes],
      created: new Date().toISOString(),
      record: chainRecord(tmp, state.xattrPaths, o.host, o.log),
    };
    await fsp.writeFile(path.join(tmp, CHAIN_MARKER), `${JSON.stringify(marker)}\n`, { mode: 0o644 });
    await fsp.writeFile(path.join(tmp, CATALOG_MARKER), '', { mode: 0o644 });
    if (lstatOrNull(final)) await removeTree(final); // a dirty leftover
    await tree.commitDir(tmp, final);
  } catch (e) {
    await removeTree(tmp);
    throw e;
  }
  await removeTree(dirty);
  o.log.info({ chain: id, layers: hexes.length, from: base ? base.marker.layers.length : 0 }, 'chain built');
  return final;
}

/**
 * Build the chains of `hexes` (bottom first) that are missing — every prefix
 * (`all`) or only the image's own (`top`, from the longest prefix chain of
 * ours that exists) — and, with `flat`, the flat tree of the image. Returns
 * their paths.
 */
export async function buildMerged(
  tree: RepoTree,
  hexes: readonly string[],
  opts: { chains: ChainsMode | null; flat: { configHex: string; config: ImageConfig } | null; log: Logger; host: Host },
): Promise<MergeResult> {
  const root = tree.root;
  const ids = duccChainIds(hexes);
  const result: MergeResult = { chains: [], flat: null };
  /** the newest chain of ours over a prefix of the image (what the next chain or the flat tree starts from) */
  let base: { dir: string; marker: ChainMarker } | null = null;
  if (opts.chains) {
    await tree.ensureCatalog(path.join(root, CHAINS_DIR));
    const top = ids.length - 1;
    if (opts.chains === 'top') {
      base = await ourChain(root, ids[top]!);
      if (!base && lstatOrNull(chainDir(root, ids[top]!)) && !lstatOrNull(dirtyChainMarker(root, ids[top]!))) result.chains.push(chainDir(root, ids[top]!));
      else if (!base) {
        for (let i = top - 1; i >= 0 && !base; i--) base = await ourChain(root, ids[i]!);
        const dir = await buildChain(tree, hexes, ids[top]!, base, opts);
        base = await ourChain(root, ids[top]!);
        result.chains.push(dir);
      } else result.chains.push(base.dir);
    } else {
      for (let i = 0; i <= top; i++) {
        const id = ids[i]!;
        const final = chainDir(root, id);
        const dirty = lstatOrNull(dirtyChainMarker(root, id));
        if (!(lstatOrNull(final) && !dirty)) await buildChain(tree, hexes.slice(0, i + 1), id, base, opts);
        // a chain that is not ours (DUCC's, or an older version's) stays, but the next one is built from the layers
        base = await ourChain(root, id);
        result.chains.push(final);
      }
    }
  }
  if (opts.flat) {
    const final = flatDir(root, opts.flat.configHex);
    if (!lstatOrNull(final)) {
      await tree.ensureCatalog(path.join(root, FLAT_DIR));
      await tree.ensureCatalog(tree.bucket(FLAT_DIR, opts.flat.configHex));
      const tmp = path.join(tree.bucket(FLAT_DIR, opts.flat.configHex), tmpName(opts.flat.configHex));
      await fsp.mkdir(tmp, { mode: 0o755 });
      try {
        const state = { host: opts.host, entries: 0, sinceYield: 0, xattrPaths: new Set<string>() };
        const whole = base?.marker.layers.length === hexes.length ? base : null;
        if (whole) await applyTree(whole.dir, tmp, state, whole.marker.record);
        else for (const h of hexes) await applyTree(layerRootfs(root, h), tmp, state, await layerRecord(root, h));
        await fsp.writeFile(path.join(tmp, CATALOG_MARKER), '', { mode: 0o644 });
        await addSingularityFiles(tmp, opts.flat.config);
        await tree.commitDir(tmp, final);
      } catch (e) {
        await removeTree(tmp);
        throw e;
      }
      opts.log.info({ flat: final }, 'flat image built');
    }
    result.flat = final;
  }
  return result;
}

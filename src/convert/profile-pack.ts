/**
 * A profile's pack (thin-image/SPEC.md §8): the files an image's containers
 * read first, with their directories, exactly as a container sees them
 * (content, owner, mode, ns times, xattrs), in one uncompressed tar beside
 * the profile (`.profiles/<xx>/<stack id>.pack`). A CVMFS client fetches one
 * chunked object instead of hundreds of files; a node unpacks it into a
 * local layer above the image's (core/stack/hot.ts).
 *
 * Each path is looked up in the stack as overlayfs would — top layer first,
 * stopping at a deletion or an opaque directory, whatever the layer's form
 * (record, overlay whiteouts, DUCC's `.wh.*` files) — so a file a higher
 * layer replaced or deleted is never packed from a lower one. xattrs come
 * from a layer's record when it has one (a publish may have dropped them),
 * else from the file (never CVMFS's made-up ones). Files are staged in a
 * local temporary directory and packed with the layer packer.
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { Logger } from 'pino';
import { layerMarker, layerRootfs, type LayerRecord, parseLayerMarker } from '../core/cvmfs/layout.js';
import { isCvmfsMagicXattr } from '../core/cvmfs/xattrs.js';
import { type ErofsEntry, writeErofs } from '../core/fs/erofs.js';
import { removeTree } from '../core/fs/fsutil.js';
import { InvalidArgumentError } from '../core/errors/errors.js';
import { OPAQUE_MARKER, OVERLAY_OPAQUE_XATTR, WHITEOUT_PREFIX } from '../core/fs/whiteout.js';
import type { Host } from '../core/host/host.js';
import { packDirectory } from '../core/tar/index.js';
import { type AccessProfile, MAX_PACK_BYTES, type ProfileImage, type ProfilePack } from '../core/thin/profile.js';

type Form = { kind: 'record'; record: LayerRecord; xattrs: Map<string, [string, string][]> } | { kind: 'overlay' } | { kind: 'ducc' };
interface Layer {
  hex: string;
  root: string;
  form: Form;
}
interface Found {
  layer: Layer;
  abs: string;
  st: fs.BigIntStats;
}

const lstat = (p: string): fs.BigIntStats | null => {
  try {
    return fs.lstatSync(p, { bigint: true });
  } catch {
    return null;
  }
};
const isWhiteoutDev = (st: fs.BigIntStats | null) => st !== null && st.isCharacterDevice() && st.rdev === 0n;
/** '' (the root), then each proper parent of `p`, top-down: a, a/b, … */
const parents = (p: string): string[] => {
  const parts = p.split('/');
  return ['', ...parts.slice(0, -1).map((_, i) => parts.slice(0, i + 1).join('/'))];
};

async function layerOf(repo: string, hex: string): Promise<Layer> {
  const root = layerRootfs(repo, hex);
  const text = await fsp.readFile(layerMarker(repo, hex), 'utf8').catch(() => null);
  const m = text === null ? null : parseLayerMarker(text, hex);
  if (m?.record) {
    const xattrs = new Map<string, [string, string][]>();
    for (const x of m.record.xattrs) xattrs.set(x.path, [...(xattrs.get(x.path) ?? []), [x.name, x.value]]);
    return { hex, root, form: { kind: 'record', record: m.record, xattrs } };
  }
  return { hex, root, form: m ? { kind: 'overlay' } : { kind: 'ducc' } };
}

/** What overlayfs shows at `p` (a path in the container's root, '' = the root): the topmost layer's entry, or null (deleted, hidden, absent). */
function lookup(layersTopFirst: readonly Layer[], p: string, host: Host): Found | null {
  for (const l of layersTopFirst) {
    const abs = p === '' ? l.root : path.join(l.root, p);
    const st = lstat(abs);
    const f = l.form;
    if (st && !isWhiteoutDev(st) && !(f.kind === 'record' && f.record.hidden.includes(p))) return { layer: l, abs, st };
    if (isWhiteoutDev(st)) return null;
    const name = path.posix.basename(p);
    if (f.kind === 'record' && (f.record.deleted.includes(p) || parents(p).some((d) => d !== '' && f.record.deleted.includes(d)))) return null;
    if (f.kind === 'ducc' && p !== '' && lstat(path.join(path.dirname(abs), WHITEOUT_PREFIX + name))) return null;
    for (const d of p === '' ? [] : parents(p)) {
      const dabs = d === '' ? l.root : path.join(l.root, d);
      const dst = lstat(dabs);
      if (d !== '' && (isWhiteoutDev(dst) || (dst && !dst.isDirectory()))) return null;
      if (f.kind === 'ducc' && d !== '' && lstat(path.join(path.dirname(dabs), WHITEOUT_PREFIX + path.posix.basename(d)))) return null;
      if (!dst) break; // nothing of this layer below here
      const opaque =
        f.kind === 'record'
          ? f.record.opaque.includes(d)
          : f.kind === 'overlay'
            ? host.lgetxattr(dabs, OVERLAY_OPAQUE_XATTR)?.toString() === 'y'
            : lstat(path.join(dabs, OPAQUE_MARKER)) !== null;
      if (opaque) return null;
    }
  }
  return null;
}

/** An entry's xattrs as a container sees them (name → base64). */
function xattrsOf(found: Found, p: string, host: Host): [string, string][] {
  const f = found.layer.form;
  if (f.kind === 'record') return f.xattrs.get(p) ?? [];
  const out: [string, string][] = [];
  for (const n of host.llistxattr(found.abs)) {
    if (!/^(user|security|system)\./.test(n) || isCvmfsMagicXattr(n)) continue;
    const v = host.lgetxattr(found.abs, n);
    if (v) out.push([n, v.toString('base64')]);
  }
  return out;
}

function stageMeta(host: Host, dst: string, st: fs.BigIntStats, xattrs: [string, string][]): void {
  host.lchown(dst, Number(st.uid), Number(st.gid));
  fs.chmodSync(dst, Number(st.mode & 0o7777n));
  for (const [n, v] of xattrs) host.lsetxattr(dst, n, Buffer.from(v, 'base64'));
  const ns = 1_000_000_000n;
  host.lutimesNs(dst, Number(st.atimeNs / ns), Number(st.atimeNs % ns), Number(st.mtimeNs / ns), Number(st.mtimeNs % ns));
}

interface PackResult {
  pack: ProfilePack;
  /** The same files as an EROFS image (when asked for). */
  image?: ProfileImage | undefined;
  /** Profile files left out: not a regular file of that size where the stack shows it, or over the size limit. */
  skipped: number;
}

/** An entry of the image: the metadata the stack shows (as staged for the tar), the content from the stage. */
function erofsEntry(p: string, found: Found, xattrs: [string, string][], source?: string): ErofsEntry {
  const st = found.st;
  return {
    path: p,
    type: source ? 'file' : 'dir',
    mode: Number(st.mode & 0o7777n),
    uid: Number(st.uid),
    gid: Number(st.gid),
    mtimeNs: st.mtimeNs,
    xattrs: xattrs.map(([n, v]) => [n, Buffer.from(v, 'base64')]),
    source,
    size: source ? Number(st.size) : undefined,
  };
}

/**
 * Write the pack of `profile` to `out` (a new file) from the repository tree
 * at `repo`, and the same files as an EROFS image to `o.imageOut` (its
 * metadata and data files) when given;
 * null when none of its files is there. At most `maxBytes` of file content,
 * in access order.
 */
export async function writeProfilePack(
  repo: string,
  profile: AccessProfile,
  out: string,
  o: { host: Host; log: Logger; maxBytes?: number | undefined; imageOut?: { meta: string; data: string } | undefined },
): Promise<PackResult | null> {
  const maxBytes = Math.min(o.maxBytes ?? 256 << 20, MAX_PACK_BYTES - (64 << 20));
  const layers = await Promise.all([...profile.layers].reverse().map((h) => layerOf(repo, h)));
  const stage = await fsp.mkdtemp(path.join(os.tmpdir(), 'cvmfs-thin-pack-'));
  try {
    const dirs = new Map<string, Found | null>();
    const dirOf = (d: string) => {
      if (!dirs.has(d)) dirs.set(d, lookup(layers, d, o.host));
      return dirs.get(d)!;
    };
    let bytes = 0;
    let files = 0;
    let skipped = 0;
    const entries: ErofsEntry[] = [];
    const order = [...profile.files].sort((a, b) => (a.at ?? Infinity) - (b.at ?? Infinity));
    for (const e of order) {
      const found = bytes + e.size <= maxBytes ? lookup(layers, e.path, o.host) : null;
      const ds = parents(e.path).map((d) => [d, dirOf(d)] as const);
      if (!found || !found.st.isFile() || Number(found.st.size) !== e.size || ds.some(([, d]) => !d?.st.isDirectory())) {
        skipped++;
        continue;
      }
      for (const [d] of ds) if (d !== '') await fsp.mkdir(path.join(stage, d), { recursive: true, mode: 0o700 });
      const dst = path.join(stage, e.path);
      if (lstat(dst)) continue; // listed twice
      await fsp.copyFile(found.abs, dst);
      const xattrs = xattrsOf(found, e.path, o.host);
      stageMeta(o.host, dst, found.st, xattrs);
      entries.push(erofsEntry(e.path, found, xattrs, dst));
      bytes += e.size;
      files++;
    }
    if (files === 0) return null;
    // directories last, deepest first (their times are final once their entries are in)
    for (const [d, found] of [...dirs].filter(([d]) => lstat(d === '' ? stage : path.join(stage, d))).sort(([a], [b]) => b.length - a.length)) {
      const xattrs = xattrsOf(found!, d, o.host);
      stageMeta(o.host, d === '' ? stage : path.join(stage, d), found!.st, xattrs);
      entries.push(erofsEntry(d, found!, xattrs));
    }
    const hash = createHash('sha256');
    let size = 0;
    const tar = packDirectory(stage, { includeRoot: true });
    tar.on('data', (c: Buffer) => {
      hash.update(c);
      size += c.length;
    });
    await pipeline(tar, fs.createWriteStream(out, { flags: 'wx', mode: 0o644 }));
    o.log.info({ out, files, bytes: size, skipped }, 'profile pack written');
    const pack = { bytes: size, sha256: hash.digest('hex'), files };
    if (!o.imageOut) return { pack, skipped };
    const uuid = randomBytes(16);
    try {
      const img = await writeErofs(entries, o.imageOut.meta, o.imageOut.data, { uuid, buildTimeNs: BigInt(Date.now()) * 1_000_000n });
      // its blocks can make it larger than the pack: a profile naming a larger one is not valid
      if (img.data.bytes > MAX_PACK_BYTES || img.bytes > MAX_PACK_BYTES) {
        for (const f of [o.imageOut.meta, o.imageOut.data]) await fsp.rm(f, { force: true });
        throw new InvalidArgumentError(`the image's data (${img.data.bytes} bytes) is over ${MAX_PACK_BYTES}`, 'CVMFS_THIN_BAD_EROFS_ENTRY');
      }
      o.log.info({ out: o.imageOut.meta, files: img.files, bytes: img.bytes, dataBytes: img.data.bytes }, 'profile image written');
      return { pack, image: { ...img, uuid: uuid.toString('hex') }, skipped };
    } catch (err) {
      // the pack alone still serves every node
      if (!(err instanceof InvalidArgumentError)) throw err;
      o.log.warn({ err, out: o.imageOut }, 'no EROFS image of the pack');
      return { pack, skipped };
    }
  } finally {
    await removeTree(stage);
  }
}

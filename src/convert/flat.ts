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
  parseLayerMarker,
} from '../core/cvmfs/layout.js';
import { removeTree } from '../core/fs/fsutil.js';
import type { Host } from '../core/host/host.js';
import { S_IFBLK, S_IFCHR, S_IFIFO } from '../core/host/sys.js';
import { classifyWhiteout, OVERLAY_OPAQUE_XATTR } from '../core/fs/whiteout.js';
import type { ImageConfig } from './image/types.js';
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

function copyXattrs(host: Host, src: string, dst: string): void {
  let names: string[];
  try {
    names = host.llistxattr(sp(src));
  } catch {
    return;
  }
  for (const n of names) {
    if (n.startsWith('trusted.overlay.')) continue;
    const v = host.lgetxattr(sp(src), n);
    if (v) host.lsetxattr(sp(dst), n, v);
  }
}

/** Owner, mode (after chown, which clears set-id bits), xattrs (after chown, which clears capabilities), times (ns). */
function copyMeta(host: Host, src: string, st: fs.BigIntStats, dst: string): void {
  const d = fp(dst);
  host.lchown(sp(dst), Number(st.uid), Number(st.gid));
  if (!st.isSymbolicLink()) fs.chmodSync(d, Number(st.mode & 0o7777n));
  copyXattrs(host, src, dst);
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
  copyMeta(state.host, src, st, dst);
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
      copyMeta(state.host, s, st, d);
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
async function applyTree(src: string, dst: string, host: Host, record?: LayerRecord): Promise<number> {
  const state: ApplyState = { host, links: new Map(), entries: 0, sinceYield: 0, hidden: new Set((record?.hidden ?? []).map((h) => `${src}/${bs(h)}`)) };
  if (isOpaque(host, src)) for (const n of fs.readdirSync(fp(dst), { encoding: enc })) rmrf(`${dst}/${n}`);
  if (record) {
    for (const d of record.opaque) {
      const p = d === '' ? dst : `${dst}/${bs(d)}`;
      if (lstatOrNull(p)?.isDirectory()) for (const n of fs.readdirSync(fp(p), { encoding: enc })) rmrf(`${p}/${n}`);
    }
    for (const w of record.deleted) rmrf(`${dst}/${bs(w)}`);
  }
  await applyDir(src, dst, state);
  copyMeta(host, src, lstatBig(src), dst);
  for (const x of record?.xattrs ?? []) {
    const p = x.path === '' ? dst : `${dst}/${bs(x.path)}`;
    if (lstatOrNull(p)) host.lsetxattr(sp(p), x.name, Buffer.from(x.value, 'base64'));
  }
  return state.entries;
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
 * Build the chains of `hexes` (bottom first) that are missing and, with
 * `flatFor`, the flat tree of the image. Returns their paths.
 */
export async function buildMerged(
  tree: RepoTree,
  hexes: readonly string[],
  opts: { chains: boolean; flat: { configHex: string; config: ImageConfig } | null; log: Logger; host: Host },
): Promise<MergeResult> {
  const root = tree.root;
  const host = opts.host;
  const ids = duccChainIds(hexes);
  const result: MergeResult = { chains: [], flat: null };
  let prev: string | null = null;
  if (opts.chains) {
    await tree.ensureCatalog(path.join(root, CHAINS_DIR));
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      const final = chainDir(root, id);
      const dirty = dirtyChainMarker(root, id);
      if (lstatOrNull(final) && !lstatOrNull(dirty)) {
        prev = final;
        result.chains.push(final);
        continue;
      }
      await tree.ensureCatalog(tree.bucket(CHAINS_DIR, id));
      await fsp.mkdir(path.join(root, DIRTY_CHAINS_DIR), { recursive: true });
      await fsp.mkdir(dirty, { recursive: true });
      const tmp = path.join(tree.bucket(CHAINS_DIR, id), tmpName(id));
      await fsp.mkdir(tmp, { mode: 0o755 });
      try {
        if (prev) await applyTree(prev, tmp, host);
        await applyTree(layerRootfs(root, hexes[i]!), tmp, host, await layerRecord(root, hexes[i]!));
        await fsp.writeFile(path.join(tmp, CATALOG_MARKER), '', { mode: 0o644 });
        if (lstatOrNull(final)) await removeTree(final); // a dirty leftover
        await tree.commitDir(tmp, final);
      } catch (e) {
        await removeTree(tmp);
        throw e;
      }
      await removeTree(dirty);
      opts.log.info({ chain: id, layer: hexes[i] }, 'chain built');
      prev = final;
      result.chains.push(final);
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
        if (prev) await applyTree(prev, tmp, host);
        else for (const h of hexes) await applyTree(layerRootfs(root, h), tmp, host, await layerRecord(root, h));
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

function shQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/**
 * Apptainer/Singularity metadata DUCC adds to flat images, so that
 * `apptainer exec /cvmfs/<repo>/<registry>/<repository>:<tag> …` gets the
 * image's environment and runscript.
 */
async function addSingularityFiles(root: string, config: ImageConfig): Promise<void> {
  const c = config.config ?? {};
  const sd = path.join(root, '.singularity.d');
  for (const d of ['actions', 'env', 'libs']) await fsp.mkdir(path.join(sd, d), { recursive: true, mode: 0o755 });
  for (const d of ['dev', 'proc', 'sys', 'tmp', 'var/tmp', 'home', 'root', 'etc']) {
    await fsp.mkdir(path.join(root, d), { recursive: true, mode: 0o755 }).catch(() => undefined);
  }
  for (const f of ['etc/hosts', 'etc/resolv.conf']) {
    const p = path.join(root, f);
    if (!lstatOrNull(p)) await fsp.writeFile(p, '', { mode: 0o644 });
  }
  const sourceEnv = '#!/bin/sh\nfor script in /.singularity.d/env/*.sh; do\n    if [ -f "$script" ]; then\n        . "$script"\n    fi\ndone\n';
  const actions: Record<string, string> = {
    exec: `${sourceEnv}\nexec "$@"\n`,
    run: `${sourceEnv}\nif test -x /.singularity.d/runscript; then\n    exec /.singularity.d/runscript "$@"\nfi\nexec /bin/sh "$@"\n`,
    shell: `${sourceEnv}\nif test -n "$SINGULARITY_SHELL" -a -x "$SINGULARITY_SHELL"; then\n    exec $SINGULARITY_SHELL "$@"\nelif test -x /bin/bash; then\n    exec /bin/bash --norc "$@"\nfi\nexec /bin/sh "$@"\n`,
    start: `${sourceEnv}\nif test -x /.singularity.d/startscript; then\n    exec /.singularity.d/startscript\nfi\n`,
    test: `${sourceEnv}\nif test -x /.singularity.d/test; then\n    exec /.singularity.d/test "$@"\nfi\nexec /bin/sh -c true\n`,
  };
  for (const [n, body] of Object.entries(actions)) await fsp.writeFile(path.join(sd, 'actions', n), body, { mode: 0o755 });
  const env = (Array.isArray(c.Env) ? c.Env : [])
    .filter((e): e is string => typeof e === 'string' && /^[A-Za-z_][A-Za-z0-9_]*=/.test(e))
    .map((e) => {
      const i = e.indexOf('=');
      return `export ${e.slice(0, i)}=${shQuote(e.slice(i + 1))}`;
    });
  await fsp.writeFile(path.join(sd, 'env', '01-base.sh'), '#!/bin/sh\n', { mode: 0o755 });
  await fsp.writeFile(path.join(sd, 'env', '10-docker2singularity.sh'), `#!/bin/sh\n${env.join('\n')}\n`, { mode: 0o755 });
  await fsp.writeFile(path.join(sd, 'env', '90-environment.sh'), '#!/bin/sh\n# Custom environment shell code should follow\n', { mode: 0o755 });
  await fsp.writeFile(
    path.join(sd, 'env', '99-base.sh'),
    '#!/bin/sh\nif [ -z "$LD_LIBRARY_PATH" ]; then\n    LD_LIBRARY_PATH="/.singularity.d/libs"\nelse\n    LD_LIBRARY_PATH="$LD_LIBRARY_PATH:/.singularity.d/libs"\nfi\nPS1="Singularity> "\nexport LD_LIBRARY_PATH PS1\n',
    { mode: 0o755 },
  );
  const argv = [...(Array.isArray(c['Entrypoint']) ? (c['Entrypoint'] as string[]) : []), ...(Array.isArray(c['Cmd']) ? (c['Cmd'] as string[]) : [])];
  const cwd = typeof c['WorkingDir'] === 'string' && c['WorkingDir'] ? `cd ${shQuote(c['WorkingDir'] as string)} 2>/dev/null || true\n` : '';
  const runscript = argv.length
    ? `#!/bin/sh\n${cwd}if [ $# -gt 0 ]; then\n    exec ${(Array.isArray(c['Entrypoint']) ? (c['Entrypoint'] as string[]) : []).map(shQuote).join(' ')} "$@"\nfi\nexec ${argv.map(shQuote).join(' ')}\n`
    : '#!/bin/sh\necho "There is no runscript defined for this container"\n';
  await fsp.writeFile(path.join(sd, 'runscript'), runscript, { mode: 0o755 });
  await fsp.writeFile(path.join(sd, 'startscript'), '#!/bin/sh\n', { mode: 0o755 });
  const labels = c.Labels && typeof c.Labels === 'object' ? c.Labels : {};
  await fsp.writeFile(path.join(sd, 'labels.json'), `${JSON.stringify(labels, null, 2)}\n`, { mode: 0o644 });
  const links: [string, string][] = [
    ['singularity', '.singularity.d/runscript'],
    ['.run', '.singularity.d/actions/run'],
    ['.exec', '.singularity.d/actions/exec'],
    ['.shell', '.singularity.d/actions/shell'],
    ['.test', '.singularity.d/actions/test'],
    ['environment', '.singularity.d/env/90-environment.sh'],
  ];
  for (const [n, t] of links) if (!lstatOrNull(path.join(root, n))) await fsp.symlink(t, path.join(root, n));
}

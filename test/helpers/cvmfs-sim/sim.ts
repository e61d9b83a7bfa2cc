/**
 * A CernVM-FS Stratum-0 publish simulator for CI (no CVMFS code: the rules are
 * those observed on a real `cvmfs_server`, ../../../../shared/notes/cvmfs-real.md,
 * and described in README.md beside this file).
 *
 * State directory S:
 *   S/config.json   owner, --include-xattrs, --catalog-limit, --mtime-ns
 *   S/published/    the repository's published content (what a client sees)
 *   S/repo/         /cvmfs/<repo>: a read-only bind of published/ outside a
 *                   transaction, a real overlayfs union during one
 *   S/scratch/upper, S/work   the union's upper and work dirs
 *   S/state.json    present while a transaction (or an ingest) is open
 *
 * A publish or an ingest builds the next revision in S/published.next (a
 * hard-linked copy: files are only ever replaced, never changed in place),
 * checks the catalog limits there and only then swaps it in, so a refused
 * publish leaves the published content untouched.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { catalogsOverLimit, CATALOG_MARKER, DEFAULT_CATALOG_LIMIT } from './catalogs.js';
import {
  applyMeta,
  bindReadOnly,
  copyEntry,
  exists,
  hasXattr,
  isMounted,
  linkCopy,
  lstatOrNull,
  metaOf,
  mountUnion,
  publishableXattrs,
  remount,
  renewDirectory,
  rmTree,
  SimError,
  typeName,
  unmountAll,
} from './fsops.js';
import { llistxattr } from '../../../src/core/host/sys.js';

export { SimError } from './fsops.js';
import { implicitDirs, NO_ROOT_ENTRY, recordNoOwner, refuseWritesBelowNoOwner } from './no-owner.js';
export { catalogEntries, CATALOG_MARKER, DEFAULT_CATALOG_LIMIT } from './catalogs.js';

export interface SimConfig {
  owner: { uid: number; gid: number };
  /** CVMFS_INCLUDE_XATTRS=true */
  includeXattrs: boolean;
  /** Entries allowed in one catalog (CVMFS: 200 000). */
  catalogLimit: number;
  /** CVMFS_ENABLE_MTIME_NS=true (default off: published mtimes are whole seconds). */
  mtimeNs: boolean;
}

export interface SimPaths {
  root: string;
  config: string;
  state: string;
  published: string;
  next: string;
  repo: string;
  scratch: string;
  upper: string;
  work: string;
  ingestTmp: string;
  /** directories an `ingest -k` created without a valid owner (see noOwner.ts) */
  noOwner: string;
}

export function simPaths(S: string): SimPaths {
  const root = path.resolve(S);
  return {
    root,
    config: path.join(root, 'config.json'),
    state: path.join(root, 'state.json'),
    published: path.join(root, 'published'),
    next: path.join(root, 'published.next'),
    repo: path.join(root, 'repo'),
    scratch: path.join(root, 'scratch'),
    upper: path.join(root, 'scratch', 'upper'),
    work: path.join(root, 'work'),
    ingestTmp: path.join(root, 'ingest.tmp'),
    noOwner: path.join(root, 'no-owner.json'),
  };
}

/** Warnings (CVMFS prints them on stderr and goes on). */
export type Warn = (msg: string) => void;
const quiet: Warn = () => {};

export function readConfig(S: string): SimConfig {
  const p = simPaths(S);
  try {
    return JSON.parse(fs.readFileSync(p.config, 'utf8')) as SimConfig;
  } catch {
    throw new SimError(`${p.root} is not a simulated repository (no readable config.json): run "init" first`);
  }
}

export interface InitOptions {
  owner?: { uid: number; gid: number };
  includeXattrs?: boolean;
  catalogLimit?: number;
  mtimeNs?: boolean;
}

/** `cvmfs_server mkfs`: an empty repository, mounted read-only at S/repo. */
export function init(S: string, o: InitOptions = {}): SimConfig {
  const p = simPaths(S);
  if (exists(p.config)) throw new SimError(`${p.root} is already a simulated repository`);
  const cfg: SimConfig = {
    owner: o.owner ?? { uid: 0, gid: 0 },
    includeXattrs: o.includeXattrs ?? false,
    catalogLimit: o.catalogLimit ?? DEFAULT_CATALOG_LIMIT,
    mtimeNs: o.mtimeNs ?? false,
  };
  if (!Number.isInteger(cfg.catalogLimit) || cfg.catalogLimit < 1) throw new SimError(`catalog limit ${cfg.catalogLimit} is not a positive integer`);
  fs.mkdirSync(p.root, { recursive: true });
  try {
    for (const d of [p.published, p.repo, p.scratch, p.work]) fs.mkdirSync(d, { mode: 0o755 });
    fs.chmodSync(p.published, 0o755);
    fs.chownSync(p.published, cfg.owner.uid, cfg.owner.gid);
    bindReadOnly(p.published, p.repo);
    fs.writeFileSync(p.config, `${JSON.stringify(cfg, null, 2)}\n`);
  } catch (e) {
    unmountAll(p.repo, true);
    throw e;
  }
  return cfg;
}

interface OpenState {
  kind: 'transaction' | 'ingest';
  pid: number;
}

function openState(p: SimPaths, kind: OpenState['kind']): void {
  try {
    fs.writeFileSync(p.state, JSON.stringify({ kind, pid: process.pid } satisfies OpenState), { flag: 'wx' });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    const cur = readState(p);
    throw new SimError(`${p.root}: a ${cur?.kind ?? 'transaction'} is already open (pid ${cur?.pid ?? '?'}); publish or abort it first`);
  }
}

function readState(p: SimPaths): OpenState | null {
  try {
    return JSON.parse(fs.readFileSync(p.state, 'utf8')) as OpenState;
  } catch {
    return null;
  }
}

export function transactionOpen(S: string): boolean {
  return readState(simPaths(S))?.kind === 'transaction';
}

/** S/repo back to the read-only bind of the published content. */
function restoreReadOnly(p: SimPaths): void {
  unmountAll(p.repo, true);
  bindReadOnly(p.published, p.repo);
}

/** `cvmfs_server transaction`: S/repo becomes a writable overlayfs union over the published content. */
export function transaction(S: string): void {
  const p = simPaths(S);
  readConfig(S);
  openState(p, 'transaction');
  try {
    unmountAll(p.repo);
    rmTree(p.upper);
    rmTree(p.work);
    fs.mkdirSync(p.work);
    // the scratch area's root has the repository root's attributes (it is the union's root)
    fs.mkdirSync(p.upper);
    const st = fs.lstatSync(p.published);
    fs.chownSync(p.upper, st.uid, st.gid);
    fs.chmodSync(p.upper, st.mode & 0o7777);
    fs.utimesSync(p.upper, st.atime, st.mtime);
    mountUnion(p.published, p.upper, p.work, p.repo);
  } catch (e) {
    try {
      restoreReadOnly(p);
    } finally {
      fs.rmSync(p.state, { force: true });
    }
    throw e;
  }
}

/** `cvmfs_server abort -f`: the union's changes are discarded. */
export function abort(S: string): void {
  const p = simPaths(S);
  readConfig(S);
  const st = readState(p);
  if (st === null) throw new SimError(`${p.root}: no transaction is open`);
  restoreReadOnly(p);
  rmTree(p.upper);
  rmTree(p.work);
  fs.mkdirSync(p.work);
  rmTree(p.next);
  rmTree(p.ingestTmp);
  fs.rmSync(p.state, { force: true });
}

/** A `.wh.` prefix (case-insensitive, as CVMFS matches it), a 0/0 character device, or an old-style whiteout symlink. */
export function isWhiteoutEntry(name: string, st: fs.BigIntStats, abs: string): boolean {
  if (st.isCharacterDevice() && st.rdev === 0n) return true;
  if (name.toLowerCase().startsWith('.wh.')) return true;
  return st.isSymbolicLink() && fs.readlinkSync(abs) === '(overlay-whiteout)';
}

const unwindWhiteout = (name: string) => (name.toLowerCase().startsWith('.wh.') ? name.slice(4) : name);

export interface PublishResult {
  warnings: string[];
}

/**
 * `cvmfs_server publish`: the union's upper dir is applied to the published
 * content with CVMFS's rules. A refused publish (catalog limit, busy union)
 * throws and leaves the transaction open and writable.
 */
export function publish(S: string, warn: Warn = quiet): PublishResult {
  const p = simPaths(S);
  const cfg = readConfig(S);
  const st = readState(p);
  if (st?.kind !== 'transaction') throw new SimError(`${p.root}: no transaction is open`);
  const warnings: string[] = [];
  const w = (m: string) => {
    warnings.push(m);
    warn(m);
  };
  remount(p.repo, true);
  try {
    refuseWritesBelowNoOwner(p);
    linkCopy(p.published, p.next);
    new Sync(p, cfg, w).touchDir('');
    const over = catalogsOverLimit(p.next, cfg.catalogLimit);
    if (over.length > 0)
      throw new SimError(
        `publish failed: ${over.join('; ')}. Large catalogs stress the CernVM-FS transport infrastructure: split it into nested catalogs (${CATALOG_MARKER}) or raise the limit`,
      );
    unmountAll(p.repo);
  } catch (e) {
    rmTree(p.next);
    if (isMounted(p.repo)) remount(p.repo, false);
    throw e;
  }
  swapIn(p);
  rmTree(p.upper);
  rmTree(p.work);
  fs.mkdirSync(p.work);
  bindReadOnly(p.published, p.repo);
  fs.rmSync(p.state, { force: true });
  return { warnings };
}

function swapIn(p: SimPaths): void {
  const old = `${p.published}.old`;
  rmTree(old);
  fs.renameSync(p.published, old);
  fs.renameSync(p.next, p.published);
  rmTree(old);
}

/** What a CVMFS sync does with the scratch area: `upper` says what changed, the (read-only) union gives the content. */
class Sync {
  constructor(
    private readonly p: SimPaths,
    private readonly cfg: SimConfig,
    private readonly warn: Warn,
  ) {}

  private meta(rel: string): { st: fs.BigIntStats; m: ReturnType<typeof metaOf> } {
    const u = path.join(this.p.repo, rel);
    const st = fs.lstatSync(u, { bigint: true });
    return { st, m: metaOf(st, publishableXattrs(u, this.cfg.includeXattrs && !st.isSymbolicLink()), this.cfg.mtimeNs) };
  }

  /** A directory that exists on both sides and is not opaque: apply its children, then its own attributes. */
  touchDir(rel: string): void {
    const upperDir = path.join(this.p.upper, rel);
    const nextDir = path.join(this.p.next, rel);
    const names = fs.readdirSync(upperDir).sort();
    const whiteouts: string[] = [];
    const others: string[] = [];
    for (const n of names) {
      const abs = path.join(upperDir, n);
      (isWhiteoutEntry(n, fs.lstatSync(abs, { bigint: true }), abs) ? whiteouts : others).push(n);
    }
    // deletions first (CVMFS goes in readdir order; a name both deleted and added is ambiguous there)
    for (const n of whiteouts) {
      const target = unwindWhiteout(n);
      if (others.includes(target))
        this.warn(
          `'${path.join(rel, n)}' and '${path.join(rel, target)}' are both in the scratch area: the simulator deletes first (a real publish goes in readdir order)`,
        );
      const victim = path.join(nextDir, target);
      if (target === '' || lstatOrNull(victim) === null) {
        this.warn(`'${path.join(rel, target)}' should be deleted, but was not found in repository.`);
        continue;
      }
      rmTree(victim);
    }
    for (const n of others) {
      const r = path.join(rel, n);
      const upperSt = fs.lstatSync(path.join(upperDir, n), { bigint: true });
      const prev = lstatOrNull(path.join(nextDir, n));
      if (upperSt.isDirectory()) {
        const opaque = hasXattr(path.join(upperDir, n), 'trusted.overlay.opaque');
        if (prev?.isDirectory() && !opaque) {
          this.touchDir(r);
          continue;
        }
        if (prev) rmTree(path.join(nextDir, n));
        this.addDir(r);
      } else {
        if (prev) rmTree(path.join(nextDir, n));
        this.addEntry(r);
      }
    }
    const { m } = this.meta(rel);
    if (llistxattr(nextDir).length > 0) renewDirectory(nextDir);
    applyMeta(nextDir, false, m);
  }

  /** A new (or opaque, i.e. replacing) directory: its whole scratch subtree is added; whiteouts in it have nothing to delete. */
  private addDir(rel: string): void {
    const nextDir = path.join(this.p.next, rel);
    fs.mkdirSync(nextDir);
    const upperDir = path.join(this.p.upper, rel);
    for (const n of fs.readdirSync(upperDir).sort()) {
      const abs = path.join(upperDir, n);
      const st = fs.lstatSync(abs, { bigint: true });
      if (isWhiteoutEntry(n, st, abs)) {
        this.warn(`'${path.join(rel, unwindWhiteout(n))}' should be deleted, but was not found in repository.`);
        continue;
      }
      if (st.isDirectory()) this.addDir(path.join(rel, n));
      else this.addEntry(path.join(rel, n));
    }
    applyMeta(nextDir, false, this.meta(rel).m);
  }

  private addEntry(rel: string): void {
    const { st, m } = this.meta(rel);
    if (st.nlink > 1n && typeName(st) !== 'dir') {
      this.warn(`Warning: Found file with linkcount > 1 (${path.join(this.p.repo, rel)}). We will break up these hardlinks.`);
    }
    copyEntry(path.join(this.p.repo, rel), st, path.join(this.p.next, rel), m);
  }
}

export interface IngestOptions {
  /** Where the tar goes, relative to the repository root (`-b`). */
  base: string;
  /** The tar: a file, bytes, or this process's standard input (`-t -`). */
  tar: { file: string } | { bytes: Buffer } | 'stdin';
  /** `--catalog`: a nested catalog at the base. */
  catalog?: boolean;
  /** `-k`: keep the tar's owners (otherwise everything belongs to the repository owner). */
  keepOwnership?: boolean;
  /** `-d`: paths removed first. */
  deletes?: string[];
}

function cleanRel(p: string, what: string): string {
  const r = path.posix.normalize(p.replace(/^\/+/, '')).replace(/\/+$/, '');
  if (r === '' || r === '.' || r.startsWith('../') || r === '..') throw new SimError(`${what} ${JSON.stringify(p)} is not a path inside the repository`);
  return r;
}

/**
 * `cvmfs_server ingest`: a tar extracted (GNU tar, no xattrs) under `base`,
 * hard links split, owners → repository owner unless `-k`, `.wh.*` kept as
 * plain files. Like CVMFS's tarball ingestion the tar is merged into an
 * existing `base` (an entry of the tar replaces the one of the same name,
 * others stay); `-d` paths are removed first. Refused while a transaction is open.
 */
export function ingest(S: string, o: IngestOptions): void {
  const p = simPaths(S);
  const cfg = readConfig(S);
  const base = cleanRel(o.base, 'base directory');
  const deletes = (o.deletes ?? []).map((d) => cleanRel(d, 'path to delete'));
  openState(p, 'ingest');
  try {
    rmTree(p.ingestTmp);
    fs.mkdirSync(p.ingestTmp, { mode: 0o755 });
    fs.chmodSync(p.ingestTmp, 0o755);
    fs.chownSync(p.ingestTmp, cfg.owner.uid, cfg.owner.gid);
    fs.utimesSync(p.ingestTmp, NO_ROOT_ENTRY, NO_ROOT_ENTRY);
    const args = ['-x', '--numeric-owner', '--same-owner', '--same-permissions', '--no-xattrs', '--no-acls', '--no-selinux', '-C', p.ingestTmp, '-f'];
    const r =
      o.tar === 'stdin'
        ? spawnSync('tar', [...args, '-'], { stdio: ['inherit', 'pipe', 'pipe'] })
        : 'file' in o.tar
          ? spawnSync('tar', [...args, o.tar.file], { stdio: ['ignore', 'pipe', 'pipe'] })
          : spawnSync('tar', [...args, '-'], { input: o.tar.bytes, stdio: ['pipe', 'pipe', 'pipe'], maxBuffer: 1 << 30 });
    if (r.error) throw r.error;
    if (r.status !== 0) throw new SimError(`ingest: the tar does not extract: ${r.stderr.toString().trim() || `tar exit ${r.status}`}`);
    normalizeIngested(p.ingestTmp, cfg, o.keepOwnership ?? false);
    linkCopy(p.published, p.next);
    for (const d of deletes) rmTree(path.join(p.next, d));
    const dest = path.join(p.next, base);
    const implicit = o.keepOwnership ? implicitDirs(p.next, base, p.ingestTmp) : [];
    mkParents(p.next, path.dirname(base), cfg);
    if (lstatOrNull(dest)?.isDirectory()) mergeInto(p.ingestTmp, dest);
    else {
      rmTree(dest);
      fs.renameSync(p.ingestTmp, dest);
    }
    if (o.catalog) {
      const marker = path.join(dest, CATALOG_MARKER);
      const dst = fs.lstatSync(dest, { bigint: true });
      if (!exists(marker)) fs.writeFileSync(marker, '', { mode: 0o644 });
      fs.chownSync(marker, cfg.owner.uid, cfg.owner.gid);
      applyMeta(dest, false, metaOf(dst, [], cfg.mtimeNs));
    }
    const over = catalogsOverLimit(p.next, cfg.catalogLimit);
    if (over.length > 0) throw new SimError(`ingest failed: ${over.join('; ')}. Split it into nested catalogs (--catalog) or raise the limit`);
    unmountAll(p.repo);
    swapIn(p);
    recordNoOwner(p, implicit);
  } finally {
    rmTree(p.next);
    rmTree(p.ingestTmp);
    try {
      if (!isMounted(p.repo)) bindReadOnly(p.published, p.repo);
    } finally {
      fs.rmSync(p.state, { force: true });
    }
  }
}

/** Move `src`'s entries into the existing directory `dest`: same-named entries are replaced, directories merged (and given `src`'s attributes). */
function mergeInto(src: string, dest: string): void {
  const st = fs.lstatSync(src, { bigint: true });
  for (const n of fs.readdirSync(src)) {
    const s = path.join(src, n);
    const d = path.join(dest, n);
    const ds = lstatOrNull(d);
    if (ds?.isDirectory() && fs.lstatSync(s).isDirectory()) {
      mergeInto(s, d);
      continue;
    }
    if (ds) rmTree(d);
    fs.renameSync(s, d);
  }
  if (llistxattr(dest).length > 0) renewDirectory(dest);
  applyMeta(dest, false, metaOf(st, [], true));
}

/** Missing parents of `rel` inside `root`: directories 0755 of the repository owner. */
function mkParents(root: string, rel: string, cfg: SimConfig): void {
  if (rel === '.' || rel === '') return;
  let cur = root;
  for (const seg of rel.split('/')) {
    cur = path.join(cur, seg);
    const st = lstatOrNull(cur);
    if (st?.isDirectory()) continue;
    if (st) rmTree(cur);
    fs.mkdirSync(cur, { mode: 0o755 });
    fs.chmodSync(cur, 0o755);
    fs.chownSync(cur, cfg.owner.uid, cfg.owner.gid);
  }
}

/** Split hard links, set owners (unless `keep`), cut mtimes to seconds (unless mtimeNs); bottom-up so directory times hold. */
function normalizeIngested(dir: string, cfg: SimConfig, keep: boolean): void {
  const visit = (abs: string, st: fs.BigIntStats): void => {
    const t = typeName(st);
    const m = metaOf(st, [], cfg.mtimeNs);
    if (!keep) {
      m.uid = cfg.owner.uid;
      m.gid = cfg.owner.gid;
    }
    if (t === 'dir') {
      for (const n of fs.readdirSync(abs)) {
        const c = path.join(abs, n);
        visit(c, fs.lstatSync(c, { bigint: true }));
      }
      applyMeta(abs, false, m);
      return;
    }
    if (st.nlink > 1n) {
      const tmp = `${abs}.split-${process.pid}`;
      copyEntry(abs, st, tmp, m);
      fs.renameSync(tmp, abs);
      return;
    }
    applyMeta(abs, t === 'symlink', m);
  };
  visit(dir, fs.lstatSync(dir, { bigint: true }));
}

/** `cvmfs_server rmfs`: unmount and delete everything. */
export function rmfs(S: string): void {
  const p = simPaths(S);
  if (!exists(p.config)) throw new SimError(`${p.root} is not a simulated repository (no config.json)`);
  unmountAll(p.repo, true);
  rmTree(p.root);
}

/**
 * The "naive" diff of two whole file system views, for Diff / Changes /
 * DiffSize / ApplyDiff against a parent other than the layer's own: overlay2
 * falls back to moby's NaiveDiffDriver there, and moby's graphtest asks for
 * parent "" (everything visible in the layer's view). Semantics of moby's
 * archive.ChangesDirs (changes_linux.go, statDifferent of changes_unix.go,
 * security.capability compared) and archive.ChangesSize. The views are what
 * Get returns (mounted through the Mounter, reference counted); xattrs are
 * read through the injected Host.
 */
import { promises as fsp } from 'node:fs';
import type { BigIntStats } from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { FailedPreconditionError, NotFoundError } from '../core/errors/errors.js';
import type { Host } from '../core/host/host.js';
import { packDirectory } from '../core/tar/index.js';
import type { IdMaps } from '../core/util/idmap.js';
import { extractBody } from './apply.js';
import { sameFsTime } from './changes.js';
import type { Layer, LayerStore } from './layer-store.js';
import type { Mounter } from './mounter.js';
import { CHANGE_ADD, CHANGE_DELETE, CHANGE_MODIFY, type Change } from './protocol.js';

const CAPABILITY_XATTR = 'security.capability';
const S_IFDIR = 0o040000;

interface Node {
  st: BigIntStats;
  cap: Buffer | null;
  children: Map<string, Node> | null;
}

async function collect(abs: string, host: Host): Promise<Node> {
  const st = await fsp.lstat(abs, { bigint: true });
  let cap: Buffer | null = null;
  try {
    cap = host.lgetxattr(abs, CAPABILITY_XATTR);
  } catch {
    cap = null; // no xattr support: nothing to compare
  }
  let children: Map<string, Node> | null = null;
  if (st.isDirectory()) {
    children = new Map();
    for (const n of await fsp.readdir(abs)) {
      try {
        children.set(n, await collect(path.join(abs, n), host));
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e; // removed while walking: ignored, as moby does
      }
    }
  }
  return { st, cap, children };
}

/** moby's statDifferent: mode, owner, rdev; size and mtime unless the old one has the S_IFDIR bit. */
function statDifferent(a: BigIntStats, b: BigIntStats): boolean {
  if (a.mode !== b.mode || a.uid !== b.uid || a.gid !== b.gid || a.rdev !== b.rdev) return true;
  return (Number(a.mode) & S_IFDIR) !== S_IFDIR && (!sameFsTime(a.mtimeNs, b.mtimeNs) || a.size !== b.size);
}

function sameCap(a: Buffer | null, b: Buffer | null): boolean {
  return (a?.length ?? 0) === 0 ? (b?.length ?? 0) === 0 : b !== null && a!.equals(b);
}

const byBytes = (a: string, b: string) => Buffer.compare(Buffer.from(a), Buffer.from(b));
const join = (dir: string, name: string) => (dir === '/' ? `/${name}` : `${dir}/${name}`);

/**
 * The changes of the tree `newRoot` against the tree `oldRoot` (null: an
 * empty tree, every path is added), as archive.ChangesDirs computes them: a
 * directory holding changes is reported modified before them; what is below
 * an added or replaced path is added; a deleted directory is one deletion.
 */
export async function naiveChanges(newRoot: string, oldRoot: string | null, host: Host): Promise<Change[]> {
  const now = await collect(newRoot, host);
  const old = oldRoot === null ? null : await collect(oldRoot, host);
  const changes: Change[] = [];
  const add = (node: Node, oldNode: Node | null, p: string, added: boolean): void => {
    const at = changes.length;
    const oldKids = new Map(oldNode && node.children ? (oldNode.children ?? []) : []);
    for (const name of [...(node.children?.keys() ?? [])].sort(byBytes)) {
      const child = node.children!.get(name)!;
      const cp = join(p, name);
      const oldChild = oldKids.get(name) ?? null;
      let childAdded = false;
      if (oldChild === null) {
        changes.push({ Path: cp, Kind: CHANGE_ADD });
        childAdded = true;
      } else {
        if (statDifferent(oldChild.st, child.st) || !sameCap(oldChild.cap, child.cap)) {
          changes.push({ Path: cp, Kind: CHANGE_MODIFY });
          childAdded = true;
        }
        oldKids.delete(name);
      }
      add(child, oldChild, cp, childAdded);
    }
    for (const name of [...oldKids.keys()].sort(byBytes)) changes.push({ Path: join(p, name), Kind: CHANGE_DELETE });
    if (changes.length > at && node.children && !added && p !== '/') changes.splice(at, 0, { Path: p, Kind: CHANGE_MODIFY });
  };
  add(now, old, '/', false);
  return changes;
}

/** archive.ChangesSize: apparent sizes of the added/modified non-directories in `root`, hard links once. */
export async function naiveChangesSize(root: string, changes: readonly Change[]): Promise<number> {
  const seen = new Set<bigint>();
  let size = 0;
  for (const c of changes) {
    if (c.Kind === CHANGE_DELETE) continue;
    let st: BigIntStats;
    try {
      st = await fsp.lstat(path.join(root, c.Path), { bigint: true });
    } catch {
      continue;
    }
    if (st.isDirectory()) continue;
    if (st.nlink > 1n) {
      if (seen.has(st.ino)) continue;
      seen.add(st.ino);
    }
    size += Number(st.size);
  }
  return size;
}

/** What a naive operation needs of the driver; the caller holds the locks of the layer and of `parent`. */
export interface NaiveContext {
  host: Host;
  store: LayerStore;
  mounter: Mounter;
  idMaps: IdMaps | undefined;
}

interface Views {
  /** What Get of the layer returns (its merged dir, or the diff dir of a layer with nothing below). */
  view: string;
  /** The same for the other parent; null for parent "" (an empty tree). */
  parentView: string | null;
  /** Put of both; call once. */
  release(): Promise<void>;
}

/** Get (mount, counted) the layer and `parent`, as NaiveDiffDriver does. An unknown parent is NotFound. */
async function openViews(c: NaiveContext, l: Layer, parent: string): Promise<Views> {
  const p = parent === '' ? undefined : c.store.get(parent);
  if (parent !== '' && !p) throw new NotFoundError(`parent layer ${parent} does not exist`, 'CVMFS_THIN_NO_SUCH_LAYER');
  const view = await c.mounter.get(l);
  let parentView: string | null = null;
  try {
    if (p) parentView = await c.mounter.get(p);
  } catch (e) {
    await c.mounter.put(l);
    throw e;
  }
  const release = async (): Promise<void> => {
    try {
      if (p) await c.mounter.put(p);
    } finally {
      await c.mounter.put(l);
    }
  };
  return { view, parentView, release };
}

/** Run `fn` on the views of the layer and `parent`, put back afterwards whatever happens. */
async function withViews<T>(c: NaiveContext, l: Layer, parent: string, fn: (v: Views) => Promise<T>): Promise<T> {
  const v = await openViews(c, l, parent);
  try {
    return await fn(v);
  } finally {
    await v.release();
  }
}

/** Changes of the layer's view against `parent`'s view. */
export function changesAgainst(c: NaiveContext, l: Layer, parent: string): Promise<Change[]> {
  return withViews(c, l, parent, (v) => naiveChanges(v.view, v.parentView, c.host));
}

/** DiffSize against `parent`: the size of those changes. */
export function diffSizeAgainst(c: NaiveContext, l: Layer, parent: string): Promise<number> {
  return withViews(c, l, parent, async (v) => naiveChangesSize(v.view, await naiveChanges(v.view, v.parentView, c.host)));
}

const PACK_KIND = ['modify', 'add', 'delete'] as const;

/**
 * Diff against `parent`: for "", a tar of the whole view; otherwise a tar of
 * the changes (deletions as `.wh.` entries, archive.ExportChanges). The views
 * stay mounted until the caller runs `done` after the stream ended.
 */
export async function diffAgainst(c: NaiveContext, l: Layer, parent: string): Promise<{ stream: Readable; done: () => Promise<void> }> {
  const v = await openViews(c, l, parent);
  const idMap = c.idMaps ? { idMap: c.idMaps } : {};
  try {
    if (v.parentView === null) return { stream: packDirectory(v.view, { whiteouts: 'none', ...idMap }), done: v.release };
    const changes = (await naiveChanges(v.view, v.parentView, c.host)).map((ch) => ({ path: ch.Path, kind: PACK_KIND[ch.Kind] }));
    return { stream: packDirectory(v.view, { changes, ...idMap }), done: v.release };
  } catch (e) {
    await v.release();
    throw e;
  }
}

/**
 * ApplyDiff against `parent` (NaiveDiffDriver.ApplyDiff): unpack onto the
 * layer's view, whiteouts deleting what is below; the body is always read to
 * its end. Answers the size of the layer's changes against `parent`, as a
 * DiffSize would (what overlay2's native ApplyDiff answers for its own parent).
 */
export async function applyAgainst(c: NaiveContext, l: Layer, parent: string, body: Readable): Promise<number> {
  if (l.rec.thin) throw new FailedPreconditionError(`ApplyDiff to layer ${l.rec.id}: it is a thin image layer (its content is its thin manifest)`);
  return withViews(c, l, parent, async (v) => {
    await extractBody(body, { dest: v.view, whiteouts: 'apply', ...(c.idMaps ? { idMap: c.idMaps } : {}) });
    return naiveChangesSize(v.view, await naiveChanges(v.view, v.parentView, c.host));
  });
}

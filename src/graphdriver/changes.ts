/**
 * `docker diff` for an overlay layer: the changes of a layer's own directory
 * (its overlay upper dir) against the stack below it, with the semantics of
 * moby's archive.OverlayChanges (what overlay2 answers), except that a path
 * counts as existing below only if overlay would show it: whiteouts, opaque
 * directories and non-directories in the lower layers hide what is under them.
 *
 * The walk and the lookup are written against a small TreeReader interface so
 * that they can be tested without root (whiteouts are character devices).
 */
import { promises as fsp } from 'node:fs';
import type { BigIntStats } from 'node:fs';
import path from 'node:path';
import type { Host } from '../core/host/host.js';
import { OVERLAY_OPAQUE_XATTR } from '../core/fs/whiteout.js';
import { CHANGE_ADD, CHANGE_DELETE, CHANGE_MODIFY, type Change } from './protocol.js';

export interface FileInfo {
  type: 'dir' | 'file' | 'symlink' | 'whiteout' | 'other';
  /** st_mode (type and permission bits). */
  mode: number;
  size: bigint;
  mtimeNs: bigint;
  /** Directories: carries trusted.overlay.opaque=y. */
  opaque: boolean;
}

/** Read access to one layer tree; paths are relative, '/'-separated, '' is the root. */
export interface TreeReader {
  lstat(rel: string): Promise<FileInfo | null>;
  /** Names in a directory (any order). */
  readdir(rel: string): Promise<string[]>;
}

/** Go's sameFsTime: equal, or same second with one side lacking sub-second precision. */
export function sameFsTime(a: bigint, b: bigint): boolean {
  if (a === b) return true;
  const sa = a / 1_000_000_000n;
  const sb = b / 1_000_000_000n;
  return sa === sb && (a % 1_000_000_000n === 0n || b % 1_000_000_000n === 0n);
}

function ancestors(rel: string): string[] {
  const out: string[] = [];
  let d = path.posix.dirname(rel);
  while (d !== '.' && d !== '') {
    out.push(d);
    d = path.posix.dirname(d);
  }
  return out; // nearest first
}

/**
 * What overlay would show at `rel` for the stack `lowers` (top first): the
 * file info, or null when nothing is there (absent, whited out, or hidden by
 * an opaque directory or a non-directory higher up).
 */
export async function lookupInStack(lowers: readonly TreeReader[], rel: string): Promise<FileInfo | null> {
  const ups = ancestors(rel);
  for (const layer of lowers) {
    const fi = await layer.lstat(rel);
    if (fi) return fi.type === 'whiteout' ? null : fi;
    // not in this layer: does this layer hide it from the layers below?
    for (const a of ups) {
      const ai = await layer.lstat(a);
      if (!ai) continue;
      if (ai.type !== 'dir') return null; // a whiteout or a file replaces the whole directory
      if (ai.opaque) return null;
      break; // the nearest existing ancestor is a plain directory: look below
    }
  }
  return null;
}

/**
 * The changes of `upper` against `lowers` (top first), in walk order (each
 * directory's entries sorted by name), like moby's archive.changes with
 * overlayDeletedFile: a whiteout is a deletion; an opaque directory is
 * reported as deleted too (and its contents as added), as overlay2 does; a
 * directory whose size, mode and mtime equal the one below is not reported
 * unless something in it was added or deleted.
 */
export async function computeChanges(upper: TreeReader, lowers: readonly TreeReader[]): Promise<Change[]> {
  const changes: Change[] = [];
  const changedDirs = new Set<string>();
  const visit = async (rel: string, fi: FileInfo): Promise<void> => {
    const abs = `/${rel}`;
    let kind: Change['Kind'];
    let record = true;
    if (fi.type === 'whiteout' || (fi.type === 'dir' && fi.opaque)) kind = CHANGE_DELETE;
    else {
      kind = CHANGE_ADD;
      const below = await lookupInStack(lowers, rel);
      if (below) {
        if (below.type === 'dir' && fi.type === 'dir' && below.size === fi.size && below.mode === fi.mode && sameFsTime(below.mtimeNs, fi.mtimeNs)) {
          record = false;
        } else kind = CHANGE_MODIFY;
      }
    }
    if (record) {
      if (fi.type === 'dir') changedDirs.add(abs);
      if (kind === CHANGE_ADD || kind === CHANGE_DELETE) {
        const parent = path.posix.dirname(abs);
        if (parent !== '/' && !changedDirs.has(parent)) {
          changes.push({ Path: parent, Kind: CHANGE_MODIFY });
          changedDirs.add(parent);
        }
      }
      changes.push({ Path: abs, Kind: kind });
    }
    if (fi.type === 'dir') await walk(rel);
  };
  const walk = async (dir: string): Promise<void> => {
    const names = (await upper.readdir(dir)).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
    for (const n of names) {
      const rel = dir === '' ? n : `${dir}/${n}`;
      const fi = await upper.lstat(rel);
      if (fi) await visit(rel, fi);
    }
  };
  await walk('');
  return changes;
}

function infoOf(st: BigIntStats, abs: string, host: Host): FileInfo {
  let type: FileInfo['type'] = 'other';
  if (st.isDirectory()) type = 'dir';
  else if (st.isFile()) type = 'file';
  else if (st.isSymbolicLink()) type = 'symlink';
  else if (st.isCharacterDevice() && st.rdev === 0n) type = 'whiteout';
  let opaque = false;
  if (type === 'dir') {
    try {
      opaque = host.lgetxattr(abs, OVERLAY_OPAQUE_XATTR)?.toString() === 'y';
    } catch {
      opaque = false;
    }
  }
  return { type, mode: Number(st.mode), size: st.size, mtimeNs: st.mtimeNs, opaque };
}

/** A TreeReader over a real directory (opaque-directory xattrs read through `host`). */
export function fsTree(root: string, host: Host): TreeReader {
  return {
    async lstat(rel) {
      const abs = rel === '' ? root : path.join(root, rel);
      try {
        return infoOf(await fsp.lstat(abs, { bigint: true }), abs, host);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'ENOENT' || code === 'ENOTDIR') return null;
        throw e;
      }
    },
    async readdir(rel) {
      return fsp.readdir(rel === '' ? root : path.join(root, rel));
    },
  };
}

/**
 * Size of a layer's own files as moby's directory.Size counts it (what
 * overlay2 answers to DiffSize and ApplyDiff): apparent sizes of everything
 * but directories, hard-linked files once. Does not cross mount points.
 */
export async function dirSize(root: string): Promise<number> {
  const rootSt = await fsp.lstat(root);
  const seen = new Set<number>();
  let size = 0;
  const walk = async (dir: string): Promise<void> => {
    const ents = await fsp.readdir(dir);
    for (const n of ents) {
      const p = path.join(dir, n);
      let st;
      try {
        st = await fsp.lstat(p);
      } catch {
        continue;
      }
      if (st.isDirectory()) {
        if (st.dev === rootSt.dev) await walk(p);
        continue;
      }
      if (st.isFile() && st.nlink > 1) {
        if (seen.has(st.ino)) continue;
        seen.add(st.ino);
      }
      size += st.size;
    }
  };
  await walk(root);
  return size;
}

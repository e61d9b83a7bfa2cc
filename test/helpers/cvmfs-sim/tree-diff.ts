/**
 * Compare two trees entry by entry: type, permission bits incl.
 * setuid/setgid/sticky, owner, content (sha256), symlink target, device
 * numbers, xattrs other than trusted.*, and whole-second mtimes of
 * non-directories. Not compared: link counts (a publish splits hard links)
 * and directory times (a merged overlay directory has the top layer's).
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { lgetxattr, llistxattr } from '../../../src/core/host/sys.js';
import { typeName } from './fsops.js';

export interface TreeNode {
  type: string;
  mode: string;
  owner: string;
  mtime?: number;
  sha256?: string;
  target?: string;
  rdev?: number;
  xattrs?: Record<string, string>;
}

/** Every entry under `root`, keyed by relative path ('.' for the root). */
export function treeSnapshot(root: string): Map<string, TreeNode> {
  const out = new Map<string, TreeNode>();
  const visit = (abs: string, rel: string): void => {
    const st = fs.lstatSync(abs);
    const type = typeName(st);
    const n: TreeNode = { type, mode: type === 'symlink' ? '-' : (st.mode & 0o7777).toString(8).padStart(4, '0'), owner: `${st.uid}:${st.gid}` };
    if (type !== 'dir') n.mtime = Math.floor(st.mtimeMs / 1000);
    if (type === 'file') n.sha256 = createHash('sha256').update(fs.readFileSync(abs)).digest('hex').slice(0, 16);
    if (type === 'symlink') n.target = fs.readlinkSync(abs);
    if (type === 'char' || type === 'block') n.rdev = st.rdev;
    const xs: Record<string, string> = {};
    for (const x of llistxattr(abs).sort()) if (!x.startsWith('trusted.')) xs[x] = lgetxattr(abs, x)?.toString('base64') ?? '';
    if (Object.keys(xs).length > 0) n.xattrs = xs;
    out.set(rel, n);
    if (type === 'dir') for (const c of fs.readdirSync(abs).sort()) visit(path.join(abs, c), rel === '.' ? c : `${rel}/${c}`);
  };
  visit(root, '.');
  return out;
}

const show = (v: unknown) => (v === undefined ? '(none)' : typeof v === 'object' ? JSON.stringify(v) : String(v));

/** Differences of `got` from `want`, one line each, e.g. "/bin/tool: mode 0755, want 4755". */
export function treeDiff(want: Map<string, TreeNode>, got: Map<string, TreeNode>): string[] {
  const out: string[] = [];
  const name = (p: string) => (p === '.' ? '/' : `/${p}`);
  for (const [p, w] of want) {
    const g = got.get(p);
    if (!g) {
      out.push(`${name(p)}: missing (want ${w.type})`);
      continue;
    }
    for (const k of ['type', 'mode', 'owner', 'sha256', 'target', 'rdev', 'mtime', 'xattrs'] as const) {
      if (show(g[k]) !== show(w[k])) out.push(`${name(p)}: ${k} ${show(g[k])}, want ${show(w[k])}`);
      if (k === 'type' && g.type !== w.type) break;
    }
  }
  for (const [p, g] of got) if (!want.has(p)) out.push(`${name(p)}: unexpected ${g.type}`);
  return out;
}

/** Paths of `root` sharing an inode (hard links), in groups. */
export function hardLinkGroups(root: string): string[][] {
  const byIno = new Map<number, string[]>();
  const visit = (abs: string, rel: string): void => {
    const st = fs.lstatSync(abs);
    if (st.isDirectory()) {
      for (const c of fs.readdirSync(abs).sort()) visit(path.join(abs, c), rel ? `${rel}/${c}` : c);
    } else if (st.nlink > 1) byIno.set(st.ino, [...(byIno.get(st.ino) ?? []), rel]);
  };
  visit(root, '');
  return [...byIno.values()].filter((g) => g.length > 1);
}

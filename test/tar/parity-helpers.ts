/**
 * Helpers for apply-parity.test.ts: apply a layer tar with containerd's own
 * archive.Apply (test/applyparity/applytool, built by test/applyparity/build.sh)
 * and with our extractor, and snapshot trees for an entry-by-entry comparison.
 *
 * Times are compared exactly, except that a time stamped by the clock during
 * the test (implicit parents, directories whose content changed, containerd's
 * whiteout devices) is recorded as 'now': every time in the fixtures lies
 * before 2021, so "at or after the test started" can only mean the clock.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { expect } from 'vitest';
import { lgetxattr, llistxattr } from '../../src/core/host/sys.js';
import { extractLayer, type WhiteoutMode } from '../../src/core/tar/index.js';
import { rawEntry, tar, typeOf } from './helpers.js';

export const T1 = 1_500_000_000;
export const T2 = 1_550_000_000;
export const T3 = 1_580_000_000;

/** A lower tree (applied by containerd to both sides first). */
export const LOWER = tar(
  rawEntry({ name: 'etc/', type: '5', mode: 0o755, mtime: T1 }),
  rawEntry({ name: 'etc/passwd', mode: 0o644, mtime: T1 }, 'root:x:0:0\n'),
  rawEntry({ name: 'afile', mode: 0o600, uid: 7, mtime: T1 }, 'lower a'),
  rawEntry({ name: 'bdir/', type: '5', mode: 0o750, mtime: T1 }),
  rawEntry({ name: 'bdir/inner', mtime: T1 }, 'inner'),
  rawEntry({ name: 'gone', mtime: T1 }, 'gone'),
  rawEntry({ name: 'gonedir/', type: '5', mtime: T1 }),
  rawEntry({ name: 'gonedir/x', mtime: T1 }, 'x'),
  rawEntry({ name: 'o/', type: '5', mode: 0o711, mtime: T1 }),
  rawEntry({ name: 'o/old', mtime: T1 }, 'old'),
  rawEntry({ name: 'o/sub/', type: '5', mtime: T1 }),
  rawEntry({ name: 'o/sub/deep', mtime: T1 }, 'deep'),
  rawEntry({ name: 'p/', type: '5', mtime: T1 }),
  rawEntry({ name: 'p/q/', type: '5', mtime: T1 }),
  rawEntry({ name: 'p/q/old', mtime: T1 }, 'old'),
  rawEntry({ name: 'real/', type: '5', mtime: T1 }),
  rawEntry({ name: 'via', type: '2', linkname: '/real', mtime: T1 }),
  rawEntry({ name: 'x/', type: '5', mode: 0o755, mtime: T1 }),
  rawEntry({ name: 'x/keep', mtime: T1 }, 'keep'),
);

export const APPLYTOOL = process.env['APPLYTOOL'] ?? '/tmp/applyparity/bin/applytool';

/** Times at or after this (ns) were set by the clock during the test. */
const STARTED_NS = BigInt(Date.now() - 5_000) * 1_000_000n;

export interface Outcome {
  ok: boolean;
  error: string;
}

export function applyContainerd(dest: string, layer: Buffer, whiteouts: 'overlay' | 'apply'): Outcome {
  const r = spawnSync(APPLYTOOL, ['-whiteouts', whiteouts, dest], { input: layer, encoding: 'utf8' });
  if (r.error) throw r.error;
  // on success stderr holds only containerd's warnings (xattrs it ignored)
  return { ok: r.status === 0, error: r.status === 0 ? '' : r.stderr.trim() || `exit ${r.status}` };
}

export async function applyOurs(dest: string, layer: Buffer, whiteouts: WhiteoutMode): Promise<Outcome> {
  try {
    // as the graph driver's ApplyDiff and the converter call it: a stream, the default worker thread
    await extractLayer(Readable.from([layer]), { dest, whiteouts });
    return { ok: true, error: '' };
  } catch (e) {
    return { ok: false, error: (e as Error).message };
  }
}

export interface PNode {
  type: string;
  mode: number;
  uid: number;
  gid: number;
  mtime: string;
  atime: string;
  size?: number;
  content?: string;
  target?: string;
  rdev?: string;
  nlink: number;
  /** the other paths sharing this inode */
  sameInode?: string[];
  xattrs?: Record<string, string>;
}

const timeOf = (ns: bigint): string => (ns >= STARTED_NS ? 'now' : String(ns));

/**
 * Everything about a tree, keyed by relative path ('.' is the root). Each
 * node is lstat'ed before its directory is listed and file contents are read
 * last, so reading does not move the atimes being recorded.
 */
export function psnapshot(dir: string): Record<string, PNode> {
  const out: Record<string, PNode> = {};
  const inodes = new Map<bigint, string[]>();
  const files: [string, string][] = [];
  const visit = (abs: string, rel: string): void => {
    const st = fs.lstatSync(abs, { bigint: true });
    const type = typeOf(st);
    const n: PNode = {
      type,
      mode: Number(st.mode) & 0o7777,
      uid: Number(st.uid),
      gid: Number(st.gid),
      mtime: timeOf(st.mtimeNs),
      atime: timeOf(st.atimeNs),
      nlink: Number(st.nlink),
    };
    if (type === 'symlink') {
      n.mode = 0;
      n.target = (fs.readlinkSync(abs, { encoding: 'buffer' }) as Buffer).toString('latin1');
    }
    if (type === 'char' || type === 'block') n.rdev = String(st.rdev);
    if (type === 'file') {
      n.size = Number(st.size);
      files.push([abs, rel]);
    }
    const xs: Record<string, string> = {};
    for (const x of llistxattr(abs)) xs[x] = lgetxattr(abs, x)?.toString('hex') ?? '';
    if (Object.keys(xs).length > 0) n.xattrs = xs;
    if (type !== 'dir') inodes.set(st.ino, [...(inodes.get(st.ino) ?? []), rel]);
    out[rel] = n;
    if (type === 'dir') {
      for (const c of fs.readdirSync(abs).sort()) visit(path.join(abs, c), rel === '.' ? c : `${rel}/${c}`);
    }
  };
  visit(dir, '.');
  for (const [abs, rel] of files) out[rel]!.content = createHash('sha256').update(fs.readFileSync(abs)).digest('hex').slice(0, 16);
  for (const paths of inodes.values()) {
    if (paths.length > 1) for (const p of paths) out[p]!.sameInode = paths.filter((q) => q !== p);
  }
  return out;
}

/** containerd's overlay whiteouts get the clock's times, ours the entry's (deliberate): drop those times. */
export function withoutWhiteoutTimes(ctd: Record<string, PNode>, ours: Record<string, PNode>): void {
  for (const [p, n] of Object.entries(ctd)) {
    const o = ours[p];
    if (n.type === 'char' && n.rdev === '0' && n.mtime === 'now' && o?.type === 'char' && o.rdev === '0') {
      n.mtime = n.atime = o.mtime = o.atime = 'whiteout';
    }
  }
}

export interface ParityRun {
  ctd: string;
  ours: string;
  ctdOut: Outcome[];
  oursOut: Outcome[];
}

let seq = 0;

/**
 * Apply `layers` in order with containerd (into dir ctd) and with us (into
 * dir ours), each first holding `lower` (applied by containerd to both).
 * Both must succeed or both fail on the same layer.
 */
export async function applyBoth(base: string, name: string, layers: Buffer[], whiteouts: 'overlay' | 'apply', lower?: Buffer): Promise<ParityRun> {
  const root = path.join(base, `${++seq}-${name.replace(/[^a-z0-9]+/gi, '-').slice(0, 40)}`);
  const run: ParityRun = { ctd: path.join(root, 'ctd'), ours: path.join(root, 'ours'), ctdOut: [], oursOut: [] };
  for (const d of [run.ctd, run.ours]) {
    fs.mkdirSync(d, { recursive: true, mode: 0o755 });
    fs.chmodSync(d, 0o755);
    if (lower) {
      const r = applyContainerd(d, lower, 'apply');
      if (!r.ok) throw new Error(`lower layer: ${r.error}`);
    }
  }
  for (const l of layers) {
    run.ctdOut.push(applyContainerd(run.ctd, l, whiteouts));
    run.oursOut.push(await applyOurs(run.ours, l, whiteouts));
  }
  return run;
}

/** Both appliers succeed on every layer and produce the same tree. */
export async function expectParity(
  base: string,
  name: string,
  layers: Buffer[],
  whiteouts: 'overlay' | 'apply',
  lower?: Buffer,
): Promise<Record<string, PNode>> {
  const r = await applyBoth(base, name, layers, whiteouts, lower);
  expect(
    r.ctdOut.map((o) => o.error),
    'containerd applies every layer',
  ).toEqual(layers.map(() => ''));
  expect(
    r.oursOut.map((o) => o.error),
    'we apply every layer',
  ).toEqual(layers.map(() => ''));
  const a = psnapshot(r.ctd);
  const b = psnapshot(r.ours);
  withoutWhiteoutTimes(a, b);
  expect(b).toEqual(a);
  return b;
}

/** Both appliers refuse the (last) layer. */
export async function expectBothFail(base: string, name: string, layers: Buffer[], whiteouts: 'overlay' | 'apply', lower?: Buffer): Promise<ParityRun> {
  const r = await applyBoth(base, name, layers, whiteouts, lower);
  expect(r.ctdOut.at(-1)!.ok, `containerd should fail: ${r.ctdOut.at(-1)!.error}`).toBe(false);
  expect(r.oursOut.at(-1)!.ok, 'we should fail').toBe(false);
  return r;
}

/** Set the GNU atime field (offset 345) of an entry's header and fix its checksum. */
export function gnuAtime(entry: Buffer, atime: number): Buffer {
  const b = Buffer.from(entry);
  b.write(atime.toString(8).padStart(11, '0') + '\0', 345, 12, 'latin1');
  b.fill(0x20, 148, 156);
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += b[i]!;
  b.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8, 'latin1');
  return b;
}

/** A tar made by GNU tar of one 4 MiB sparse file `sparse` (a hole with data at 1 MiB). */
export function gnuTar(args: string[]): Buffer {
  const dir = fs.mkdtempSync(path.join(fs.realpathSync('/tmp'), 'cvmfs-thin-applyparity-sparse-'));
  try {
    const fd = fs.openSync(path.join(dir, 'sparse'), 'w');
    fs.writeSync(fd, Buffer.alloc(4096, 1), 0, 4096, 1 << 20);
    fs.ftruncateSync(fd, 4 << 20);
    fs.closeSync(fd);
    return execFileSync('tar', ['-C', dir, '-c', ...args, '-f', '-', 'sparse']);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

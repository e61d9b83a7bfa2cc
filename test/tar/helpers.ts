/**
 * Test helpers for the tar library: a raw tar writer that can produce any
 * header (including ones GNU tar refuses to write), tree snapshots for
 * before/after comparisons, and small runners.
 *
 * The raw writer is written independently of src/core/tar/headers.ts on
 * purpose: attacks must not depend on the code under test.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { expect } from 'vitest';
import { lgetxattr, llistxattr } from '../../src/core/host/sys.js';
import { extractLayer, UnsafeTarError, type ExtractOptions, type ExtractResult, type UnsafeTarReason } from '../../src/core/tar/index.js';

export interface RawHeader {
  /** bytes or text (UTF-8) */
  name: string | Buffer;
  /** type flag character, default '0' */
  type?: string;
  mode?: number;
  uid?: number;
  gid?: number;
  size?: number;
  mtime?: number;
  linkname?: string | Buffer;
  devmajor?: number;
  devminor?: number;
  /** ustar prefix field (POSIX format only) */
  prefix?: string;
  /** 'posix' (ustar\0 00, default), 'gnu' (ustar  \0), 'v7' (no magic) */
  format?: 'posix' | 'gnu' | 'v7';
  /** added to the correct checksum (non-zero = corrupt) */
  checksumDelta?: number;
}

function octal(v: number, len: number): Buffer {
  return Buffer.from(v.toString(8).padStart(len - 1, '0') + '\0', 'latin1');
}

/** One 512-byte header block with a correct checksum (unless told otherwise). */
export function rawHeader(h: RawHeader): Buffer {
  const b = Buffer.alloc(512);
  const name = typeof h.name === 'string' ? Buffer.from(h.name) : h.name;
  name.copy(b, 0, 0, Math.min(100, name.length));
  octal(h.mode ?? 0o644, 8).copy(b, 100);
  octal(h.uid ?? 0, 8).copy(b, 108);
  octal(h.gid ?? 0, 8).copy(b, 116);
  octal(h.size ?? 0, 12).copy(b, 124);
  octal(h.mtime ?? 1_600_000_000, 12).copy(b, 136);
  b.fill(0x20, 148, 156);
  b.write(h.type ?? '0', 156, 1, 'latin1');
  if (h.linkname !== undefined) {
    const l = typeof h.linkname === 'string' ? Buffer.from(h.linkname) : h.linkname;
    l.copy(b, 157, 0, Math.min(100, l.length));
  }
  const format = h.format ?? 'posix';
  if (format === 'posix') b.write('ustar\x0000', 257, 8, 'latin1');
  else if (format === 'gnu') b.write('ustar  \x00', 257, 8, 'latin1');
  if (format !== 'v7') {
    octal(h.devmajor ?? 0, 8).copy(b, 329);
    octal(h.devminor ?? 0, 8).copy(b, 337);
    if (h.prefix) b.write(h.prefix, 345, 155, 'latin1');
  }
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += b[i]!;
  sum += h.checksumDelta ?? 0;
  b.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8, 'latin1');
  return b;
}

function pad(n: number): Buffer {
  return Buffer.alloc((512 - (n % 512)) % 512);
}

/** An entry: header + data + padding. The header's size defaults to the data length. */
export function rawEntry(h: RawHeader, data: Buffer | string = Buffer.alloc(0)): Buffer {
  const d = typeof data === 'string' ? Buffer.from(data) : data;
  return Buffer.concat([rawHeader({ size: d.length, ...h }), d, pad(d.length)]);
}

/** PAX extended header data from records (values may be binary). */
export function paxData(records: [string, string | Buffer][]): Buffer {
  const parts: Buffer[] = [];
  for (const [k, v] of records) {
    const val = typeof v === 'string' ? Buffer.from(v) : v;
    const base = Buffer.byteLength(k) + val.length + 3;
    let len = base + 1;
    while (String(len).length + base !== len) len = String(len).length + base;
    parts.push(Buffer.from(`${len} ${k}=`), val, Buffer.from('\n'));
  }
  return Buffer.concat(parts);
}

/** A PAX 'x' header entry carrying `records`, to be followed by the real entry. */
export function paxEntry(records: [string, string | Buffer][], type = 'x'): Buffer {
  return rawEntry({ name: 'PaxHeaders.0/x', type }, paxData(records));
}

/** A GNU ././@LongLink entry (type 'L' name, 'K' link name). */
export function gnuLong(type: 'L' | 'K', value: string | Buffer): Buffer {
  const v = typeof value === 'string' ? Buffer.from(value) : value;
  return rawEntry({ name: '././@LongLink', type, format: 'gnu' }, Buffer.concat([v, Buffer.alloc(1)]));
}

export const END = Buffer.alloc(1024);

export function tar(...parts: Buffer[]): Buffer {
  return Buffer.concat([...parts, END]);
}

/** A stream of `buf` in chunks of `chunk` bytes (exercises boundaries). */
export function streamOf(buf: Buffer, chunk = 64 * 1024): Readable {
  const parts: Buffer[] = [];
  for (let i = 0; i < buf.length; i += chunk) parts.push(buf.subarray(i, i + chunk));
  return Readable.from(parts, { objectMode: false });
}

export function sha256(b: Buffer): string {
  return `sha256:${createHash('sha256').update(b).digest('hex')}`;
}

// ------------------------------------------------------------------ snapshots

export interface NodeInfo {
  type: string;
  mode: number;
  uid: number;
  gid: number;
  size?: number;
  mtimeNs?: string;
  hash?: string;
  link?: string;
  rdev?: string;
  nlink?: number;
  xattrs?: Record<string, string>;
}

export interface SnapshotOptions {
  mtimes?: boolean;
  /** include the root directory itself as '.' */
  root?: boolean;
  /** compare dirs' mtimes too (default true when mtimes) */
  dirMtimes?: boolean;
  xattrs?: boolean;
  /** ignore these xattr names */
  ignoreXattrs?: (name: string) => boolean;
  /** record files' link counts (default true) */
  nlink?: boolean;
  /** leave out these relative paths and everything below them (never read them) */
  prune?: (rel: string) => boolean;
}

export function typeOf(st: fs.BigIntStats): string {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isCharacterDevice()) return 'char';
  if (st.isBlockDevice()) return 'block';
  if (st.isFIFO()) return 'fifo';
  if (st.isSocket()) return 'socket';
  return 'unknown';
}

/**
 * Everything about a tree, keyed by relative path (names as raw bytes in hex
 * when not valid UTF-8, so byte-exact names compare exactly).
 */
export function snapshot(dir: string, opts: SnapshotOptions = {}): Record<string, NodeInfo> {
  const out: Record<string, NodeInfo> = {};
  const mt = opts.mtimes ?? true;
  const visit = (abs: Buffer, rel: string): void => {
    if (rel !== '' && opts.prune?.(rel)) return;
    const st = fs.lstatSync(abs, { bigint: true });
    const type = typeOf(st);
    const info: NodeInfo = { type, mode: Number(st.mode) & 0o7777, uid: Number(st.uid), gid: Number(st.gid) };
    if (type === 'file') {
      info.size = Number(st.size);
      info.hash = createHash('sha256').update(fs.readFileSync(abs)).digest('hex');
      if (opts.nlink ?? true) info.nlink = Number(st.nlink);
    }
    if (type === 'symlink') {
      info.link = (fs.readlinkSync(abs, { encoding: 'buffer' }) as Buffer).toString('latin1');
      info.mode = 0;
    }
    if (type === 'char' || type === 'block') info.rdev = String(st.rdev);
    if (mt && (type !== 'dir' || (opts.dirMtimes ?? true))) info.mtimeNs = String(st.mtimeNs);
    if (opts.xattrs ?? true) {
      const xs: Record<string, string> = {};
      for (const n of llistxattr(abs)) {
        if (opts.ignoreXattrs?.(n)) continue;
        const v = lgetxattr(abs, n);
        if (v) xs[n] = v.toString('hex');
      }
      if (Object.keys(xs).length > 0) info.xattrs = xs;
    }
    if (rel !== '' || opts.root) out[rel === '' ? '.' : rel] = info;
    if (type === 'dir') {
      const names = (fs.readdirSync(abs, { encoding: 'buffer' }) as Buffer[]).sort(Buffer.compare);
      for (const n of names) {
        const childAbs = Buffer.concat([abs, Buffer.from('/'), n]);
        const text = n.toString('utf8');
        const key = Buffer.from(text, 'utf8').equals(n) ? text : `hex:${n.toString('hex')}`;
        visit(childAbs, rel === '' ? key : `${rel}/${key}`);
      }
    }
  };
  visit(Buffer.from(dir), '');
  return out;
}

// ------------------------------------------------------------------ runners

/** A sandbox: `dest` to extract into, `outside` with canaries next to it. */
export interface Sandbox {
  root: string;
  dest: string;
  outside: string;
  canary: string;
  /** snapshot of everything but dest */
  outsideState(): Record<string, NodeInfo>;
}

export function sandbox(base: string, name: string): Sandbox {
  const root = fs.mkdtempSync(path.join(base, `${name.replace(/[^a-z0-9]+/gi, '-')}-`));
  const dest = path.join(root, 'dest');
  const outside = path.join(root, 'outside');
  fs.mkdirSync(dest);
  fs.mkdirSync(path.join(outside, 'dir'), { recursive: true });
  const canary = path.join(outside, 'canary');
  fs.writeFileSync(canary, 'canary\n', { mode: 0o644 });
  fs.writeFileSync(path.join(outside, 'dir', 'inner'), 'inner\n');
  fs.chmodSync(path.join(outside, 'dir'), 0o755);
  return {
    root,
    dest,
    outside,
    canary,
    // dest is not read: what was extracted there may not be readable by an unprivileged user
    outsideState: () => snapshot(root, { prune: (rel) => rel === 'dest' }),
  };
}

export type Thread = 'worker' | 'inline';

export async function extractBuf(buf: Buffer, opts: ExtractOptions, chunk?: number): Promise<ExtractResult> {
  return extractLayer(streamOf(buf, chunk), opts);
}

/**
 * Extract `buf` into a fresh sandbox expecting a refusal with `reason`;
 * checks the error's class, code, reason, entry, and that nothing outside
 * dest changed. Returns the sandbox and error for further checks.
 */
export async function expectRefused(
  base: string,
  buf: Buffer,
  reason: UnsafeTarReason,
  opts: Partial<ExtractOptions> & { entry?: string; setup?: (s: Sandbox) => void } = {},
): Promise<{ sb: Sandbox; err: UnsafeTarError }> {
  const sb = sandbox(base, reason);
  opts.setup?.(sb);
  const before = sb.outsideState();
  const { entry, setup: _setup, ...o } = opts;
  let err: unknown;
  try {
    await extractBuf(buf, { whiteouts: 'overlay', ...o, dest: sb.dest });
  } catch (e) {
    err = e;
  }
  expect(err, 'extraction should have been refused').toBeInstanceOf(UnsafeTarError);
  const u = err as UnsafeTarError;
  expect(u.reason).toBe(reason);
  expect(u.code).toBe('CVMFS_THIN_UNSAFE_TAR');
  expect(u.kind).toBe('invalid-argument');
  if (entry !== undefined) {
    expect(u.entry).toBe(entry);
    expect(u.message).toContain(JSON.stringify(entry));
  }
  expect(sb.outsideState()).toEqual(before);
  return { sb, err: u };
}

/** Run a shell command, return stdout. */
export function run(cmd: string, args: string[], opts: { cwd?: string; input?: Buffer } = {}): string {
  return execFileSync(cmd, args, { cwd: opts.cwd, input: opts.input, stdio: ['pipe', 'pipe', 'pipe'] }).toString();
}

/** Collect a stream into a Buffer. */
export async function collect(r: NodeJS.ReadableStream): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of r) parts.push(typeof c === 'string' ? Buffer.from(c) : (c as Buffer));
  return Buffer.concat(parts);
}

// ------------------------------------------------------------------ fixture tree

const shx = (cmd: string, args: string[]): string => execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] }).toString();

export const CAP = '0x01000002c0000000000000000000000000000000'; // cap_setuid,cap_setgid+ep: has byte 0xc0
export const LONG_DIR = 'd'.repeat(120) + '/' + 'e'.repeat(120);
export const LONG_NAME = 'f'.repeat(200);
export const LONG_TARGET = '../'.repeat(5) + 't'.repeat(150);

/**
 * Fill `src` with everything GNU tar can archive: all types, special modes,
 * owners, sub-second mtimes, binary xattrs, long and non-ASCII names. Needs
 * root (devices, chown, security.* and trusted.* xattrs).
 */
export function buildFixtureTree(src: string): string {
  const w = (rel: string, data: string | Buffer, mode = 0o644): void => {
    fs.mkdirSync(path.dirname(path.join(src, rel)), { recursive: true });
    fs.writeFileSync(path.join(src, rel), data);
    fs.chmodSync(path.join(src, rel), mode);
  };
  w('dir/file', 'hello\n');
  w('empty', '');
  w('big.bin', Buffer.alloc(1024 * 1024 + 1, 7));
  w('suid', '#!/bin/sh\n', 0o4755);
  w('sgid', 'x', 0o2711);
  w('ro', 'x', 0o400);
  w('owned', 'x', 0o640);
  fs.chownSync(path.join(src, 'owned'), 1234, 5678);
  fs.mkdirSync(path.join(src, 'sticky'));
  fs.chmodSync(path.join(src, 'sticky'), 0o1777);
  fs.mkdirSync(path.join(src, 'setgid-dir'));
  fs.chmodSync(path.join(src, 'setgid-dir'), 0o2775);
  fs.chownSync(path.join(src, 'setgid-dir'), 0, 4321);
  w('setgid-dir/child', 'c');
  fs.chownSync(path.join(src, 'setgid-dir/child'), 0, 0);
  fs.mkdirSync(path.join(src, 'noperm'));
  w('noperm/inside', 'i');
  fs.chmodSync(path.join(src, 'noperm'), 0o500);
  fs.symlinkSync('dir/file', path.join(src, 'sym'));
  fs.symlinkSync('/etc/passwd', path.join(src, 'abs'));
  fs.symlinkSync('nowhere/at/all', path.join(src, 'dangling'));
  fs.linkSync(path.join(src, 'dir/file'), path.join(src, 'hard'));
  shx('ln', ['-P', path.join(src, 'sym'), path.join(src, 'hardsym')]); // a hardlink to the symlink itself
  shx('mknod', [path.join(src, 'chr'), 'c', '1', '3']);
  shx('mknod', [path.join(src, 'blk'), 'b', '7', '200']);
  shx('mkfifo', [path.join(src, 'fifo')]);
  fs.chmodSync(path.join(src, 'chr'), 0o620);
  shx('setfattr', ['-n', 'user.foo', '-v', 'bar', path.join(src, 'dir/file')]);
  shx('setfattr', ['-n', 'user.bin', '-v', '0x00ff10c0', path.join(src, 'dir/file')]);
  shx('setfattr', ['-n', 'security.capability', '-v', CAP, path.join(src, 'suid')]);
  shx('setfattr', ['-n', 'trusted.thin', '-v', 'x', path.join(src, 'dir')]);
  w(`${LONG_DIR}/${LONG_NAME}`, 'long');
  fs.symlinkSync(LONG_TARGET, path.join(src, 'longlink'));
  w('café/naïve.txt', 'utf8');
  w('emoji-🎉', 'e');
  fs.writeFileSync(Buffer.from(path.join(src, 'lat') + '\xe9', 'latin1'), 'latin1 byte');
  // sub-second mtimes everywhere, dirs last
  const stamp = (p: string, s: string): void => void shx('touch', ['-h', '-d', s, p]);
  stamp(path.join(src, 'dir/file'), '2021-02-03 04:05:06.123456789');
  stamp(path.join(src, 'sym'), '2019-01-01 00:00:00.5');
  stamp(path.join(src, 'fifo'), '2018-01-01 00:00:00.000000001');
  stamp(path.join(src, 'dir'), '2020-05-05 05:05:05.987654321');
  stamp(src, '2017-07-07 07:07:07.7');
  return src;
}

/** A fresh empty directory under `base` per call (d0, d1, …). */
export function freshDirs(base: string): () => string {
  let n = 0;
  return () => {
    const d = path.join(base, `d${n++}`);
    fs.mkdirSync(d);
    return d;
  };
}

/** The whiteout kinds of one layer: a deletion in a dir and at the root, an opaque dir with new content, AUFS metadata. */
export function whiteoutEntries(): Buffer[] {
  return [
    rawEntry({ name: 'd/', type: '5', mode: 0o755 }),
    rawEntry({ name: 'd/.wh.gone' }),
    rawEntry({ name: 'd/keep' }, 'keep'),
    rawEntry({ name: '.wh.top' }),
    rawEntry({ name: 'o/', type: '5', mode: 0o750 }),
    rawEntry({ name: 'o/.wh..wh..opq' }),
    rawEntry({ name: 'o/new' }, 'new'),
    rawEntry({ name: '.wh..wh.plnk/', type: '5', mode: 0o755 }),
    rawEntry({ name: '.wh..wh.plnk/123.456' }, 'aufs hardlink store'),
  ];
}

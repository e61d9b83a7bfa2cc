/**
 * Probing CVMFS paths for systemHost.probeFs (host.ts): in a small helper
 * process, never in the daemon.
 *
 * A FUSE file system whose daemon stalls (cvmfs2 waiting for a server that is
 * gone, or a stopped process) blocks every system call on it until it
 * answers. In the daemon such a call would block the event loop (a
 * synchronous call) or a libuv pool thread (fs.promises: four of them and the
 * journal writes wait too), and — measured with Node 20 — a thread stuck in
 * the kernel also keeps `process.exit()` from returning, worker threads
 * included. A helper process has none of these problems: its stuck calls
 * occupy its own thread pool, it is killed when too many are stuck (a
 * request not yet read by the FUSE daemon ends with the kill; one the daemon
 * is working on ends when it answers, in the orphan), and it kills itself
 * when the daemon goes away.
 *
 * The helper runs `node -e` with the script below (plain CommonJS: it works
 * the same from dist/ and under tsx), started on the first probe and stopped
 * after a while without probes. Each message is one probe: its leading
 * operations marked `required` run in order (a failed one ends the probe),
 * the others PROBE_PARALLEL at a time (on a cold CVMFS client each stat of a
 * layer may load a catalog over the network: they overlap); probes run
 * concurrently. A stuck probe holds at most PROBE_PARALLEL threads, so
 * MAX_STUCK of them leave threads free for the others.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import type { FsProbeOp, FsProbeResult } from './host.js';

const HELPER = String.raw`'use strict';
const fsp = require('node:fs').promises;
const BUF = Buffer.allocUnsafe(1 << 18);
// a prefetch: read a regular file through (one fixed buffer: the content is dropped), at most max bytes
async function readFile(p, max) {
  const fh = await fsp.open(p, require('node:fs').constants.O_RDONLY | require('node:fs').constants.O_NOFOLLOW);
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw Object.assign(new Error(p + ' is not a regular file'), { code: 'EINVAL' });
    const limit = Math.min(st.size, max === undefined ? Infinity : max);
    let n = 0;
    while (n < limit) {
      const { bytesRead } = await fh.read(BUF, 0, Math.min(BUF.length, limit - n), n);
      if (bytesRead === 0) break;
      n += bytesRead;
    }
    return n;
  } finally {
    await fh.close();
  }
}
// a regular file of exactly size bytes (not followed if a link) copied as count pieces, each through its own descriptor, all at once
async function copyPieces(p, { to, size, count }) {
  const C = require('node:fs').constants;
  if (!(Number.isInteger(count) && count >= 1 && count <= 16) || !(Number.isSafeInteger(size) && size >= 0))
    throw Object.assign(new Error('bad copy of ' + p + ': ' + count + ' pieces of ' + size + ' bytes'), { code: 'EINVAL' });
  const per = Math.ceil(size / count);
  // answered when every piece ended (the caller removes the pieces then: none is made after)
  const done = await Promise.allSettled(Array.from({ length: count }, async (_, i) => {
    const fh = await fsp.open(p, C.O_RDONLY | C.O_NOFOLLOW);
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw Object.assign(new Error(p + ' is not a regular file'), { code: 'EINVAL' });
      if (st.size !== size) throw Object.assign(new Error(p + ' has ' + st.size + ' bytes, not ' + size), { code: 'EFBIG' });
      // no target: the pieces are read and dropped (the client's cache gets them)
      const out = to === undefined ? null : await fsp.open(to + '.' + i, C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, 0o600);
      try {
        const buf = Buffer.allocUnsafe(1 << 18);
        const end = Math.min(size, (i + 1) * per);
        for (let n = i * per; n < end; ) {
          const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, end - n), n);
          if (bytesRead === 0) throw Object.assign(new Error(p + ' ended at ' + n + ' bytes, not ' + size), { code: 'EIO' });
          if (out) await out.write(buf, 0, bytesRead, n - i * per);
          n += bytesRead;
        }
      } finally {
        await out?.close();
      }
    } finally {
      await fh.close();
    }
  }));
  const failed = done.find((d) => d.status === 'rejected');
  if (failed) throw failed.reason;
  return { bytes: size };
}
// the first n bytes (at most 64 KiB) of a regular file (not followed if a link), as base64
async function head(p, n) {
  const C = require('node:fs').constants;
  if (!(Number.isInteger(n) && n >= 1 && n <= 65536)) throw Object.assign(new Error('bad head of ' + p + ': ' + n + ' bytes'), { code: 'EINVAL' });
  const fh = await fsp.open(p, C.O_RDONLY | C.O_NOFOLLOW);
  try {
    if (!(await fh.stat()).isFile()) throw Object.assign(new Error(p + ' is not a regular file'), { code: 'EINVAL' });
    const b = Buffer.alloc(n);
    let got = 0;
    while (got < n) {
      const { bytesRead } = await fh.read(b, got, n - got, got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    return { ok: true, bytes: got, text: b.subarray(0, got).toString('base64') };
  } finally {
    await fh.close();
  }
}
// the CVMFS client's counters of a mount (getfattr; ENOENT when it is not installed)
const COUNTERS = ['--absolute-names', '-d', '-m', '^user\\.(rx|ndownload|nclg)$'];
function counters(p) {
  return new Promise((resolve, reject) =>
    require('node:child_process').execFile('getfattr', [...COUNTERS, p], { timeout: 60000, maxBuffer: 1 << 16 }, (err, stdout) => {
      if (err) reject(Object.assign(new Error('getfattr ' + p + ': ' + err.message), { code: typeof err.code === 'string' ? err.code : 'EIO' }));
      else resolve({ ok: true, text: stdout });
    }),
  );
}
async function one(o) {
  try {
    if (o.op === 'statfs') return { ok: true, type: (await fsp.statfs(o.path)).type };
    if (o.op === 'stat') {
      const s = await fsp.stat(o.path);
      return { ok: true, uid: s.uid, gid: s.gid, dev: s.dev, dir: s.isDirectory(), bytes: s.size };
    }
    if (o.op === 'readdir') return { ok: true, entries: (await fsp.readdir(o.path)).length };
    if (o.op === 'realpath') {
      const real = await fsp.realpath(o.path);
      return { ok: true, real, dir: (await fsp.stat(real)).isDirectory() };
    }
    if (o.op === 'read' && o.text) {
      const b = await fsp.readFile(o.path);
      if (o.max !== undefined && b.length > o.max) return { ok: false, code: 'EFBIG', message: o.path + ' is larger than ' + o.max + ' bytes' };
      return { ok: true, bytes: b.length, text: b.toString('utf8') };
    }
    if (o.op === 'read' && o.head !== undefined) return await head(o.path, o.head);
    if (o.op === 'read') return { ok: true, bytes: await readFile(o.path, o.max) };
    if (o.op === 'counters') return await counters(o.path);
    if (o.op === 'copy' && o.copy) return { ok: true, ...(await copyPieces(o.path, o.copy)) };
    return { ok: false, code: 'EINVAL', message: 'unknown probe ' + o.op };
  } catch (e) {
    return { ok: false, code: e.code || 'EIO', message: e.message };
  }
}
const PARALLEL = Number(process.env.PROBE_PARALLEL);
async function probe(ops) {
  const results = [];
  let i = 0;
  for (; i < ops.length && ops[i].required; i++) {
    results.push(await one(ops[i]));
    if (!results[i].ok) return results;
  }
  let next = i;
  const worker = async () => {
    while (next < ops.length) {
      const k = next++;
      results[k] = await one(ops[k]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(PARALLEL, ops.length - i) }, worker));
  return results;
}
process.on('message', async (m) => {
  const results = await probe(m.ops);
  if (process.connected) process.send({ id: m.id, results });
});
// the daemon went away: end now (exit() would wait for a call stuck in FUSE)
process.on('disconnect', () => process.kill(process.pid, 'SIGKILL'));
`;

/** Stuck probes tolerated in one helper before it is replaced (its thread pool has HELPER_THREADS). */
export const MAX_STUCK = 8;
/** Operations of one probe run at once (after its required ones). */
const PROBE_PARALLEL = 8;
/** MAX_STUCK probes stuck with PROBE_PARALLEL threads each still leave 8 threads. */
const HELPER_THREADS = MAX_STUCK * PROBE_PARALLEL + 8;
/** A helper without probes for this long is stopped (started again on the next probe). */
const IDLE_MS = 5 * 60_000;

interface Pending {
  ops: readonly FsProbeOp[];
  resolve(r: FsProbeResult[]): void;
  reject(e: Error): void;
  /** The caller gave up waiting (its deadline passed): counted as stuck. */
  abandoned: boolean;
}

export class ProbeHelper {
  private child: ChildProcess | undefined;
  private readonly pending = new Map<number, { p: Pending; child: ChildProcess }>();
  private nextId = 1;
  private idle: NodeJS.Timeout | undefined;
  /** Helpers started (tests, logs). */
  started = 0;

  /**
   * Run `ops` in the helper. The promise settles when the helper answers,
   * which may be never for a stalled FUSE (the caller keeps its own
   * deadline); `signal` tells the helper the caller stopped waiting.
   */
  run(ops: readonly FsProbeOp[], signal?: AbortSignal): Promise<FsProbeResult[]> {
    return new Promise((resolve, reject) => {
      const p: Pending = { ops, resolve, reject, abandoned: false };
      const id = this.nextId++;
      this.send(id, p);
      signal?.addEventListener(
        'abort',
        () => {
          const e = this.pending.get(id);
          if (!e) return;
          e.p.abandoned = true;
          if (this.stuck(e.child) >= MAX_STUCK) this.replace(e.child);
        },
        { once: true },
      );
    });
  }

  /** Probes abandoned in `child` and not answered. */
  private stuck(child: ChildProcess): number {
    let n = 0;
    for (const e of this.pending.values()) if (e.child === child && e.p.abandoned) n++;
    return n;
  }

  private send(id: number, p: Pending): void {
    const child = this.ensure();
    this.pending.set(id, { p, child });
    if (this.idle) clearTimeout(this.idle);
    this.idle = undefined;
    child.send({ id, ops: p.ops }, (err) => {
      if (err) this.settle(id, new Error(`CVMFS probe helper: ${err.message}`));
    });
  }

  private ensure(): ChildProcess {
    if (this.child) return this.child;
    // no NODE_OPTIONS: a loader of the daemon's (tsx under tests) would only slow the helper
    const child = spawn(process.execPath, ['--max-old-space-size=16', '-e', HELPER], {
      stdio: ['ignore', 'ignore', 'ignore', 'ipc'],
      env: { UV_THREADPOOL_SIZE: String(HELPER_THREADS), PROBE_PARALLEL: String(PROBE_PARALLEL), PATH: process.env['PATH'] ?? '/usr/bin:/bin' },
      serialization: 'json',
    });
    this.started++;
    child.unref();
    (child.channel as { unref?: () => void } | undefined)?.unref?.();
    child.on('message', (m: { id: number; results: FsProbeResult[] }) => this.settle(m.id, m.results));
    const gone = (why: string) => {
      if (this.child === child) this.child = undefined;
      for (const [id, e] of [...this.pending]) if (e.child === child) this.settle(id, new Error(`CVMFS probe helper ${why}`));
    };
    child.on('error', (e) => gone(`failed: ${e.message}`));
    child.on('exit', (code, sig) => gone(`exited (${sig ?? code})`));
    this.child = child;
    return child;
  }

  private settle(id: number, r: FsProbeResult[] | Error): void {
    const e = this.pending.get(id);
    if (!e) return;
    this.pending.delete(id);
    if (r instanceof Error) e.p.reject(r);
    else e.p.resolve(r);
    if (this.pending.size === 0 && this.child && !this.idle) {
      this.idle = setTimeout(() => this.stop(), IDLE_MS);
      this.idle.unref();
    }
  }

  /**
   * Too many probes stuck in `child`: kill it, fail its stuck probes, and
   * send the others again to a new helper.
   */
  private replace(child: ChildProcess): void {
    if (this.child === child) this.child = undefined;
    const again: Pending[] = [];
    for (const [id, e] of [...this.pending]) {
      if (e.child !== child) continue;
      this.pending.delete(id);
      if (e.p.abandoned) e.p.reject(new Error('CVMFS probe helper replaced: the probe never answered'));
      else again.push(e.p);
    }
    child.kill('SIGKILL');
    for (const p of again) this.send(this.nextId++, p);
  }

  /** Stop the helper (pending probes fail). */
  stop(): void {
    if (this.idle) clearTimeout(this.idle);
    this.idle = undefined;
    const child = this.child;
    this.child = undefined;
    if (!child) return;
    for (const [id, e] of [...this.pending]) if (e.child === child) this.settle(id, new Error('CVMFS probe helper stopped'));
    child.kill('SIGKILL');
  }

  /** The helper's pid (tests). */
  get pid(): number | undefined {
    return this.child?.pid;
  }
}

/** The process-wide helper of systemHost. */
export const probeHelper = new ProbeHelper();

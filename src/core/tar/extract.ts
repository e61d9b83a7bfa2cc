/**
 * extractLayer: unpack an uncompressed OCI/Docker layer tar into a directory.
 *
 * Stream input: the calling thread copies the input into a ring of shared
 * 1 MiB slots; one worker thread parses and writes them with sync fs calls
 * (parser.ts, writer.ts) while a second one computes the diffId from the
 * same memory. File input (extractLayerFile): one worker reads the file into
 * the slots itself and the calling thread hashes them. Workers are pooled
 * and reused. With `thread: 'inline'` everything runs on the calling thread
 * (blocking its event loop while each chunk is written).
 *
 * Safety (details in writer.ts): names are cleaned like Docker's; names that
 * leave dest are refused; parent directories are resolved inside dest,
 * following symlinks with dest as the root; the final component is never
 * followed; metadata is set without following symlinks; hardlinks must point
 * at existing non-directories inside dest. Refusals throw UnsafeTarError.
 *
 * On failure, dest holds a partial extraction (the caller removes it), and
 * the input is left paused, neither drained nor destroyed: the caller owns it.
 */
import { createHash } from 'node:crypto';
import fs, { promises as fsp } from 'node:fs';
import { createRequire } from 'node:module';
import { Readable } from 'node:stream';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { InvalidArgumentError } from '../errors.js';
import { CTL_ABORT, deserializeError, runJob, SLOT_SIZE, SLOTS, type FromWorker, type JobConfig, type ToWorker } from './extract-core.js';
import type { IdMaps } from './idmap.js';
import type { WhiteoutMode, WriterStats } from './writer.js';

export type { WhiteoutMode, WriterStats } from './writer.js';

export interface ExtractLimits {
  /** largest PAX extended header / GNU long name entry; default 1 MiB */
  maxPaxHeaderBytes?: number;
  /** most entries (meta headers not counted); default unlimited */
  maxEntries?: number;
  /** most uncompressed input bytes; default unlimited */
  maxTotalBytes?: number;
  /** longest entry name or link name in bytes; default 4096 (PATH_MAX) */
  maxNameBytes?: number;
}

export interface ExtractProgress {
  entries: number;
  bytes: number;
}

export interface ExtractOptions {
  /** an existing directory; nothing outside it is ever created, modified or linked */
  dest: string;
  /**
   * - overlay: `.wh.x` → char device 0/0 `x`; `.wh..wh..opq` → trusted.overlay.opaque=y on its dir
   *   (a self-contained overlayfs lower layer);
   * - apply: delete the whiteout's target / empty the opaque dir's pre-existing content
   *   (applying a layer onto a merged tree);
   * - keep: write `.wh.*` entries as they are (plain empty files), like DUCC.
   */
  whiteouts: WhiteoutMode;
  /** userns remap (container → host ids); ids outside the maps are refused */
  idMap?: IdMaps;
  /** chown to the tar's (mapped) uid/gid; default: true when running as root */
  preserveOwnership?: boolean;
  limits?: ExtractLimits;
  onProgress?: (p: ExtractProgress) => void;
  signal?: AbortSignal;
  /** where parsing and fs calls run; default 'worker' */
  thread?: 'worker' | 'inline';
}

export interface ExtractResult extends WriterStats {
  /** uncompressed bytes read (the whole input, to EOF) */
  bytes: number;
  /** "sha256:<hex>" of the whole input */
  diffId: string;
}

const BATCH = 1 << 20;
const FLUSH_MS = 20;

export async function extractLayer(input: NodeJS.ReadableStream | Readable, opts: ExtractOptions): Promise<ExtractResult> {
  const readable = input instanceof Readable ? input : new Readable().wrap(input);
  return extract({ kind: 'stream', r: readable }, opts);
}

/**
 * extractLayer for a tar in a file: the file is read straight into the
 * buffers handed to the worker (no stream, no copy), which is faster.
 */
export async function extractLayerFile(file: string, opts: ExtractOptions): Promise<ExtractResult> {
  return extract({ kind: 'file', path: file }, opts);
}

async function extract(src: Source, opts: ExtractOptions): Promise<ExtractResult> {
  if (!['overlay', 'apply', 'keep'].includes(opts.whiteouts)) {
    throw new InvalidArgumentError(`extractLayer: whiteouts must be overlay, apply or keep, not ${String(opts.whiteouts)}`);
  }
  opts.signal?.throwIfAborted();
  let dest: string;
  try {
    dest = await fsp.realpath(opts.dest);
    if (!(await fsp.stat(dest)).isDirectory()) throw new Error('not a directory');
  } catch (e) {
    throw new InvalidArgumentError(`extractLayer: destination ${opts.dest} is not an existing directory (${(e as Error).message})`);
  }
  const isRoot = process.geteuid?.() === 0;
  const limits = opts.limits ?? {};
  const cfg: JobConfig = {
    dest,
    whiteouts: opts.whiteouts,
    idMap: opts.idMap,
    preserveOwnership: opts.preserveOwnership ?? isRoot,
    umask: currentUmask(),
    maxNameBytes: limits.maxNameBytes ?? 4096,
    maxEntries: limits.maxEntries ?? Infinity,
    maxPaxHeaderBytes: limits.maxPaxHeaderBytes ?? 1024 * 1024,
    maxTotalBytes: limits.maxTotalBytes ?? Infinity,
  };
  if (opts.thread === 'inline') return runInline(src, cfg, opts);
  return src.kind === 'stream' ? runStreamInWorker(src.r, cfg, opts) : runFileInWorker(src.path, cfg, opts);
}

/** process.umask() without changing it (reading it is deprecated without an argument). */
function currentUmask(): number {
  try {
    const m = /^Umask:\s*([0-7]+)/m.exec(fs.readFileSync('/proc/self/status', 'latin1'));
    if (m) return parseInt(m[1]!, 8);
  } catch {
    // not Linux /proc: fall through
  }
  const u = process.umask(0o022);
  process.umask(u);
  return u;
}

// ------------------------------------------------------------------ pump

/**
 * Feed `onChunk` every chunk of `r` until its end. When onChunk returns a
 * promise, reading pauses until it settles. On failure (or `stop()`), the
 * stream is left paused with our listeners removed.
 */
function pump(r: Readable, onChunk: (c: Buffer) => void | Promise<void>, signal?: AbortSignal): { done: Promise<void>; stop: (e: unknown) => void } {
  let stop!: (e: unknown) => void;
  const done = new Promise<void>((resolve, reject) => {
    let finished = false;
    /** the promise of a chunk still being handed on */
    let pending: Promise<void> | null = null;
    const cleanup = (): void => {
      finished = true;
      r.off('data', onData);
      r.off('end', onEnd);
      r.off('error', onError);
      r.off('close', onClose);
      signal?.removeEventListener('abort', onAbort);
      r.pause();
    };
    const fail = (e: unknown): void => {
      if (finished) return;
      cleanup();
      reject(e);
    };
    stop = fail;
    const onData = (c: Buffer | string): void => {
      if (finished) return;
      try {
        const res = onChunk(typeof c === 'string' ? Buffer.from(c) : c);
        if (res) {
          r.pause();
          const mine = res.then(
            () => {
              if (pending === mine) pending = null;
              if (!finished) r.resume();
            },
            fail,
          );
          pending = mine;
        }
      } catch (e) {
        fail(e);
      }
    };
    let sawEnd = false;
    const onEnd = (): void => {
      if (finished) return;
      sawEnd = true;
      // 'end' can come while the last chunk is still being handed on (read() saw EOF)
      if (pending) {
        void pending.then(onEnd);
        return;
      }
      cleanup();
      resolve();
    };
    const onError = (e: Error): void => fail(e);
    const onClose = (): void => {
      if (!sawEnd) fail(new InvalidArgumentError('tar input closed before its end', 'CVMFS_THIN_INPUT_CLOSED'));
    };
    const onAbort = (): void => fail(signal!.reason ?? new DOMException('aborted', 'AbortError'));
    if (r.readableEnded) {
      // already consumed to its end: nothing (more) to read
      finished = true;
      resolve();
      return;
    }
    if (r.destroyed) {
      finished = true;
      reject(new InvalidArgumentError('tar input stream is already destroyed', 'CVMFS_THIN_INPUT_CLOSED'));
      return;
    }
    r.on('data', onData);
    r.once('end', onEnd);
    r.once('error', onError);
    r.once('close', onClose);
    signal?.addEventListener('abort', onAbort, { once: true });
    r.resume();
  });
  return { done, stop };
}


// ------------------------------------------------------------------ inline

async function runInline(src: Source, cfg: JobConfig, opts: ExtractOptions): Promise<ExtractResult> {
  let bytes = 0;
  let result: Extract<FromWorker, { t: 'done' }> | null = null;
  let error: Error | null = null;
  const job = runJob(
    cfg,
    (m) => {
      if (m.t === 'error') error = deserializeError(m.err);
      else if (m.t === 'done') result = m;
    },
    true,
  );
  if (error) throw error;
  const onChunk = (c: Buffer): void => {
    bytes += c.length;
    job.push(c, c.length);
    if (error) throw error;
    opts.onProgress?.({ entries: job.entries, bytes });
  };
  if (src.kind === 'stream') {
    await pump(src.r, onChunk, opts.signal).done;
  } else {
    const fh = await fsp.open(src.path, 'r');
    try {
      const buf = Buffer.allocUnsafeSlow(BATCH);
      for (;;) {
        opts.signal?.throwIfAborted();
        const { bytesRead } = await fh.read(buf, 0, BATCH, null);
        if (bytesRead === 0) break;
        onChunk(buf.subarray(0, bytesRead));
      }
    } finally {
      await fh.close();
    }
  }
  job.end();
  if (error) throw error;
  const r = result as Extract<FromWorker, { t: 'done' }> | null;
  return { ...r!.stats, bytes: r!.bytes, diffId: r!.diffId! };
}

// ------------------------------------------------------------------ worker

interface PooledWorker {
  w: Worker;
  idleTimer?: NodeJS.Timeout;
}

const pool: PooledWorker[] = [];
const POOL_MAX = 2;
const IDLE_MS = 15_000;

function workerSource(): { url: URL; eval?: string } {
  const here = import.meta.url;
  if (here.endsWith('.ts')) {
    // running from TypeScript sources (tsx, vitest): the worker needs tsx's loader too
    const url = new URL('./extract-worker.ts', here);
    // the ESM build of tsx's API (its CJS build registers a wrong hook path)
    const api = pathToFileURL(createRequire(here).resolve('tsx/esm/api').replace(/\.cjs$/, '.mjs')).href;
    const code = `import(${JSON.stringify(api)}).then((m) => { (m.register ?? m.default.register)(); return import(${JSON.stringify(url.href)}); });`;
    return { url, eval: code };
  }
  return { url: new URL('./extract-worker.js', here) };
}

function takeWorker(): PooledWorker {
  const pw = pool.pop();
  if (pw) {
    if (pw.idleTimer) clearTimeout(pw.idleTimer);
    pw.w.ref();
    return pw;
  }
  const src = workerSource();
  const w = src.eval ? new Worker(src.eval, { eval: true }) : new Worker(src.url);
  return { w };
}

function releaseWorker(pw: PooledWorker): void {
  pw.w.removeAllListeners('message');
  pw.w.removeAllListeners('error');
  pw.w.removeAllListeners('exit');
  if (pool.length >= POOL_MAX) {
    void pw.w.terminate();
    return;
  }
  pw.w.unref();
  pw.w.on('error', () => undefined);
  pw.w.once('exit', () => {
    const i = pool.indexOf(pw);
    if (i >= 0) pool.splice(i, 1);
  });
  pw.idleTimer = setTimeout(() => {
    const i = pool.indexOf(pw);
    if (i >= 0) pool.splice(i, 1);
    void pw.w.terminate();
  }, IDLE_MS);
  pw.idleTimer.unref();
  pool.push(pw);
}

/** Where the bytes come from: a stream (copied into batches) or a file (read by the worker). */
type Source = { kind: 'stream'; r: Readable } | { kind: 'file'; path: string };

/** Common plumbing of one job in a pooled worker. */
class WorkerJob {
  failed: Error | null = null;
  reusable = true;
  /** the failure was reported by the worker, which is then idle again */
  private workerReported = false;
  readonly done: Promise<Extract<FromWorker, { t: 'done' }>>;
  private resolveDone!: (m: Extract<FromWorker, { t: 'done' }>) => void;
  private rejectDone!: (e: Error) => void;
  /** called once on failure, to stop the feeder */
  onFail: ((e: Error) => void) | null = null;
  readonly pw: PooledWorker;

  constructor(
    onMessage: (m: Exclude<FromWorker, { t: 'done' } | { t: 'error' }>) => void,
    signal: AbortSignal | undefined,
  ) {
    this.pw = takeWorker();
    const w = this.pw.w;
    this.done = new Promise((res, rej) => {
      this.resolveDone = res;
      this.rejectDone = rej;
    });
    this.done.catch(() => undefined);
    w.on('message', (m: FromWorker) => {
      if (m.t === 'done') this.resolveDone(m);
      else if (m.t === 'error') {
        if (!this.failed) this.workerReported = true;
        this.fail(deserializeError(m.err));
      }
      else if (!this.failed) onMessage(m);
    });
    w.on('error', (e) => {
      this.reusable = false;
      this.fail(e);
    });
    w.on('exit', (code) => {
      this.reusable = false;
      this.fail(new Error(`tar extraction worker exited unexpectedly (code ${code})`));
    });
    if (signal) {
      const onAbort = (): void => this.fail(signal.reason instanceof Error ? signal.reason : new DOMException('aborted', 'AbortError'));
      signal.addEventListener('abort', onAbort, { once: true });
      void this.done.finally(() => signal.removeEventListener('abort', onAbort)).catch(() => undefined);
    }
  }

  post(m: ToWorker, transfer?: ArrayBuffer[]): void {
    this.pw.w.postMessage(m, transfer);
  }

  fail(e: Error): void {
    if (this.failed) return;
    this.failed = e;
    this.onFail?.(e);
    this.rejectDone(e);
  }

  /**
   * Return the worker to the pool after a completed job or one it refused
   * itself (it is idle then; data still queued for the failed job is
   * ignored), else end it: it may be in the middle of the job.
   */
  release(): void {
    if (this.reusable && (this.failed === null || this.workerReported)) {
      releaseWorker(this.pw);
    } else {
      this.pw.w.removeAllListeners();
      void this.pw.w.terminate();
    }
  }
}

/**
 * Stream mode, three threads: this one copies the input into a ring of
 * shared 1 MiB slots; a writer worker parses and writes each slot while a
 * hasher worker computes the diffId from the same memory. A slot is reused
 * once both released it; reading pauses while the ring is full.
 */
async function runStreamInWorker(r: Readable, cfg: JobConfig, opts: ExtractOptions): Promise<ExtractResult> {
  const data = new SharedArrayBuffer(SLOTS * SLOT_SIZE);
  const ctlBuf = new SharedArrayBuffer(4 * (SLOTS + 1));
  const ctl = new Int32Array(ctlBuf);
  const mem = Buffer.from(data);
  let slot = 0;
  let fill = 0;
  let slotReady = false;
  let flushTimer: NodeJS.Timeout | undefined;
  let acked = 0;

  const writer = new WorkerJob((m) => {
    if (m.t !== 'ack') return;
    acked += m.bytes;
    opts.onProgress?.({ entries: m.entries, bytes: acked });
  }, opts.signal);
  let resolveDigest!: (d: { diffId: string; bytes: number }) => void;
  const digest = new Promise<{ diffId: string; bytes: number }>((res) => {
    resolveDigest = res;
  });
  const hasher = new WorkerJob((m) => {
    if (m.t === 'digest') resolveDigest(m);
  }, undefined);
  // a failing hasher fails the job
  hasher.onFail = (e) => writer.fail(e);
  writer.post({ t: 'stream', cfg, data, ctl: ctlBuf });
  hasher.post({ t: 'hash', data, ctl: ctlBuf });

  const publish = (): void => {
    if (flushTimer) {
      clearTimeout(flushTimer);
      flushTimer = undefined;
    }
    if (!slotReady || fill === 0 || writer.failed) return;
    Atomics.store(ctl, slot, 2);
    writer.post({ t: 'slot', slot, len: fill });
    hasher.post({ t: 'hslot', slot, len: fill });
    slot = (slot + 1) % SLOTS;
    slotReady = false;
    fill = 0;
  };

  const waitFree = async (s: number): Promise<void> => {
    for (;;) {
      const v = Atomics.load(ctl, s);
      if (v === 0 || writer.failed) return;
      const w = waitAsync(ctl, s, v);
      if (w.async) await w.value;
    }
  };

  const onChunk = (c: Buffer): Promise<void> | undefined => {
    if (writer.failed) throw writer.failed;
    let off = 0;
    while (off < c.length) {
      if (!slotReady) {
        if (Atomics.load(ctl, slot) !== 0) {
          // the ring is full: wait for the slot, then go on with the rest of this chunk
          const rest = c.subarray(off);
          return waitFree(slot).then(() => {
            const more = onChunk(rest);
            return more;
          });
        }
        slotReady = true;
        fill = 0;
      }
      const n = Math.min(SLOT_SIZE - fill, c.length - off);
      c.copy(mem, slot * SLOT_SIZE + fill, off, off + n);
      fill += n;
      off += n;
      if (fill === SLOT_SIZE) publish();
    }
    // a slow producer: do not sit on a partial slot
    if (fill > 0 && !flushTimer) flushTimer = setTimeout(publish, FLUSH_MS);
    return undefined;
  };

  const p = pump(r, onChunk);
  writer.onFail = (e) => p.stop(e);
  try {
    await p.done;
    publish();
    writer.post({ t: 'end' });
    hasher.post({ t: 'hend' });
    const [res, d] = await Promise.all([writer.done, Promise.race([digest, hasher.done.then(() => never())])]);
    if (d.bytes !== res.bytes) throw new Error(`internal: hashed ${d.bytes} of ${res.bytes} bytes`);
    return { ...res.stats, bytes: res.bytes, diffId: d.diffId };
  } catch (e) {
    writer.fail(e as Error);
    throw writer.failed ?? e;
  } finally {
    if (flushTimer) clearTimeout(flushTimer);
    writer.release();
    hasher.release();
  }
}

/** Atomics.waitAsync (in Node ≥ 16; not in the ES2023 lib typings). */
const waitAsync = (Atomics as unknown as {
  waitAsync(a: Int32Array, i: number, v: number): { async: false; value: string } | { async: true; value: Promise<string> };
}).waitAsync;

function never(): never {
  throw new Error('internal: hasher finished without a digest');
}

/**
 * File mode: the worker reads the file into shared memory slots and writes
 * it out, while this thread hashes the same slots in parallel (the hash
 * costs about as much as the writes of a byte-heavy layer).
 */
async function runFileInWorker(file: string, cfg: JobConfig, opts: ExtractOptions): Promise<ExtractResult> {
  await fsp.access(file, fs.constants.R_OK);
  const data = new SharedArrayBuffer(SLOTS * SLOT_SIZE);
  const ctlBuf = new SharedArrayBuffer(4 * (SLOTS + 1));
  const ctl = new Int32Array(ctlBuf);
  const hash = createHash('sha256');
  let hashed = 0;
  const job = new WorkerJob((m) => {
    if (m.t !== 'hash') return;
    hash.update(new Uint8Array(data, m.slot * SLOT_SIZE, m.len));
    hashed += m.len;
    Atomics.store(ctl, m.slot, 0);
    Atomics.notify(ctl, m.slot);
    opts.onProgress?.({ entries: m.entries, bytes: hashed });
  }, opts.signal);
  job.onFail = () => {
    // unblock the worker wherever it waits; it then stops
    Atomics.store(ctl, CTL_ABORT, 1);
    for (let i = 0; i < SLOTS; i++) {
      Atomics.store(ctl, i, 0);
      Atomics.notify(ctl, i);
    }
  };
  job.post({ t: 'file', cfg, path: file, data, ctl: ctlBuf });
  try {
    const res = await job.done;
    if (hashed !== res.bytes) throw new Error(`internal: hashed ${hashed} of ${res.bytes} bytes`);
    return { ...res.stats, bytes: res.bytes, diffId: `sha256:${hash.digest('hex')}` };
  } catch (e) {
    job.fail(e as Error);
    throw job.failed ?? e;
  } finally {
    job.release();
  }
}

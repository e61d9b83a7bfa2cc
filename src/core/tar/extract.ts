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
 * The ring protocol and the job runner are in extract-core.ts, the worker
 * pool in extract-pool.ts, the reading of input streams in extract-pump.ts.
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
import { Readable } from 'node:stream';
import { InvalidArgumentError } from '../errors/errors.js';
import { CTL_ABORT, deserializeError, runJob, SLOT_SIZE, SLOTS, type FromWorker, type JobConfig } from './extract-core.js';
import { WorkerJob } from './extract-pool.js';
import { pump } from './extract-pump.js';
import type { IdMaps } from '../util/idmap.js';
import type { WhiteoutMode, WriterStats } from './writer.js';

export type { WhiteoutMode } from './writer.js';

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
   * - keep: write `.wh.*` entries as they are (plain empty files), like DUCC;
   * - record: write neither (nothing a CVMFS publish interprets or drops) and return
   *   the deletions, opaque directories and xattrs in `record` (a layer's record).
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

/**
 * extractLayer for a tar handed over chunk by chunk, on this thread
 * (`thread: 'inline'` only): each chunk is used before the next is asked
 * for, so the source may fill one buffer again and again.
 */
export async function extractLayerChunks(chunks: AsyncIterable<Buffer>, opts: ExtractOptions): Promise<ExtractResult> {
  if (opts.thread !== 'inline') throw new InvalidArgumentError("extractLayerChunks: only with thread: 'inline'");
  return extract({ kind: 'chunks', it: chunks }, opts);
}

async function extract(src: Source, opts: ExtractOptions): Promise<ExtractResult> {
  if (!['overlay', 'apply', 'keep', 'record'].includes(opts.whiteouts)) {
    throw new InvalidArgumentError(`extractLayer: whiteouts must be overlay, apply, keep or record, not ${String(opts.whiteouts)}`);
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
  if (src.kind === 'chunks') throw new InvalidArgumentError('extractLayer: chunks are extracted inline only');
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

/** Where the bytes come from: a stream (copied into batches), a file (read by the worker), or chunks (inline). */
type Source = { kind: 'stream'; r: Readable } | { kind: 'file'; path: string } | { kind: 'chunks'; it: AsyncIterable<Buffer> };

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
  } else if (src.kind === 'chunks') {
    for await (const c of src.it) {
      opts.signal?.throwIfAborted();
      onChunk(c);
    }
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
const waitAsync = (
  Atomics as unknown as {
    waitAsync(a: Int32Array, i: number, v: number): { async: false; value: string } | { async: true; value: Promise<string> };
  }
).waitAsync;

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

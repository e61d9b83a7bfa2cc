/**
 * One extraction job (parser + writer), shared by the worker thread and the
 * inline mode, plus the error (de)serialisation across the thread boundary.
 *
 * Who hashes (diffId): in stream mode the job itself (the calling thread is
 * busy enough with the stream); in file mode the calling thread, in parallel
 * with the worker's writes, reading the same shared memory.
 */
import { createHash, type Hash } from 'node:crypto';
import fs from 'node:fs';
import { type ErrorCode, type ErrorKind, ThinError } from '../errors/errors.js';
import { TarIoError, unsafe, UnsafeTarError, type UnsafeTarReason } from './errors.js';
import { TarParser } from './parser.js';
import { LayerWriter, type WriterOptions, type WriterStats } from './writer.js';

/** What a worker needs to extract one layer: the writer's options and the parser's limits. */
export interface JobConfig extends WriterOptions {
  maxPaxHeaderBytes: number;
  maxTotalBytes: number;
}

/** File mode: slots of shared memory the worker reads the file into. */
export const SLOTS = 8;
export const SLOT_SIZE = 1 << 20;
/** index in the control array of the "stop now" flag */
export const CTL_ABORT = SLOTS;

/**
 * Messages to a worker. Stream mode uses two workers on one ring of shared
 * slots: a writer ('stream', 'slot'…, 'end') and a hasher ('hash',
 * 'hslot'…, 'hend'); each decrements ctl[slot] when done with a slot.
 * File mode: one worker ('file') that reads the file itself.
 */
export type ToWorker =
  | { t: 'stream'; cfg: JobConfig; data: SharedArrayBuffer; ctl: SharedArrayBuffer }
  | { t: 'slot'; slot: number; len: number }
  | { t: 'end' }
  | { t: 'hash'; data: SharedArrayBuffer; ctl: SharedArrayBuffer }
  | { t: 'hslot'; slot: number; len: number }
  | { t: 'hend' }
  | { t: 'file'; cfg: JobConfig; path: string; data: SharedArrayBuffer; ctl: SharedArrayBuffer };

export type SerializedError =
  | { cls: 'UnsafeTarError'; entry: string; reason: UnsafeTarReason; message: string }
  | { cls: 'TarIoError'; entry: string; errno: string; syscall: string; message: string; causeMessage: string }
  | { cls: 'ThinError'; message: string; code: ErrorCode; kind: ErrorKind }
  | { cls: 'Error'; message: string; code?: string; stack?: string };

export type FromWorker =
  | { t: 'ack'; bytes: number; entries: number }
  | { t: 'digest'; diffId: string; bytes: number }
  /** file mode: slot `slot` holds bytes [0, len) to hash, then set ctl[slot] = 0 */
  | { t: 'hash'; slot: number; len: number; entries: number }
  | { t: 'done'; stats: WriterStats; bytes: number; diffId?: string }
  | { t: 'error'; err: SerializedError };

export interface Job {
  /** Process chunk[0, len). Returns false once the job failed. */
  push(chunk: Buffer, len: number): boolean;
  end(): void;
  readonly entries: number;
}

/** A job fed chunk by chunk (stream mode, and inline). Hashes when `hashHere`. */
export function runJob(cfg: JobConfig, send: (m: FromWorker) => void, hashHere: boolean): Job {
  let failed = false;
  let writer: LayerWriter | undefined;
  let parser: TarParser | undefined;
  const hash: Hash | null = hashHere ? createHash('sha256') : null;
  let bytes = 0;
  const fail = (e: unknown): void => {
    failed = true;
    try {
      writer?.abort();
    } catch {
      // closing the fd failed too: the first error is what matters
    }
    send({ t: 'error', err: serializeError(e) });
  };
  try {
    writer = new LayerWriter(cfg);
    parser = new TarParser(writer, { maxPaxHeaderBytes: cfg.maxPaxHeaderBytes });
  } catch (e) {
    fail(e);
  }
  return {
    push(chunk, len) {
      if (failed) return false;
      try {
        const c = len === chunk.length ? chunk : chunk.subarray(0, len);
        bytes += len;
        if (bytes > cfg.maxTotalBytes) throw tooLarge(cfg.maxTotalBytes);
        hash?.update(c);
        parser!.push(c);
        return true;
      } catch (e) {
        fail(e);
        return false;
      }
    },
    get entries() {
      return writer?.stats.entries ?? 0;
    },
    end() {
      if (failed) return;
      try {
        parser!.end();
        writer!.finish();
        send({ t: 'done', stats: { ...writer!.stats }, bytes, ...(hash ? { diffId: `sha256:${hash.digest('hex')}` } : {}) });
      } catch (e) {
        fail(e);
      }
    },
  };
}

function tooLarge(max: number): UnsafeTarError {
  return unsafe('', 'too-large', `input exceeds the limit of ${max} bytes`);
}

/**
 * File mode, in the worker: read the file into the shared slots (sync), have
 * the calling thread hash each slot, and extract it meanwhile. A slot is
 * reused once the caller cleared its control word.
 */
export function runFileJob(m: Extract<ToWorker, { t: 'file' }>, send: (m: FromWorker) => void): void {
  const ctl = new Int32Array(m.ctl);
  let writer: LayerWriter | undefined;
  let fd = -1;
  try {
    writer = new LayerWriter(m.cfg);
    const parser = new TarParser(writer, { maxPaxHeaderBytes: m.cfg.maxPaxHeaderBytes });
    fd = fs.openSync(m.path, 'r');
    const data = new Uint8Array(m.data);
    let bytes = 0;
    for (let i = 0; ; i++) {
      const slot = i % SLOTS;
      for (;;) {
        if (Atomics.load(ctl, CTL_ABORT) !== 0) throw new Error('aborted');
        const v = Atomics.load(ctl, slot);
        if (v === 0) break;
        Atomics.wait(ctl, slot, v, 1000);
      }
      const n = fs.readSync(fd, data, slot * SLOT_SIZE, SLOT_SIZE, null);
      if (n === 0) break;
      bytes += n;
      if (bytes > m.cfg.maxTotalBytes) throw tooLarge(m.cfg.maxTotalBytes);
      Atomics.store(ctl, slot, 1);
      send({ t: 'hash', slot, len: n, entries: writer.stats.entries });
      parser.push(Buffer.from(m.data, slot * SLOT_SIZE, n));
    }
    parser.end();
    writer.finish();
    send({ t: 'done', stats: { ...writer.stats }, bytes });
  } catch (e) {
    try {
      writer?.abort();
    } catch {
      // the first error is what matters
    }
    send({ t: 'error', err: serializeError(e) });
  } finally {
    if (fd >= 0) fs.closeSync(fd);
  }
}

export function serializeError(e: unknown): SerializedError {
  if (e instanceof UnsafeTarError) return { cls: 'UnsafeTarError', entry: e.entry, reason: e.reason, message: e.message };
  if (e instanceof TarIoError) {
    const c = e.cause instanceof Error ? e.cause.message : '';
    return { cls: 'TarIoError', entry: e.entry, errno: e.errno, syscall: e.syscall, message: e.message, causeMessage: c };
  }
  if (ThinError.is(e)) return { cls: 'ThinError', message: e.message, code: e.code, kind: e.kind };
  const err = e instanceof Error ? e : new Error(String(e));
  const code = (err as { code?: unknown }).code;
  return { cls: 'Error', message: err.message, ...(typeof code === 'string' ? { code } : {}), ...(err.stack ? { stack: err.stack } : {}) };
}

export function deserializeError(s: SerializedError): Error {
  switch (s.cls) {
    case 'UnsafeTarError': {
      const e = new UnsafeTarError(s.entry, s.reason, '');
      e.message = s.message;
      return e;
    }
    case 'TarIoError': {
      const cause = Object.assign(new Error(s.causeMessage), { code: s.errno, syscall: s.syscall });
      const e = new TarIoError(s.entry, s.errno, s.syscall, '', { cause });
      e.message = s.message;
      return e;
    }
    case 'ThinError':
      // same code and kind: a corrupt stream stays invalid-argument across the worker boundary
      return new ThinError(s.kind, s.code, s.message);
    case 'Error': {
      const e = new Error(s.message);
      if (s.code) Object.assign(e, { code: s.code });
      if (s.stack) e.stack = s.stack;
      return e;
    }
  }
}

/**
 * Reading a tar input stream for extractLayer: `pump` hands every chunk on,
 * pausing while the consumer is busy, and leaves the stream paused with its
 * listeners removed on failure, abort or stop (the caller owns the stream).
 */
import type { Readable } from 'node:stream';
import { InvalidArgumentError } from '../errors/errors.js';

/**
 * Feed `onChunk` every chunk of `r` until its end. When onChunk returns a
 * promise, reading pauses until it settles. On failure (or `stop()`), the
 * stream is left paused with our listeners removed.
 */
export function pump(r: Readable, onChunk: (c: Buffer) => void | Promise<void>, signal?: AbortSignal): { done: Promise<void>; stop: (e: unknown) => void } {
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
          const mine = res.then(() => {
            if (pending === mine) pending = null;
            if (!finished) r.resume();
          }, fail);
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

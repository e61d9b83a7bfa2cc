/**
 * Prefetch of an access profile (core/thin/profile.ts): the files a start of
 * the image read, read ahead from CVMFS so that the container finds them in
 * the client's cache. Reads go through the host's probe helper (a stalled
 * client holds the helper's threads, never the daemon's), a bounded number
 * at once, each file read through one fixed buffer (memory does not grow
 * with the files), stopping at `maxBytes` / `maxFiles` or when aborted. It
 * never fails: what it could not read is counted.
 */
import type { FsProbeOp, Host } from '../host/host.js';

/** Reads one probe holds (the helper runs up to 8 of them at once). */
const CHUNK = 16;
/**
 * A CVMFS client fetches a whole file when it is opened, unless the file is
 * chunked (files above the minimum chunk size, 4 MiB by default): smaller
 * files are opened and one byte read, larger ones read through.
 */
const WHOLE_ON_OPEN = 4 << 20;

export interface PrefetchOptions {
  /** Files read at once (default 16). */
  concurrency?: number | undefined;
  maxBytes?: number | undefined;
  maxFiles?: number | undefined;
  signal?: AbortSignal | undefined;
  /** A batch of reads that takes longer ends the prefetch (a stalled client; default 30 s). */
  stallMs?: number | undefined;
}

export interface PrefetchResult {
  /** Files read (brought into the client's cache). */
  files: number;
  /** Their sizes, as the profile gives them. */
  bytes: number;
  /** Listed files not found (the profile is older than the image, or the path is not a file). */
  missing: number;
  /** Other errors (I/O, a dead client). */
  failed: number;
  ms: number;
  /** Why it stopped before the end, if it did. */
  stopped?: 'max-bytes' | 'max-files' | 'aborted' | 'stalled' | undefined;
}

const PREFETCH_DEFAULTS = { concurrency: 16, maxBytes: 2 * 1024 ** 3, maxFiles: 20_000 } as const;

/** Read `files` (absolute paths, with their expected sizes) ahead. */
export async function prefetchFiles(host: Host, files: readonly { path: string; size: number }[], o: PrefetchOptions = {}): Promise<PrefetchResult> {
  const t0 = performance.now();
  const maxBytes = o.maxBytes ?? PREFETCH_DEFAULTS.maxBytes;
  const maxFiles = o.maxFiles ?? PREFETCH_DEFAULTS.maxFiles;
  const res: PrefetchResult = { files: 0, bytes: 0, missing: 0, failed: 0, ms: 0 };
  // what fits the budgets, decided up front from the profile's sizes (reads are capped at them too)
  const todo: FsProbeOp[] = [];
  const sizes: number[] = [];
  let planned = 0;
  for (const f of files) {
    if (todo.length >= maxFiles) {
      res.stopped = 'max-files';
      break;
    }
    if (planned + f.size > maxBytes) {
      res.stopped = 'max-bytes';
      break;
    }
    planned += f.size;
    todo.push({ op: 'read', path: f.path, max: f.size <= WHOLE_ON_OPEN ? 1 : f.size + (1 << 16) });
    sizes.push(f.size);
  }
  const inFlight = Math.max(1, Math.ceil((o.concurrency ?? PREFETCH_DEFAULTS.concurrency) / 8));
  let next = 0;
  const worker = async () => {
    while (next < todo.length && !o.signal?.aborted) {
      const at = next;
      const chunk = todo.slice(at, at + CHUNK);
      next += chunk.length;
      const ctl = new AbortController();
      const stop = () => ctl.abort();
      o.signal?.addEventListener('abort', stop, { once: true });
      let timer: NodeJS.Timeout | undefined;
      let answers;
      try {
        answers = await Promise.race([
          host.probeFs(chunk, ctl.signal),
          new Promise<'stalled'>((r) => {
            timer = setTimeout(() => r('stalled'), o.stallMs ?? 30_000);
          }),
        ]);
      } catch {
        answers = null;
      } finally {
        clearTimeout(timer);
        o.signal?.removeEventListener('abort', stop);
      }
      if (answers === 'stalled') {
        // the helper's threads stay with the stalled reads (abandoned: it is replaced if too many)
        ctl.abort();
        res.failed += chunk.length;
        res.stopped = 'stalled';
        next = todo.length;
        return;
      }
      if (answers === null) {
        res.failed += chunk.length;
        continue;
      }
      for (const [i, a] of answers.entries()) {
        if (a.ok) {
          res.files++;
          res.bytes += sizes[at + i]!;
        } else if (a.code === 'ENOENT' || a.code === 'ENOTDIR' || a.code === 'EINVAL' || a.code === 'ELOOP') res.missing++;
        else res.failed++;
      }
    }
  };
  await Promise.all(Array.from({ length: inFlight }, worker));
  if (o.signal?.aborted && res.stopped === undefined) res.stopped = 'aborted';
  res.ms = Math.round(performance.now() - t0);
  return res;
}

/**
 * Hot layers: an image's profile pack (convert/profile-pack.ts, SPEC §8) —
 * the files its containers read first, exactly as they see them — unpacked
 * into a local directory that becomes the topmost lower of the thin image
 * when it is committed (the pull). Its containers then read those files from
 * local disk: on a cold CVMFS client one chunked object arrives instead of
 * hundreds of files fetched one by one (a client here fetches ~400 files/s).
 *
 * A pull waits for the hot layer at most `waitMs` (the fetch goes on, for the
 * next pull of the same layers); a missing, broken or oversized pack only
 * costs the hot layer. The pack is checked before use — its size and sha256
 * as the profile names them, then unpacked by the layer extractor (nothing
 * outside its directory, ids and modes as in the tar) into a new directory
 * renamed into place, refused if it holds anything but files and
 * directories — and lives under `masks/hot-<stack id>`, so it is removed with
 * the masks no snapshot uses.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import type { Host } from '../host/host.js';
import { DEFAULT_CVMFS_TIMEOUT_MS, probeText } from '../host/probe.js';
import { type AccessProfile, packPath, parseProfile, profilePath, stackId } from '../thin/profile.js';

export interface HotOptions {
  /** How long a pull waits for the hot layer (0: never; the fetch still goes on). */
  waitMs: number;
  /** Packs larger than this are not fetched (local disk per image). */
  maxBytes: number;
  /** Deadline of the profile's read (cvmfs-timeout). */
  readTimeoutMs: number;
}

const HOT_DEFAULTS = { waitMs: 1500, maxBytes: 512 << 20 } as const;
/** The hot-layer options of a daemon's LayerStack: none without prefetch or with a zero wait. */
export function hotOptions(
  o: { prefetch?: boolean | undefined; hotWaitMs?: number | undefined } | undefined,
  cvmfsTimeoutMs: number | undefined,
): HotOptions | undefined {
  const waitMs = o?.hotWaitMs ?? HOT_DEFAULTS.waitMs;
  if (o?.prefetch === false || waitMs <= 0) return undefined;
  return { waitMs, maxBytes: HOT_DEFAULTS.maxBytes, readTimeoutMs: cvmfsTimeoutMs ?? DEFAULT_CVMFS_TIMEOUT_MS };
}

/** A fetch that fails is not tried again for the same stack before this. */
const RETRY_MS = 10 * 60_000;
/** A pack copy that takes longer is abandoned (a stalled client). */
const COPY_MS = 120_000;

export interface HotResult {
  /** The hot layer's directory, when ready in time. */
  dir: string | null;
  /** Why not, or how it came (for the start's log and trace). */
  why: string;
  ms: number;
  /** It failed before any pack was fetched (no profile, no pack): asked again at the next pull. */
  cheap?: boolean | undefined;
}

export class HotLayers {
  private readonly jobs = new Map<string, { at: number; done: Promise<HotResult> }>();

  constructor(
    /** The masks directory: `hot-<stack id>` lives there. */
    private readonly dir: string,
    private readonly host: Host,
    private readonly log: Logger,
    private readonly o: HotOptions,
  ) {}

  /** The hot layer of the stack `layers` (bottom first) of the repository mounted at `mp`, if it is ready within the wait. */
  async forStack(mp: string, layers: readonly string[], signal?: AbortSignal): Promise<HotResult> {
    const t0 = performance.now();
    const id = stackId(layers);
    const final = path.join(this.dir, `hot-${id}`);
    if (await isDir(final)) return { dir: final, why: 'local', ms: 0 };
    // a fetch running, or one that failed lately; a finished one is the directory itself (which Cleanup may remove)
    let job = this.jobs.get(id);
    if (!job || Date.now() - job.at > RETRY_MS) {
      const done = this.fetch(mp, layers, final, signal)
        .catch((e: unknown): HotResult => ({ dir: null, why: `failed: ${(e as Error).message}`, ms: 0 }))
        .then((r) => {
          // kept: a pack that failed (not fetched again for a while); a profile without one is read again at the next pull
          if (r.dir || r.cheap) this.jobs.delete(id);
          return r;
        });
      job = { at: Date.now(), done };
      this.jobs.set(id, job);
    }
    let timer: NodeJS.Timeout | undefined;
    const r = await Promise.race([
      job.done,
      new Promise<HotResult>((res) => (timer = setTimeout(() => res({ dir: null, why: `not ready within ${this.o.waitMs} ms`, ms: 0 }), this.o.waitMs))),
    ]);
    clearTimeout(timer);
    return { ...r, ms: Math.round(performance.now() - t0) };
  }

  private async fetch(mp: string, layers: readonly string[], final: string, signal?: AbortSignal): Promise<HotResult> {
    const t0 = performance.now();
    const profile = await this.profile(path.join(mp, profilePath(layers)), layers);
    if (typeof profile === 'string') return { dir: null, why: profile, ms: 0, cheap: true };
    const pack = profile.pack!;
    if (pack.bytes > this.o.maxBytes) return { dir: null, why: `pack of ${pack.bytes} bytes is over the node's ${this.o.maxBytes}`, ms: 0 };
    const tag = `${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
    let [t1, t2] = [t0, t0];
    const file = `${final}.pack-${tag}`;
    const tmp = `${final}.tmp-${tag}`;
    try {
      const ctl = new AbortController();
      const stop = () => ctl.abort();
      signal?.addEventListener('abort', stop, { once: true });
      const timer = setTimeout(stop, COPY_MS);
      let a;
      try {
        t1 = performance.now();
        [a] = await this.host.probeFs([{ op: 'copy', path: path.join(mp, packPath(layers)), to: file, max: pack.bytes }], ctl.signal);
        t2 = performance.now();
      } finally {
        clearTimeout(timer);
        signal?.removeEventListener('abort', stop);
      }
      if (!a?.ok) return { dir: null, why: `pack not copied: ${a ? a.message : 'no answer'}`, ms: 0 };
      if (a.bytes !== pack.bytes || a.sha256 !== pack.sha256)
        return { dir: null, why: `pack is not the one the profile names (${a.bytes} bytes, sha256 ${a.sha256})`, ms: 0 };
      await fsp.mkdir(tmp, { mode: 0o755 });
      // loaded on the first pack only (daemons' idle memory)
      const { extractLayerFile } = await import('../tar/index.js');
      const st = await extractLayerFile(file, {
        dest: tmp,
        whiteouts: 'overlay',
        limits: { maxEntries: 2 * pack.files + 10_000, maxTotalBytes: pack.bytes },
        signal,
        // a few hundred files: a worker's start (~0.3 s on a fresh daemon) costs more than it saves
        thread: 'inline',
      });
      const odd = st.symlinks + st.hardlinks + st.devices + st.whiteouts + st.opaques;
      if (odd > 0 || st.files !== pack.files)
        return { dir: null, why: `pack holds ${st.files} files and ${odd} other entries (want ${pack.files} files only)`, ms: 0 };
      await fsp.rename(tmp, final);
      const ms = Math.round(performance.now() - t0);
      const [profileMs, copyMs] = [Math.round(t1 - t0), Math.round(t2 - t1)];
      this.log.info({ hot: final, files: st.files, bytes: pack.bytes, ms, profileMs, copyMs, unpackMs: ms - profileMs - copyMs }, 'hot layer ready');
      return { dir: final, why: 'pack', ms };
    } finally {
      await fsp.rm(file, { force: true });
      await fsp.rm(tmp, { recursive: true, force: true });
    }
  }

  /** The stack's profile in the repository, with a pack; else why not. */
  private async profile(file: string, layers: readonly string[]): Promise<AccessProfile | string> {
    const text = await probeText(this.host, file, this.o.readTimeoutMs);
    if (text === 'stalled') return `profile did not answer within ${this.o.readTimeoutMs} ms`;
    if (text === null) return 'no profile';
    let p: AccessProfile;
    try {
      p = parseProfile(text);
    } catch (e) {
      return `profile not valid: ${(e as Error).message}`;
    }
    if (p.layers.join() !== layers.join()) return 'profile is for other layers';
    if (!p.prefetch) return 'prefetch disabled for the image';
    return p.pack ? p : 'profile has no pack';
  }
}

const isDir = (p: string) =>
  fsp.stat(p).then(
    (s) => s.isDirectory(),
    () => false,
  );

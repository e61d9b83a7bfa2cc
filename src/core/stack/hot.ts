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
 * costs the hot layer. The probe helper copies the pack in pieces read at
 * once (a CVMFS client fetches the chunks of one file one after the other for
 * one reader), unpacked as they arrive by the layer extractor (nothing
 * outside its directory, ids and modes as in the tar) into a new directory,
 * renamed into place only if the pack had the profile's size, what was
 * unpacked hashes to its sha256 and it holds nothing but files and
 * directories; it lives under `masks/hot-<stack id>`, so it is removed with
 * the masks no snapshot uses. A node whose client already holds the
 * profile's files makes none (cacheHolds).
 */
import { constants, promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import { layerRootfs } from '../cvmfs/layout.js';
import type { FsProbeOp, Host } from '../host/host.js';
import { DEFAULT_CVMFS_TIMEOUT_MS, probeText } from '../host/probe.js';
import { type CvmfsCounters, cvmfsCounters } from './start-trace.js';
import { type AccessProfile, packPath, parseProfile, profilePath, stackId } from '../thin/profile.js';
import { cvmfsDev, ImageMounts, isImageMount, mountHotImage, probeImage } from './hot-image.js';

export interface HotOptions {
  /** How long a pull waits for the hot layer (0: never; the fetch still goes on). */
  waitMs: number;
  /** Packs larger than this are not fetched (local disk per image). */
  maxBytes: number;
  /** Deadline of the profile's read (cvmfs-timeout). */
  readTimeoutMs: number;
  /** Mount a profile's EROFS image when it has one (hot-image.ts); false: always unpack the pack. */
  image?: boolean | undefined;
}

const HOT_DEFAULTS = { waitMs: 1500, maxBytes: 512 << 20 } as const;
/** The hot-layer options of a daemon's LayerStack: none without prefetch or with a zero wait. */
export function hotOptions(
  o: { prefetch?: boolean | undefined; hotWaitMs?: number | undefined; hotImage?: boolean | undefined } | undefined,
  cvmfsTimeoutMs: number | undefined,
): HotOptions | undefined {
  const waitMs = o?.hotWaitMs ?? HOT_DEFAULTS.waitMs;
  if (o?.prefetch === false || waitMs <= 0) return undefined;
  return { waitMs, maxBytes: HOT_DEFAULTS.maxBytes, readTimeoutMs: cvmfsTimeoutMs ?? DEFAULT_CVMFS_TIMEOUT_MS, image: o?.hotImage !== false };
}

/** Profile files opened to see whether the client's cache holds them (hot layer or not). */
const SAMPLE = 8;
/** A pack is fetched in at most PIECES pieces, of at least PIECE_MIN bytes (CVMFS's smallest chunk). */
const PIECES = 4;
const PIECE_MIN = 4 << 20;
const piecesOf = (bytes: number) => Math.max(1, Math.min(PIECES, Math.ceil(bytes / PIECE_MIN)));
/** The growing pieces are read this much at a time, and polled this often when they have not grown. */
const GROW_CHUNK = 1 << 20;
const GROW_POLL_MS = 4;

/** A fetch that fails is not tried again for the same stack before this, nor a client whose cache held the files checked again. */
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
  /** Cleared when the kernel mounts no image from a file (then packs are unpacked). */
  private imageMounts: boolean;
  /** The images mounted here, and the client each reads through. */
  readonly images: ImageMounts;

  constructor(
    /** The masks directory: `hot-<stack id>` lives there. */
    private readonly dir: string,
    private readonly host: Host,
    private readonly log: Logger,
    private readonly o: HotOptions,
  ) {
    this.imageMounts = o.image !== false;
    this.images = new ImageMounts(host, log, dir);
  }

  /** The hot layer of the stack `layers` (bottom first) of the repository mounted at `mp`, if it is ready within the wait. */
  async forStack(mp: string, layers: readonly string[], signal?: AbortSignal): Promise<HotResult> {
    const t0 = performance.now();
    const id = stackId(layers);
    const final = path.join(this.dir, `hot-${id}`);
    if (await this.ready(mp, final)) return { dir: final, why: 'local', ms: 0 };
    // a fetch running, or one that failed lately; a finished one is the directory itself (which Cleanup may remove)
    let job = this.jobs.get(id);
    if (!job || Date.now() - job.at > RETRY_MS) {
      const done = this.fetch(mp, layers, final, signal)
        .catch((e: unknown): HotResult => ({ dir: null, why: `failed: ${(e as Error).message}`, ms: 0 }))
        .then((r) => {
          // kept: a pack that failed (not fetched again for a while) or a cache that held the files (not checked again);
          // a profile without a pack is read again at the next pull
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
    // the client's download counter, read beside the profile (the cache check's start: a
    // profile not in the cache makes it say no, as it would for any other download)
    const before = cvmfsCounters(this.host, mp, this.o.readTimeoutMs);
    // the image is probed beside the profile; when the client loaded catalogs meanwhile (the
    // profiles' own, or the image's layers': a client that never read this image's profile
    // since it was mounted — a cold one) the image's data is read ahead at once, before the
    // profile is in. A client that read the profile before has its catalog: the check decides.
    const probed = this.imageMounts ? probeImage(this.host, mp, layers, this.o.readTimeoutMs) : undefined;
    const early = probed?.then(async (p) => {
      const [b, mid] = [await before, p.head && (await cvmfsCounters(this.host, mp, this.o.readTimeoutMs))];
      if (!p.head || !b || !mid || mid.catalogs <= b.catalogs || p.head.dataBytes > this.o.maxBytes) return false;
      this.readAhead(p.data, p.head.dataBytes);
      return true;
    });
    const profile = await this.profile(path.join(mp, profilePath(layers)), layers);
    if (typeof profile === 'string') return { dir: null, why: profile, ms: 0, cheap: true };
    const pack = profile.pack!;
    if (pack.bytes > this.o.maxBytes) return { dir: null, why: `pack of ${pack.bytes} bytes is over the node's ${this.o.maxBytes}`, ms: 0 };
    const tp = performance.now();
    const cold = (await early) === true;
    // (when the image's head was read, the counters are read again: it may have been downloaded meanwhile)
    const since = (await probed)?.head ? cvmfsCounters(this.host, mp, this.o.readTimeoutMs) : before;
    // kept like a failure: not checked again for a while (a warm node's next pulls skip the profile and the check)
    if (!cold && (await this.cacheHolds(mp, profile, since))) return { dir: null, why: "the CVMFS client's cache holds the profile's files", ms: 0 };
    if (profile.image && probed && profile.image.data.bytes <= this.o.maxBytes) {
      const t1 = performance.now();
      const image = profile.image;
      const p = await probed;
      if (!cold && p.head?.uuid === image.uuid) this.readAhead(p.data, image.data.bytes);
      const r = await mountHotImage(this.host, this.log, p, image, final);
      const [profileMs, checkMs] = [Math.round(tp - t0), Math.round(t1 - tp)];
      if (r.dir !== null) {
        this.images.record(final, mp, r.dev);
        const ms = Math.round(performance.now() - t0);
        this.log.info(
          { hot: final, files: image.files, bytes: image.bytes + image.data.bytes, ms, profileMs, checkMs, mountMs: r.ms },
          'hot layer mounted (its image)',
        );
        return { dir: r.dir, why: 'image', ms };
      }
      if (r.unsupported) this.imageMounts = false;
      this.log.warn({ why: r.why, hot: final }, "hot layer: the profile's image is not used; its pack is unpacked");
    }
    const tag = `${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
    const t1 = performance.now();
    let t2 = t1;
    const file = `${final}.pack-${tag}`;
    const tmp = `${final}.tmp-${tag}`;
    const ctl = new AbortController();
    const stop = () => ctl.abort();
    signal?.addEventListener('abort', stop, { once: true });
    const timer = setTimeout(stop, COPY_MS);
    try {
      await fsp.mkdir(tmp, { mode: 0o755 });
      // the helper copies the pack in pieces (a client fetches them at once) while they are
      // unpacked, in order, as they grow: the unpack overlaps the fetch; what was unpacked
      // is kept only if it hashes to the profile's sha256
      const count = piecesOf(pack.bytes);
      const copied = this.host
        .probeFs([{ op: 'copy', path: path.join(mp, packPath(layers)), copy: { to: file, size: pack.bytes, count } }], ctl.signal)
        .then(([a]) => {
          t2 = performance.now();
          if (!a?.ok) throw new Error(`pack not copied: ${a ? a.message : 'no answer'}`);
        });
      // loaded on the first pack only (daemons' idle memory)
      const { extractLayerChunks } = await import('../tar/index.js');
      const unpacked = extractLayerChunks(pieces(file, pack.bytes, count, copied, ctl.signal), {
        dest: tmp,
        whiteouts: 'overlay',
        limits: { maxEntries: 2 * pack.files + 10_000, maxTotalBytes: pack.bytes },
        signal: ctl.signal,
        // a few hundred files: a worker's start (~0.3 s on a fresh daemon) costs more than it saves
        thread: 'inline',
      });
      const [c, u] = await Promise.allSettled([copied, unpacked]);
      if (c.status === 'rejected') return { dir: null, why: (c.reason as Error).message, ms: 0 };
      if (u.status === 'rejected') throw u.reason;
      if (u.value.diffId !== `sha256:${pack.sha256}`) return { dir: null, why: `pack is not the one the profile names (${u.value.diffId})`, ms: 0 };
      const st = u.value;
      const odd = st.symlinks + st.hardlinks + st.devices + st.whiteouts + st.opaques;
      if (odd > 0 || st.files !== pack.files)
        return { dir: null, why: `pack holds ${st.files} files and ${odd} other entries (want ${pack.files} files only)`, ms: 0 };
      await fsp.rename(tmp, final);
      const ms = Math.round(performance.now() - t0);
      // the unpack runs beside the copy: unpackMs is how long it went on after the copy
      const [profileMs, checkMs, copyMs] = [Math.round(tp - t0), Math.round(t1 - tp), Math.round(t2 - t1)];
      this.log.info(
        { hot: final, files: st.files, bytes: pack.bytes, ms, profileMs, checkMs, copyMs, unpackMs: ms - profileMs - checkMs - copyMs },
        'hot layer ready',
      );
      return { dir: final, why: 'pack', ms };
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener('abort', stop);
      for (let i = 0; i < PIECES; i++) await fsp.rm(`${file}.${i}`, { force: true });
      await fsp.rm(tmp, { recursive: true, force: true });
    }
  }

  /**
   * Whether `final` is a hot layer: unpacked (a directory that is not empty),
   * or an image mounted through the repository's client as it is now (one
   * mounted on a client that was replaced since is detached: mounted again).
   * An empty directory is an image's mount point after a reboot.
   */
  private async ready(mp: string, final: string): Promise<boolean> {
    const mounted = await isImageMount(final);
    if (mounted === null) return false;
    if (!mounted) return (await fsp.readdir(final).catch(() => [])).length > 0;
    // the repository mount's device now (a stalled client: not known within the deadline, the image kept)
    const dev = await cvmfsDev(this.host, mp, this.o.readTimeoutMs);
    return this.images.check([final], () => dev, mp).length === 0;
  }

  /** The helper reads an image's data file (`bytes` long) ahead in pieces (the client fetches their chunks at once); not waited for. */
  private readAhead(file: string, bytes: number): void {
    const t0 = performance.now();
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), COPY_MS);
    const count = piecesOf(bytes);
    this.host
      .probeFs([{ op: 'copy', path: file, copy: { size: bytes, count } }], ctl.signal)
      .then(
        ([a]) =>
          this.log.info({ file, ms: Math.round(performance.now() - t0), ...(a?.ok ? {} : { why: a?.message ?? 'no answer' }) }, 'hot layer image read ahead'),
        (err: unknown) => this.log.warn({ err, file }, 'hot layer image not read ahead'),
      )
      .finally(() => clearTimeout(timer));
  }

  /**
   * Whether the client's cache already holds the profile's files (a node that
   * ran the image without a hot layer): SAMPLE of them, picked at random, are
   * opened (which fetches a file not in the cache) and the client's download
   * counter must not move meanwhile (nor while the profile was read: when
   * it does, the sample is not opened). At random: the files a check opened are
   * cached from then on, so a fixed sample would say "warm" to the next check
   * on a node whose containers read the rest from a hot layer. Unknown (no
   * counters: not CVMFS, no getfattr; files not where the profile says; other
   * downloads meanwhile, the profile's own included: a node that ran the
   * image before its profile was published makes a hot layer once) is no.
   */
  private async cacheHolds(mp: string, profile: AccessProfile, before: Promise<CvmfsCounters | null>): Promise<boolean> {
    const sample = pick(
      profile.files.filter((f) => f.layer),
      SAMPLE,
    );
    const b = await before;
    if (sample.length === 0 || !b) return false;
    // the profile itself came over the network: a cold client (or a profile new to it), no sample needed
    const mid = await cvmfsCounters(this.host, mp, this.o.readTimeoutMs);
    if (mid?.downloads !== b.downloads) return false;
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), this.o.readTimeoutMs);
    try {
      const ops = sample.map((f): FsProbeOp => ({ op: 'read', path: path.join(layerRootfs(mp, f.layer!), f.path), max: 1 }));
      const read = await this.host.probeFs(ops, ctl.signal);
      if (!read.every((a) => a.ok)) return false;
    } finally {
      clearTimeout(timer);
    }
    const after = await cvmfsCounters(this.host, mp, this.o.readTimeoutMs);
    return after?.downloads === b.downloads;
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

/**
 * The bytes of the `count` pieces `<file>.<i>` of a `size`-byte file, in
 * order, as another process writes them (the probe helper's copy): each
 * piece read to the length it must have, polled while it has not grown that
 * far. Fails with `done`, or when `done` settled and a piece is short.
 */
async function* pieces(file: string, size: number, count: number, done: Promise<void>, signal: AbortSignal): AsyncGenerator<Buffer> {
  let finished: { error?: unknown } | undefined;
  done.then(
    () => (finished = {}),
    (error: unknown) => (finished = { error }),
  );
  const per = Math.ceil(size / count);
  // one buffer: each chunk is unpacked before the next is read (extractLayerChunks)
  const buf = Buffer.allocUnsafe(GROW_CHUNK);
  for (let i = 0; i < count; i++) {
    const want = Math.max(0, Math.min(per, size - i * per));
    let fh: FileHandle | undefined;
    try {
      for (let at = 0; at < want;) {
        signal.throwIfAborted();
        const end = finished;
        if (end && 'error' in end) throw end.error;
        fh ??= await fsp.open(`${file}.${i}`, constants.O_RDONLY | constants.O_NOFOLLOW).catch((e: NodeJS.ErrnoException) => {
          if (e.code !== 'ENOENT' || end) throw e;
          return undefined;
        });
        const n = fh ? (await fh.read(buf, 0, Math.min(GROW_CHUNK, want - at), at)).bytesRead : 0;
        if (n > 0) {
          at += n;
          yield buf.subarray(0, n);
        } else if (end) throw new Error(`pack piece ${i} has ${at} bytes, not ${want}`);
        else await sleep(GROW_POLL_MS);
      }
    } finally {
      await fh?.close();
    }
  }
}

/** `n` of `xs` at random (all of them when there are no more). */
function pick<T>(xs: readonly T[], n: number): T[] {
  const a = [...xs];
  for (let i = 0; i < Math.min(n, a.length); i++) {
    const j = i + Math.floor(Math.random() * (a.length - i));
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a.slice(0, n);
}

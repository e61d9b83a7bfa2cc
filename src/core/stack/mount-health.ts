/**
 * Running containers on a dead CVMFS lower: when a CVMFS client dies (kill
 * -9, a crash), its mount and every overlay with a lower layer on it answer
 * ENOTCONN for good — also after a new client is mounted at the same path
 * (an overlay holds the mount it was made with; only new overlays see the new
 * one, through our `l/` links). Such containers cannot be repaired, only
 * reported, so that they are restarted.
 *
 * The check reads the mount table (host seam), picks the overlays whose
 * lower directories go through a state directory's short links (`l/<n>`,
 * or `m/<n>` idmapped copies), and asks, with the probe's deadline:
 *  1. each CVMFS mount behind those links (statfs): not connected or stalled
 *     → every overlay on it is reported;
 *  2. each remaining overlay itself (readdir of its root, which opens every
 *     lower layer's root): ENOTCONN → on a CVMFS mount that died and was
 *     replaced since.
 * Shared by the daemons (periodic, gauge, log) and `cvmfs-thin doctor`.
 */
import { readlinkSync } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import type { MountInfo } from '../fs/fsutil.js';
import type { Host } from '../host/host.js';
import { type Metrics, noMetrics } from '../telemetry/metrics.js';
import { type CvmfsProbe, cvmfsRootOf } from '../host/probe.js';

/** An overlay mount's own options: lower layers (top first), upper and work dirs, as written (relative or absolute). */

/** Default period of the check of mounted layers / running containers (`check-interval`). */
export const DEFAULT_CHECK_INTERVAL_MS = 30_000;
interface OverlayOptions {
  lowers: string[];
  upper: string | undefined;
  work: string | undefined;
}

/** Undo mountinfo's and overlay's `\ooo` escapes. */
const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));

/** Parse an overlay's super options (`lowerdir=a:b`, `lowerdir+=a`, `upperdir=`, `workdir=`). Pure. */
export function parseOverlayOptions(superOptions: string): OverlayOptions {
  const out: OverlayOptions = { lowers: [], upper: undefined, work: undefined };
  for (const opt of superOptions.split(',')) {
    const i = opt.indexOf('=');
    if (i < 0) continue;
    const key = opt.slice(0, i);
    const value = unescape(opt.slice(i + 1));
    if (key === 'lowerdir')
      out.lowers.push(
        ...value
          .split(/(?<!\\):/)
          .map((p) => p.replace(/\\:/g, ':'))
          .filter((p) => p !== ''),
      );
    else if (key === 'lowerdir+') out.lowers.push(value);
    else if (key === 'upperdir') out.upper = value;
    else if (key === 'workdir') out.work = value;
  }
  return out;
}

/** One lower layer of ours: the link it goes through and the directory behind it. */
interface OurLower {
  link: string;
  target: string;
  /** On CVMFS (not a directory of the state directory, not a mask). */
  cvmfs: boolean;
}

interface OurOverlay {
  mountPoint: string;
  /** Absolute upper dir when it is inside the state directory. */
  upper: string | undefined;
  lowers: OurLower[];
}

/**
 * The overlays in `mounts` with a lower through `root`'s short links.
 * Lowers are absolute, or — for an overlay whose upper dir is ours —
 * relative: containerd shortens a long lowerdir= relative to the lowers'
 * common parent (`<root>/l`: entries `1:2`), the graph driver mounts relative
 * to its home on kernels before 6.8 (`l/1`, upper `layers/<id>/diff`).
 * `readlink` reads a link of ours (local: never CVMFS).
 */
export function overlaysOf(mounts: readonly MountInfo[], root: string, readlink: (p: string) => string | null = safeReadlink): OurOverlay[] {
  const out: OurOverlay[] = [];
  const links = path.join(root, 'l');
  const idmapped = path.join(root, 'm');
  const inRoot = (p: string) => p.startsWith(root + path.sep);
  for (const m of mounts) {
    if (m.fsType !== 'overlay' || !m.superOptions) continue;
    const o = parseOverlayOptions(m.superOptions);
    const upper = o.upper === undefined ? undefined : path.resolve(root, o.upper);
    const ours = upper !== undefined && inRoot(upper);
    const lowers: OurLower[] = [];
    for (const entry of o.lowers) {
      const candidates = path.isAbsolute(entry) ? [entry] : ours ? [path.resolve(root, entry), path.resolve(links, entry)] : [];
      for (const abs of candidates) {
        const dir = path.dirname(abs);
        if (dir !== links && dir !== idmapped) continue;
        // m/<n> is the idmapped copy of what l/<n> links to
        const link = path.join(links, path.basename(abs));
        const t = readlink(link);
        if (t === null) continue;
        const target = path.resolve(links, t);
        lowers.push({ link, target, cvmfs: target !== root && !inRoot(target) });
        break;
      }
    }
    if (lowers.length === 0) continue;
    out.push({ mountPoint: m.mountPoint, upper: ours ? upper : undefined, lowers });
  }
  return out;
}

function safeReadlink(p: string): string | null {
  try {
    return readlinkSync(p);
  } catch {
    return null;
  }
}

export type BrokenReason = 'not-connected' | 'stalled';

export interface BrokenOverlay extends OurOverlay {
  reason: BrokenReason;
  /** What was found, for logs and doctor. */
  detail: string;
  /** The CVMFS mount points behind it. */
  cvmfs: string[];
}

interface CvmfsMountState {
  mount: string;
  state: 'ok' | 'not-connected' | 'stalled' | 'absent' | 'error';
  detail: string;
}

/** Ask one CVMFS mount point (statfs) within the probe's deadline. */
export async function cvmfsMountState(probe: CvmfsProbe, mount: string): Promise<CvmfsMountState> {
  const a = await probe.answer(mount, { op: 'statfs', path: mount }, `mount check of ${mount}`);
  if (a === 'stalled') return { mount, state: 'stalled', detail: `${mount} does not answer within ${probe.timeoutMs / 1000} s (the CVMFS client stalls)` };
  if (a.ok) return { mount, state: 'ok', detail: `${mount} answers` };
  if (a.code === 'ENOTCONN')
    return { mount, state: 'not-connected', detail: `${mount} answers ENOTCONN (Transport endpoint is not connected: its CVMFS client died)` };
  if (a.code === 'ENOENT' || a.code === 'ENOTDIR') return { mount, state: 'absent', detail: `${mount} does not exist` };
  return { mount, state: 'error', detail: `${mount}: ${a.message}` };
}

/**
 * Which of `overlays` are on a dead or stalled CVMFS lower (see the file
 * comment). At most `concurrency` overlays are read at once.
 */
export async function brokenOverlays(probe: CvmfsProbe, overlays: readonly OurOverlay[], concurrency = 4): Promise<BrokenOverlay[]> {
  const roots = new Map<string, Promise<CvmfsMountState>>();
  const rootsOf = (o: OurOverlay) => [...new Set(o.lowers.filter((l) => l.cvmfs).map((l) => cvmfsRootOf(l.target)))];
  for (const o of overlays) for (const r of rootsOf(o)) if (!roots.has(r)) roots.set(r, cvmfsMountState(probe, r));
  const out: BrokenOverlay[] = [];
  const queue = [...overlays];
  const worker = async () => {
    for (let o = queue.shift(); o; o = queue.shift()) {
      const cvmfs = rootsOf(o);
      if (cvmfs.length === 0) continue;
      const states = await Promise.all(cvmfs.map((r) => roots.get(r)!));
      const bad = states.find((s) => s.state === 'not-connected') ?? states.find((s) => s.state === 'stalled');
      if (bad) {
        out.push({ ...o, reason: bad.state === 'stalled' ? 'stalled' : 'not-connected', detail: bad.detail, cvmfs });
        continue;
      }
      // the mounts answer: does the overlay still have the mount it was made with?
      const a = await probe.answer(o.mountPoint, { op: 'readdir', path: o.mountPoint }, `overlay check of ${o.mountPoint}`);
      if (a === 'stalled') out.push({ ...o, reason: 'stalled', detail: `reading ${o.mountPoint} does not answer within ${probe.timeoutMs / 1000} s`, cvmfs });
      else if (!a.ok && a.code === 'ENOTCONN') {
        out.push({
          ...o,
          reason: 'not-connected',
          detail: `${o.mountPoint} answers ENOTCONN: a lower layer is on a CVMFS mount whose client died (CVMFS was mounted again since; only new containers see the new mount)`,
          cvmfs,
        });
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, concurrency) }, worker));
  return out.sort((a, b) => (a.mountPoint < b.mountPoint ? -1 : a.mountPoint > b.mountPoint ? 1 : 0));
}

interface MountMonitorOptions {
  daemon: 'snapshotter' | 'graphdriver';
  /** The state directory whose `l/` links the overlays use. */
  root: string;
  host: Host;
  probe: CvmfsProbe;
  log: Logger;
  metrics?: Metrics | undefined;
  /** How often to check (0: only on demand). */
  intervalMs: number;
  /** What the overlay is to the daemon, for the log (snapshot key, layer id). */
  describe?: (o: OurOverlay) => Record<string, string>;
}

/**
 * The daemons' periodic check: gauge `broken_mounts{daemon,reason}` and a
 * warning naming each overlay when it is first found broken. The daemon
 * stays healthy meanwhile (restarting it would not help: the containers
 * must be restarted).
 */
export class MountMonitor {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<BrokenOverlay[]> | undefined;
  private known = new Map<string, BrokenReason>();
  /** The last check's findings. */
  last: BrokenOverlay[] = [];

  constructor(private readonly o: MountMonitorOptions) {}

  /** Check every `intervalMs` (unref'd), the first time soon after the start. */
  start(): void {
    if (this.o.intervalMs <= 0 || this.timer) return;
    const tick = () => void this.check().catch((e: unknown) => this.o.log.error({ err: e }, 'check of running containers for dead CVMFS mounts failed'));
    this.timer = setInterval(tick, this.o.intervalMs);
    this.timer.unref();
    setTimeout(tick, Math.min(this.o.intervalMs, 2000)).unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Check now (one check at a time: a caller during a check gets its result). */
  check(): Promise<BrokenOverlay[]> {
    this.running ??= this.run().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private async run(): Promise<BrokenOverlay[]> {
    const overlays = overlaysOf(this.o.host.mountinfo(), this.o.root);
    const broken = await brokenOverlays(this.o.probe, overlays);
    const m = this.o.metrics ?? noMetrics;
    for (const reason of ['not-connected', 'stalled'] as const)
      m.set('broken_mounts', { daemon: this.o.daemon, reason }, broken.filter((b) => b.reason === reason).length);
    const now = new Map(broken.map((b) => [b.mountPoint, b.reason]));
    for (const b of broken) {
      if (this.known.get(b.mountPoint) === b.reason) continue;
      this.o.log.warn(
        { mountPoint: b.mountPoint, ...this.o.describe?.(b), reason: b.reason, cvmfs: b.cvmfs, detail: b.detail },
        b.reason === 'stalled'
          ? 'a running container has a lower layer on a CVMFS mount that does not answer (stalled client): its processes hang on those files until CVMFS answers'
          : 'a running container has a lower layer on a dead CVMFS mount (ENOTCONN): its files there are gone for good; restart the container (new containers use the mount that is there now)',
      );
    }
    for (const [mp] of this.known) if (!now.has(mp)) this.o.log.info({ mountPoint: mp }, 'overlay on a dead or stalled CVMFS mount is gone or answers again');
    this.known = now;
    this.last = broken;
    return broken;
  }
}

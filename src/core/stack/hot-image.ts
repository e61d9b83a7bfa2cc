/**
 * A hot layer mounted rather than unpacked: the profile's EROFS image
 * (core/fs/erofs.ts, SPEC §8) mounted read-only straight from CVMFS
 * (file-backed EROFS: Linux 6.12+) at `masks/hot-<stack id>`, its data file
 * as the extra device. Nothing is copied or unpacked; the pull waits only
 * for the metadata file (small: the client fetches it whole) while the
 * probe helper reads the data file ahead in pieces, so the client fetches
 * its chunks at once and a container reading a file whose chunk has not
 * arrived waits only for that chunk.
 *
 * The metadata's head is read by the probe helper (a stalled client never
 * blocks the daemon) beside the profile, and must name the profile's sizes
 * and uuid; the mount then reads what the client holds (the data file is
 * only opened). A kernel that cannot mount an image from a file
 * (ENOTBLK before 6.12, ENODEV without EROFS) is not asked again: the pack is
 * unpacked instead (hot.ts).
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { type ErofsHead, readErofsHead } from '../fs/erofs.js';
import type { MountInfo } from '../fs/fsutil.js';
import type { Host } from '../host/host.js';
import { probeWithin } from '../host/probe.js';
import { MNT_DETACH, MS_NODEV, MS_RDONLY } from '../host/sys.js';
import { imageDataPath, imagePath, type ProfileImage } from '../thin/profile.js';

/** The head read before the mount: the superblock is at 1024. */
const HEAD = 2048;
/** errnos of a kernel that mounts no EROFS image from a file (EINVAL is a bad image: only that one is not used). */
const UNSUPPORTED = new Set(['ENOTBLK', 'ENODEV']);

type ImageResult = { dir: string; ms: number; dev: number | null } | { dir: null; why: string; unsupported?: boolean };

/** What the probe helper saw of a stack's image: its files, its head, the repository mount, its data file. */
interface ImageProbe {
  file: string;
  data: string;
  /** The head (superblock, device table), when read. */
  head: ErofsHead | null;
  why: string | null;
  /** The repository mount's device (ImageMounts), the data file's size. */
  dev: number | null;
  dataBytes: number | null;
}

/**
 * The image of the stack `layers` of the repository at `mp` as the probe
 * helper finds it (its metadata's head read: a small file, fetched whole;
 * the data file and the repository mount stat'ed), whatever the profile says.
 */
export async function probeImage(host: Host, mp: string, layers: readonly string[], timeoutMs: number): Promise<ImageProbe> {
  const file = path.join(mp, imagePath(layers));
  const data = path.join(mp, imageDataPath(layers));
  const none = (why: string): ImageProbe => ({ file, data, head: null, why, dev: null, dataBytes: null });
  const r = await probeWithin(
    host,
    [
      { op: 'read', path: file, head: HEAD },
      { op: 'stat', path: mp },
      { op: 'stat', path: data },
      // opened (and closed) by the helper: a client fetches a file under its chunk size whole at
      // its open, which the mount's own open must not wait for (mount(2) blocks the daemon)
      { op: 'read', path: data, max: 0 },
    ],
    timeoutMs,
  ).catch((e: unknown) => (e as Error).message);
  if (r === 'stalled') return none(`image did not answer within ${timeoutMs} ms`);
  if (typeof r === 'string') return none(`image not read: ${r}`);
  const [h, repo, st] = r;
  const head = h?.ok && h.text !== undefined ? readErofsHead(Buffer.from(h.text, 'base64')) : null;
  const why = h?.ok ? (head ? null : 'no EROFS superblock') : `image not read: ${h?.message ?? 'no answer'}`;
  return { file, data, head, why, dev: repo?.ok ? (repo.dev ?? null) : null, dataBytes: st?.ok ? (st.bytes ?? null) : null };
}

/**
 * Mount the image `p` (probed) on `final` (made, or an empty directory left
 * by an earlier mount: a reboot) if it is the one `image` (the profile's)
 * names: its head's sizes and uuid, its data file's size.
 */
export async function mountHotImage(host: Host, log: Logger, p: ImageProbe, image: ProfileImage, final: string): Promise<ImageResult> {
  const t0 = performance.now();
  // mount options are comma-separated: a path with a comma cannot be one
  if (p.data.includes(',')) return { dir: null, why: `image data file ${p.data} has a comma in its path` };
  if (!p.head) return { dir: null, why: p.why ?? 'image not read' };
  if (p.dataBytes !== image.data.bytes) return { dir: null, why: `image data file ${p.data}: ${p.dataBytes ?? 'no'} bytes, not ${image.data.bytes}` };
  const head = p.head;
  if (head.bytes !== image.bytes || head.dataBytes !== image.data.bytes || head.uuid !== image.uuid)
    return { dir: null, why: `image is not the one the profile names (${head.bytes} + ${head.dataBytes} bytes, uuid ${head.uuid})` };
  // another fetch of the same stack mounted it meanwhile (one that outlived its retry): not mounted twice
  if (await isImageMount(final)) return { dir: final, ms: Math.round(performance.now() - t0), dev: p.dev };
  const made = await fsp.mkdir(final, { mode: 0o755 }).then(
    () => true,
    (e: NodeJS.ErrnoException) => {
      if (e.code !== 'EEXIST') throw e;
      return false;
    },
  );
  try {
    // not nosuid: the image's setuid files are the container's
    host.mount(p.file, final, 'erofs', MS_RDONLY | MS_NODEV, `device=${p.data}`);
  } catch (e) {
    if (made) await fsp.rmdir(final).catch(() => undefined);
    const code = (e as NodeJS.ErrnoException).code ?? '';
    if (UNSUPPORTED.has(code)) {
      log.warn({ err: e }, 'this kernel mounts no EROFS image from a file (Linux 6.12+ with EROFS_FS_BACKED_BY_FILE): hot layers are unpacked from packs');
      return { dir: null, why: `image not mounted (${code})`, unsupported: true };
    }
    return { dir: null, why: `image not mounted: ${(e as Error).message}` };
  }
  return { dir: final, ms: Math.round(performance.now() - t0), dev: p.dev };
}

/** The device of the repository mount `mp` (the probe helper's stat), undefined when not known within `ms`. */
export async function cvmfsDev(host: Host, mp: string, ms: number): Promise<number | undefined> {
  const r = await probeWithin(host, [{ op: 'stat', path: mp }], ms).catch(() => 'stalled' as const);
  const st = r === 'stalled' ? undefined : r[0];
  return st?.ok ? st.dev : undefined;
}

/** Whether a hot layer's directory is a mount point (an image), not one (unpacked); null when it is not a directory. */
export async function isImageMount(dir: string): Promise<boolean | null> {
  const [st, up] = await Promise.all([fsp.stat(dir).catch(() => null), fsp.stat(path.dirname(dir)).catch(() => null)]);
  if (!st?.isDirectory()) return null;
  return st.dev !== up?.dev;
}

/** Unmount an image mounted at `dir` (detached when busy); the mounts left. */
export function unmountHot(host: Host, dir: string, mounts: MountInfo[], log: Logger): MountInfo[] {
  if (!mounts.some((m) => m.mountPoint === dir)) return mounts;
  try {
    host.umount(dir);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    // EINVAL: not mounted any more (detached since the mount table was read)
    if (code !== 'EBUSY' && code !== 'EINVAL') throw e;
    if (code === 'EBUSY') {
      log.warn({ dir }, 'hot layer image busy: detached');
      host.umount(dir, MNT_DETACH);
    }
  }
  return mounts.filter((m) => m.mountPoint !== dir);
}

/**
 * The images mounted in a masks directory, and the CVMFS client each reads
 * its file through (the device of the repository's mount). A client that
 * died and was mounted again is another device: an image mounted on the old
 * one answers nothing any more, so it is detached — its directory is then
 * empty (a container sees the stack's own files) and the next pull of the
 * image mounts it again. Images found mounted when the daemon starts take
 * the device seen first.
 */
export class ImageMounts {
  private readonly on = new Map<string, { root: string | null; dev: number | null }>();

  constructor(
    private readonly host: Host,
    private readonly log: Logger,
    masksDir: string,
  ) {
    for (const m of host.mountinfo())
      if (m.fsType === 'erofs' && path.dirname(m.mountPoint) === masksDir && path.basename(m.mountPoint).startsWith('hot-'))
        this.on.set(m.mountPoint, { root: null, dev: null });
  }

  record(dir: string, root: string, dev: number | null): void {
    this.on.set(dir, { root, dev });
  }

  forget(dir: string): void {
    this.on.delete(dir);
  }

  /**
   * Detach the images among `dirs` (a container's lowers) whose client is not
   * the one they were mounted on: `devOf(root)` is the device of the
   * repository mount `root` now (undefined: not known), `root` the one of
   * the other layers when an image's own is not known. Returns those detached.
   */
  check(dirs: readonly string[], devOf: (root: string) => number | undefined, root: string | undefined): string[] {
    const gone: string[] = [];
    for (const d of dirs) {
      const rec = this.on.get(d);
      const r = rec?.root ?? root;
      const now = r === undefined ? undefined : devOf(r);
      if (!rec || now === undefined) continue;
      if (rec.dev === null) {
        this.on.set(d, { root: r!, dev: now });
        continue;
      }
      if (now === rec.dev) continue;
      this.log.warn({ dir: d, root: r }, 'hot layer image on a CVMFS client that was replaced: detached (mounted again at the next pull)');
      try {
        this.host.umount(d, MNT_DETACH);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EINVAL') throw e;
      }
      this.on.delete(d);
      gone.push(d);
    }
    return gone;
  }
}

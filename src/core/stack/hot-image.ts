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
 * blocks the daemon) and must name the profile's sizes and uuid; the mount
 * then reads what the client holds (the data file is only opened). A kernel that cannot mount an image from a file
 * (ENOTBLK before 6.12, ENODEV without EROFS) is not asked again: the pack is
 * unpacked instead (hot.ts).
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { readErofsHead } from '../fs/erofs.js';
import type { MountInfo } from '../fs/fsutil.js';
import type { Host } from '../host/host.js';
import { MNT_DETACH, MS_NODEV, MS_RDONLY } from '../host/sys.js';
import { imageDataPath, imagePath, type ProfileImage } from '../thin/profile.js';

/** The head read before the mount: the superblock is at 1024. */
const HEAD = 2048;
/** errnos of a kernel that mounts no EROFS image from a file. */
const UNSUPPORTED = new Set(['ENOTBLK', 'ENODEV', 'EINVAL']);

export type ImageResult = { dir: string; ms: number; dev: number | null } | { dir: null; why: string; unsupported?: boolean };

/**
 * Mount the image of the stack `layers` of the repository at `mp` on `final`
 * (made, or an empty directory left by an earlier mount: a reboot). `readAhead`
 * starts the helper's read of the whole image (before the head, so its chunks
 * are fetched at once); its end is not waited for.
 */
export async function mountHotImage(
  host: Host,
  log: Logger,
  mp: string,
  layers: readonly string[],
  image: ProfileImage,
  final: string,
  o: { timeoutMs: number; readAhead: (file: string) => void },
): Promise<ImageResult> {
  const t0 = performance.now();
  const file = path.join(mp, imagePath(layers));
  const data = path.join(mp, imageDataPath(layers));
  // mount options are comma-separated: a path with a comma cannot be one
  if (data.includes(',')) return { dir: null, why: `image data file ${data} has a comma in its path` };
  o.readAhead(data);
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), o.timeoutMs);
  let answer, repo, dataSt;
  try {
    // with the device of the repository's mount (the client the image is read through: ImageMounts) and the data file's size
    [answer, repo, dataSt] = await host.probeFs(
      [
        { op: 'read', path: file, head: HEAD },
        { op: 'stat', path: mp },
        { op: 'stat', path: data },
      ],
      ctl.signal,
    );
  } finally {
    clearTimeout(timer);
  }
  if (!answer?.ok || answer.text === undefined) return { dir: null, why: `image not read: ${answer && !answer.ok ? answer.message : 'no answer'}` };
  const head = readErofsHead(Buffer.from(answer.text, 'base64'));
  if (!dataSt?.ok || dataSt.bytes !== image.data.bytes)
    return { dir: null, why: `image data file ${data}: ${dataSt?.ok ? `${dataSt.bytes} bytes, not ${image.data.bytes}` : (dataSt?.message ?? 'no answer')}` };
  if (head?.bytes !== image.bytes || head.dataBytes !== image.data.bytes || head.uuid !== image.uuid) {
    const says = head ? `${head.bytes} + ${head.dataBytes} bytes, uuid ${head.uuid}` : 'no EROFS superblock';
    return { dir: null, why: `image is not the one the profile names (${says})` };
  }
  const made = await fsp.mkdir(final, { mode: 0o755 }).then(
    () => true,
    (e: NodeJS.ErrnoException) => {
      if (e.code !== 'EEXIST') throw e;
      return false;
    },
  );
  try {
    // not nosuid: the image's setuid files are the container's
    host.mount(file, final, 'erofs', MS_RDONLY | MS_NODEV, `device=${data}`);
  } catch (e) {
    if (made) await fsp.rmdir(final).catch(() => undefined);
    const code = (e as NodeJS.ErrnoException).code ?? '';
    if (UNSUPPORTED.has(code)) {
      log.warn({ err: e }, 'this kernel mounts no EROFS image from a file (Linux 6.12+ with EROFS_FS_BACKED_BY_FILE): hot layers are unpacked from packs');
      return { dir: null, why: `image not mounted (${code})`, unsupported: true };
    }
    return { dir: null, why: `image not mounted: ${(e as Error).message}` };
  }
  return { dir: final, ms: Math.round(performance.now() - t0), dev: repo?.ok && repo.dev !== undefined ? repo.dev : null };
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
    if ((e as NodeJS.ErrnoException).code !== 'EBUSY') throw e;
    log.warn({ dir }, 'hot layer image busy: detached');
    host.umount(dir, MNT_DETACH);
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

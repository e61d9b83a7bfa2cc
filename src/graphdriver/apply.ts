/**
 * ApplyDiff's work on one layer: extract the tar into its diff dir, detect a
 * thin image and link its CVMFS layers; on any failure leave the layer as
 * Create made it (dockerd removes it after a failed ApplyDiff, other clients
 * may retry) and remove the links made.
 */
import { promises as fsp } from 'node:fs';
import { PassThrough, type Readable } from 'node:stream';
import type { Logger } from 'pino';
import { removeTree } from '../core/fs/fsutil.js';
import type { Host } from '../core/host/host.js';
import type { LayerStack } from '../core/stack/index.js';
import { type ExtractOptions, type ExtractResult, extractLayer } from '../core/tar/index.js';
import type { IdMaps } from '../core/util/idmap.js';
import { dirSize } from './changes.js';
import type { Layer, LayerStore, ThinRecord } from './layer-store.js';

interface ApplyContext {
  host: Host;
  store: LayerStore;
  stack: LayerStack;
  idMaps: IdMaps | undefined;
  owner: { uid: number; gid: number } | undefined;
  thinImages: boolean;
  log: Logger;
  /** Run `fn` holding the lock of the shared mask directories (their GC must not interleave). */
  withMasksLock<T>(fn: () => Promise<T>): Promise<T>;
  /** The layer was a thin image, its manifest resolved and linked in `ms` (told once the ApplyDiff succeeded). */
  onThin?: (ms: number, thin: ThinRecord) => void;
}

/**
 * Extract a request body with `opts`. The extractor may stop reading early (a
 * refused entry): it reads from a pipe of its own, and the body is always read
 * to its end, so that dockerd gets our answer rather than a broken pipe.
 */
export async function extractBody(body: Readable, opts: ExtractOptions): Promise<ExtractResult> {
  const pipe = new PassThrough({ highWaterMark: 1 << 20 });
  body.pipe(pipe);
  const bodyDone = new Promise<void>((resolve) => {
    body.once('end', resolve);
    body.once('close', resolve);
    body.once('error', () => resolve());
  });
  try {
    return await extractLayer(pipe, opts);
  } finally {
    body.unpipe(pipe);
    pipe.destroy();
    body.resume();
    await bodyDone;
  }
}

/** Returns the size of the layer's files. */
export async function applyLayer(c: ApplyContext, l: Layer, body: Readable): Promise<number> {
  const id = l.rec.id;
  const diff = c.store.diffDir(id);
  let rollback = () => {};
  try {
    const res = await extractBody(body, { dest: diff, whiteouts: 'overlay', ...(c.idMaps ? { idMap: c.idMaps } : {}) });
    let thin: ThinRecord | undefined;
    let resolveMs = 0;
    if (c.thinImages && l.rec.parent === '') {
      await c.withMasksLock(async () => {
        const t0 = performance.now();
        const t = await c.stack.linkThin(diff, { id });
        if (!t) return;
        resolveMs = performance.now() - t0;
        rollback = t.links.rollback;
        thin = { manifest: t.file, origin: t.manifest.origin, layers: t.manifest.layers.length, how: t.how, lowers: t.lowers };
        await c.store.saveRecord(l, { ...l.rec, thin });
      });
    }
    const size = await dirSize(diff);
    c.log.debug({ id, entries: res.entries, size, thin: !!thin }, 'ApplyDiff');
    if (thin) c.onThin?.(resolveMs, thin);
    return size;
  } catch (e) {
    rollback();
    try {
      await removeTree(diff, c.host.mountinfo());
      await fsp.mkdir(diff, { mode: 0o755 });
      if (c.owner) c.host.lchown(diff, c.owner.uid, c.owner.gid);
    } catch (e2) {
      c.log.error({ err: e2, id }, 'cannot reset the layer after a failed ApplyDiff');
    }
    throw e;
  }
}

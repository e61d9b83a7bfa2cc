/**
 * One layer: streamed download → digest check → decompression → safe
 * extraction with overlay whiteouts into a temporary directory in the layer's
 * bucket → metadata and marker → rename to `.layers/<xx>/<hex>`. A layer that
 * is already there is skipped; two images sharing a layer in one run unpack
 * it once. Nothing is ever at the final name until it is complete.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import { finished, pipeline } from 'node:stream/promises';
import type { Logger } from 'pino';
import { LAYER_MARKER, LAYER_ROOTFS, layerDir, type LayerMarker, METADATA_DIR } from '../core/cvmfs/layout.js';
import { ThinError } from '../core/errors.js';
import { removeTree } from '../core/fsutil.js';
import { BadContentError, ConvertError } from './errors.js';
import type { ImageSource } from './image/source.js';
import { type Descriptor, layerCompression } from './image/types.js';
import { DigestVerifier } from './image/verify.js';
import type { Progress } from './progress.js';
import { CATALOG_MARKER, type RepoTree } from './repo.js';
import { decompress, type ExtractLimits, extractLayer } from './tar.js';
import { type Semaphore, shortDigest } from './util.js';

export interface LayerOutcome {
  digest: string;
  status: 'unpacked' | 'present' | 'present-foreign';
  /** Compressed bytes downloaded (0 when present). */
  bytes: number;
  files: number;
  entries: number;
  whiteouts: number;
  opaques: number;
  diffId: string | undefined;
  seconds: number;
}

export interface LayerJob {
  source: ImageSource;
  desc: Descriptor;
  /** From the image config, to verify the uncompressed content. */
  diffId: string | undefined;
  /** Image description, for messages. */
  image: string;
  index: number;
  count: number;
}

export interface UnpackerOptions {
  tree: RepoTree;
  jobs: Semaphore;
  progress: Progress;
  log: Logger;
  limits?: ExtractLimits | undefined;
  signal?: AbortSignal | undefined;
  /** Replace layers that exist without our marker (DUCC's, with OCI whiteouts as plain files). */
  overwriteForeign?: boolean | undefined;
  /**
   * 'overlay' (default): OCI whiteouts become overlayfs whiteouts and the layer gets
   * our marker. 'keep': `.wh.*` entries stay plain files, as DUCC writes them (for
   * publishing through a CVMFS union mount, whose overlayfs would take 0/0 devices
   * for deletions); readers then mask them.
   */
  whiteouts?: 'overlay' | 'keep' | undefined;
}

export class LayerUnpacker {
  private readonly inflight = new Map<string, Promise<LayerOutcome>>();
  constructor(private readonly o: UnpackerOptions) {}

  unpack(job: LayerJob): Promise<LayerOutcome> {
    const hex = job.desc.digest.slice(7);
    let p = this.inflight.get(hex);
    if (!p) {
      p = this.o.jobs.run(() => this.unpackOnce(job, hex));
      this.inflight.set(hex, p);
      p.then(
        () => this.inflight.delete(hex),
        () => this.inflight.delete(hex),
      );
    }
    // another image may have started this layer: name this caller's image and position
    return p.catch((e: unknown) => {
      if (!(e instanceof ConvertError)) throw e;
      throw new ConvertError({ image: job.image, layer: `${job.index + 1}/${job.count} ${job.desc.digest}`, entry: e.entry }, e.reason, e.kind, e.code, { cause: e });
    });
  }

  /**
   * A layer that does not decompress or parse may just be corrupt (one
   * flipped byte gives "bad header checksum" or a zlib error long before the
   * digest can be checked at the end): read the blob again and check its
   * digest, so that corruption is reported as such. A blob that matches its
   * digest keeps the original error (the tar itself is bad).
   */
  private async blameContent(job: LayerJob, e: unknown): Promise<unknown> {
    const { desc } = job;
    if (this.o.signal?.aborted) return e;
    if (!ThinError.is(e) || e.kind !== 'invalid-argument' || e.code === 'CVMFS_THIN_DIGEST_MISMATCH') return e;
    const check = new DigestVerifier(desc.digest, desc.size, `blob ${desc.digest}`);
    try {
      await pipeline(job.source.openBlob(desc), check, new Writable({ write: (_c, _e, cb) => cb() }), ...(this.o.signal ? [{ signal: this.o.signal }] : []));
    } catch (ve) {
      if (ThinError.is(ve) && ve.code === 'CVMFS_THIN_DIGEST_MISMATCH') {
        this.o.log.warn({ layer: desc.digest, err: (e as Error).message }, 'layer blob is corrupt');
        return new BadContentError(ve.message, 'CVMFS_THIN_DIGEST_MISMATCH', { cause: e });
      }
      // the blob could not be read again: keep the first error
    }
    return e;
  }

  private async unpackOnce(job: LayerJob, hex: string): Promise<LayerOutcome> {
    const { desc } = job;
    const layerName = `${job.index + 1}/${job.count} ${desc.digest}`;
    const ctx = { image: job.image, layer: layerName };
    const t0 = Date.now();
    const present = (status: LayerOutcome['status']): LayerOutcome => ({
      digest: desc.digest,
      status,
      bytes: 0,
      files: 0,
      entries: 0,
      whiteouts: 0,
      opaques: 0,
      diffId: job.diffId,
      seconds: (Date.now() - t0) / 1000,
    });
    const state = await this.o.tree.layerState(hex);
    if (state === 'ours' || (state === 'foreign' && (!this.o.overwriteForeign || this.o.whiteouts === 'keep'))) {
      await this.o.tree.touchLayer(hex);
      this.o.log.debug({ layer: desc.digest, state }, 'layer already in the repository');
      return present(state === 'ours' ? 'present' : 'present-foreign');
    }
    let compression;
    try {
      compression = layerCompression(desc.mediaType, `layer ${desc.digest}`);
    } catch (e) {
      throw ConvertError.wrap(e, ctx);
    }
    const key = `${job.image}#${hex}`;
    this.o.progress.layerStart(key, `${shortDigest(desc.digest)} (${job.index + 1}/${job.count})`, desc.size);
    const tmp = await this.o.tree.tmpLayerDir(hex);
    const rootfs = path.join(tmp, LAYER_ROOTFS);
    try {
      await fsp.mkdir(rootfs, { mode: 0o755 });
      const blob = job.source.openBlob(desc);
      const verifier = new DigestVerifier(desc.digest, desc.size, `blob ${desc.digest}`, (n) => this.o.progress.layerBytes(key, n));
      blob.on('error', (e) => verifier.destroy(e));
      blob.pipe(verifier);
      let res;
      try {
        const tar = decompress(verifier, compression);
        res = await extractLayer(tar, {
          dest: rootfs,
          whiteouts: this.o.whiteouts ?? 'overlay',
          ...(this.o.limits ? { limits: this.o.limits } : {}),
          ...(this.o.signal ? { signal: this.o.signal } : {}),
          onProgress: (p) => this.o.progress.layerFiles(key, p.entries),
        });
        // the extractor stops at the end-of-archive marker: read the rest so the whole blob is verified
        if (!verifier.verified) {
          verifier.unpipe();
          verifier.resume();
          await finished(verifier);
        }
        if (!verifier.verified) throw new BadContentError(`blob ${desc.digest} was not read to its end`, 'CVMFS_THIN_DIGEST_MISMATCH');
      } catch (e) {
        blob.destroy();
        verifier.destroy();
        throw await this.blameContent(job, e);
      }
      if (job.diffId !== undefined && res.diffId !== job.diffId) {
        throw new BadContentError(`uncompressed content has digest ${res.diffId}, the image config declares diff_id ${job.diffId}`, 'CVMFS_THIN_DIFFID_MISMATCH');
      }
      const meta = path.join(tmp, METADATA_DIR);
      await fsp.mkdir(meta, { mode: 0o755 });
      const created = new Date().toISOString();
      const marker: LayerMarker = {
        schema: 'cvmfs-thin/layer',
        version: 1,
        digest: desc.digest,
        diff_id: res.diffId,
        whiteouts: 'overlay',
        created,
        entries: res.entries,
        whiteout_count: res.whiteouts + res.opaques,
      };
      // the marker tells readers the layer holds overlay whiteouts: only then
      if ((this.o.whiteouts ?? 'overlay') === 'overlay') await fsp.writeFile(path.join(meta, LAYER_MARKER), `${JSON.stringify(marker, null, 2)}\n`, { mode: 0o644 });
      // DUCC's podman LayerInfo
      const layersJson = [
        { id: res.diffId.slice(7), created, 'compressed-diff-digest': desc.digest, 'compressed-size': desc.size, 'diff-digest': res.diffId, 'diff-size': res.bytes },
      ];
      await fsp.writeFile(path.join(meta, 'layers.json'), `${JSON.stringify(layersJson)}\n`, { mode: 0o644 });
      await fsp.writeFile(path.join(tmp, CATALOG_MARKER), '', { mode: 0o644 });
      // replace: a foreign layer with --overwrite-layers, or a broken directory (no layerfs) at the final name
      const replace = state === 'foreign' || (await this.o.tree.layerState(hex)) === null;
      const committed = await this.o.tree.commitDir(tmp, layerDir(this.o.tree.root, hex), { replace });
      this.o.progress.layerDone(key, committed ? 'unpacked' : 'present');
      this.o.log.info({ image: job.image, layer: desc.digest, entries: res.entries, bytes: res.bytes, whiteouts: res.whiteouts, opaques: res.opaques }, committed ? 'layer unpacked' : 'layer appeared meanwhile');
      return {
        digest: desc.digest,
        status: committed ? 'unpacked' : 'present',
        bytes: desc.size,
        files: res.files,
        entries: res.entries,
        whiteouts: res.whiteouts,
        opaques: res.opaques,
        diffId: res.diffId,
        seconds: (Date.now() - t0) / 1000,
      };
    } catch (e) {
      this.o.progress.layerDone(key, 'FAILED');
      await removeTree(tmp).catch((re: unknown) => this.o.log.error({ err: re, path: tmp }, 'cannot remove a temporary layer directory'));
      throw ConvertError.wrap(e, ctx);
    }
  }
}

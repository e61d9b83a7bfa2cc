/**
 * One layer: streamed download → digest check → decompression → safe
 * extraction with overlay whiteouts into a temporary directory in the layer's
 * bucket → metadata and marker → rename to `.layers/<xx>/<hex>`. A layer that
 * is already there is skipped; two images sharing a layer in one run unpack
 * it once. Nothing is ever at the final name until it is complete.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { pipeline as pipelineCb, Writable } from 'node:stream';
import { finished, pipeline } from 'node:stream/promises';
import type { Logger } from 'pino';
import { LAYER_MARKER, LAYER_ROOTFS, LAYER_TAR_SPLIT, layerDir, type LayerMarker, METADATA_DIR } from '../core/cvmfs/layout.js';
import { ThinError } from '../core/errors/errors.js';
import { removeTree } from '../core/fs/fsutil.js';
import type { Host } from '../core/host/host.js';
import { BadContentError, ConvertError } from './errors.js';
import type { ImageSource } from './image/source.js';
import { type Descriptor, layerCompression } from './image/types.js';
import { DigestVerifier } from './image/verify.js';
import type { Progress } from './progress.js';
import { CATALOG_MARKER, type RepoTree } from './repo.js';
import { decompress, type ExtractLimits, extractLayer, tarSplitTee } from './tar.js';
import type { Semaphore } from '../core/util/concurrency.js';
import { shortDigest } from './util.js';
import { addNestedCatalogs, CATALOG_CUT } from './catalogs.js';
import type { LayerForm } from './whiteouts.js';
import { ingestLayer } from './ingest.js';
import type { Publisher } from './publish.js';

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

interface LayerJob {
  source: ImageSource;
  desc: Descriptor;
  /** From the image config, to verify the uncompressed content. */
  diffId: string | undefined;
  /** Image description, for messages. */
  image: string;
  index: number;
  count: number;
}

interface UnpackerOptions {
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
   * our marker (version 1). 'record': nothing a CVMFS publish interprets or drops is
   * written into layerfs; deletions, opaque dirs, xattrs and nested catalog markers
   * go into the marker's record (version 2), which readers turn into masks.
   * 'keep': `.wh.*` entries stay plain files, as DUCC writes them; readers mask them.
   * (whiteouts.ts decides and refuses what cannot be published.)
   */
  whiteouts?: LayerForm | undefined;
  /** record form: entries above which a layer gets nested catalogs (default CATALOG_CUT) */
  catalogCut?: number | undefined;
  /** Publish missing layers through this publisher's ingest hook instead of unpacking them. */
  ingest?: Publisher | undefined;
  /** Restores directory times after nested catalog markers are added. */
  host: Host;
}

export class LayerUnpacker {
  private readonly inflight = new Map<string, Promise<LayerOutcome>>();
  /** What this run did to a layer (an ingested layer is present afterwards: its summary keeps saying what happened). */
  private readonly done = new Map<string, LayerOutcome>();
  constructor(private readonly o: UnpackerOptions) {}

  unpack(job: LayerJob): Promise<LayerOutcome> {
    const hex = job.desc.digest.slice(7);
    const d = this.done.get(hex);
    if (d) return Promise.resolve(d);
    let p = this.inflight.get(hex);
    if (!p) {
      p = this.o.jobs.run(() => this.unpackOnce(job, hex));
      this.inflight.set(hex, p);
      p.then(
        (r) => {
          this.inflight.delete(hex);
          if (r.status === 'unpacked') this.done.set(hex, r);
        },
        () => this.inflight.delete(hex),
      );
    }
    // another image may have started this layer: name this caller's image and position
    return p.catch((e: unknown) => {
      if (!(e instanceof ConvertError)) throw e;
      throw new ConvertError({ image: job.image, layer: `${job.index + 1}/${job.count} ${job.desc.digest}`, entry: e.entry }, e.reason, e.kind, e.code, {
        cause: e,
      });
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

  /** The layer through the ingest hook: streamed, never unpacked here. */
  private async ingestOnce(
    job: LayerJob,
    compression: Parameters<typeof decompress>[1],
    key: string,
    t0: number,
    ctx: { image: string; layer: string },
  ): Promise<LayerOutcome> {
    const { desc } = job;
    try {
      const r = await ingestLayer({
        blob: job.source.openBlob(desc),
        desc,
        compression,
        diffId: job.diffId,
        publisher: this.o.ingest!,
        log: this.o.log,
        limits: this.o.limits,
        catalogCut: this.o.catalogCut ?? CATALOG_CUT,
        form: this.o.whiteouts === 'keep' ? 'keep' : 'record',
        onBytes: (n) => this.o.progress.layerBytes(key, n),
        onEntries: (n) => this.o.progress.layerFiles(key, n),
      });
      this.o.progress.layerDone(key, 'ingested');
      return {
        digest: desc.digest,
        status: 'unpacked',
        bytes: desc.size,
        files: r.entries,
        entries: r.entries,
        whiteouts: r.whiteouts,
        opaques: r.opaques,
        diffId: r.diffId,
        seconds: (Date.now() - t0) / 1000,
      };
    } catch (e) {
      this.o.progress.layerDone(key, 'FAILED');
      throw ConvertError.wrap(await this.blameContent(job, e), ctx);
    }
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
    const form = this.o.whiteouts ?? 'overlay';
    if (state === 'ours' || (state === 'foreign' && (!this.o.overwriteForeign || form === 'keep'))) {
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
    if (this.o.ingest) return this.ingestOnce(job, compression, key, t0, ctx);
    const tmp = await this.o.tree.tmpLayerDir(hex);
    const rootfs = path.join(tmp, LAYER_ROOTFS);
    const meta = path.join(tmp, METADATA_DIR);
    let split: ReturnType<typeof tarSplitTee> | null = null;
    try {
      await fsp.mkdir(rootfs, { mode: 0o755 });
      await fsp.mkdir(meta, { mode: 0o755 });
      const blob = job.source.openBlob(desc);
      const verifier = new DigestVerifier(desc.digest, desc.size, `blob ${desc.digest}`, (n) => this.o.progress.layerBytes(key, n));
      blob.on('error', (e) => verifier.destroy(e));
      blob.pipe(verifier);
      let res;
      try {
        const tar = decompress(verifier, compression);
        // the tar without its file contents, for podman (save, push) to rebuild this exact layer tar
        split = tarSplitTee(
          { file: path.join(meta, LAYER_TAR_SPLIT) },
          this.o.limits?.maxPaxHeaderBytes !== undefined ? { maxPaxHeaderBytes: this.o.limits.maxPaxHeaderBytes } : {},
        );
        // as the decompressor's own pipeline: an error on either side destroys both, nothing left unhandled
        pipelineCb(tar, split.stream, () => undefined);
        res = await extractLayer(split.stream, {
          dest: rootfs,
          whiteouts: form,
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
        throw new BadContentError(
          `uncompressed content has digest ${res.diffId}, the image config declares diff_id ${job.diffId}`,
          'CVMFS_THIN_DIFFID_MISMATCH',
        );
      }
      const recorded = await split.done;
      if (!recorded.ok)
        this.o.log.warn({ layer: desc.digest, reason: recorded.reason }, 'no tar-split for this layer: podman save/push of images with it will fail');
      const created = new Date().toISOString();
      const cut = this.o.catalogCut ?? CATALOG_CUT;
      const hidden = form === 'record' && res.entries > cut ? await addNestedCatalogs(this.o.host, rootfs, cut) : [];
      const marker: LayerMarker = {
        schema: 'cvmfs-thin/layer',
        version: form === 'record' ? 2 : 1,
        digest: desc.digest,
        diff_id: res.diffId,
        whiteouts: form === 'record' ? 'record' : 'overlay',
        created,
        entries: res.entries,
        whiteout_count: res.whiteouts + res.opaques,
        hardlinks: res.hardlinks,
        ...(form === 'record' ? { record: { ...res.record!, hidden } } : {}),
      };
      // the marker tells readers how the layer keeps its deletions (none for 'keep': readers scan)
      if (form !== 'keep') await fsp.writeFile(path.join(meta, LAYER_MARKER), `${JSON.stringify(marker)}\n`, { mode: 0o644 });
      // DUCC's podman LayerInfo
      const layersJson = [
        {
          id: res.diffId.slice(7),
          created,
          'compressed-diff-digest': desc.digest,
          'compressed-size': desc.size,
          'diff-digest': res.diffId,
          'diff-size': res.bytes,
        },
      ];
      await fsp.writeFile(path.join(meta, 'layers.json'), `${JSON.stringify(layersJson)}\n`, { mode: 0o644 });
      await fsp.writeFile(path.join(tmp, CATALOG_MARKER), '', { mode: 0o644 });
      // replace: a foreign layer with --overwrite-layers, or a broken directory (no layerfs) at the final name
      const replace = state === 'foreign' || (await this.o.tree.layerState(hex)) === null;
      const committed = await this.o.tree.commitDir(tmp, layerDir(this.o.tree.root, hex), { replace });
      this.o.progress.layerDone(key, committed ? 'unpacked' : 'present');
      this.o.log.info(
        { image: job.image, layer: desc.digest, entries: res.entries, bytes: res.bytes, whiteouts: res.whiteouts, opaques: res.opaques },
        committed ? 'layer unpacked' : 'layer appeared meanwhile',
      );
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
      await split?.abort().catch(() => undefined);
      await removeTree(tmp).catch((re: unknown) => this.o.log.error({ err: re, path: tmp }, 'cannot remove a temporary layer directory'));
      throw ConvertError.wrap(e, ctx);
    }
  }
}

/**
 * A layer published by streaming it to the ingest hook (`cvmfs_server
 * ingest --catalog -k -t - -b .layers/<xx>/<hex>`, DUCC's way), never
 * unpacked here: blob → digest check → decompression → LayerRewriter (the
 * layer under `layerfs/`, whiteouts and xattrs into the record) → the hook's
 * stdin. The record (`.metadata/cvmfs-thin-layer.json`, version 2), DUCC's
 * `layers.json` and nested catalog markers for a big layer end the tar, and
 * only once the blob's digest and the diff_id were checked: a stream that
 * fails kills the hook before its end-of-archive (publisher.ts) and the
 * abort hook runs.
 */
import type { Logger } from 'pino';
import { finished } from 'node:stream/promises';
import { LAYER_MARKER, LAYER_ROOTFS, LAYER_TAR_SPLIT, LAYERS_DIR, type LayerMarker, METADATA_DIR } from '../core/cvmfs/layout.js';
import { CATALOG_MARKER } from '../core/cvmfs/masks.js';
import { UnavailableError } from '../core/errors/errors.js';
import { chooseCatalogDirs } from './catalogs.js';
import { BadContentError } from './errors.js';
import type { Descriptor } from './image/types.js';
import { DigestVerifier } from './image/verify.js';
import type { Publisher } from './publish.js';
import { decompress, type ExtractLimits, LayerRewriter, type MemEntry, type RewriteResult, tarSplitTee } from './tar.js';

interface IngestJob {
  blob: NodeJS.ReadableStream;
  desc: Descriptor;
  compression: Parameters<typeof decompress>[1];
  diffId: string | undefined;
  publisher: Publisher;
  log: Logger;
  limits?: ExtractLimits | undefined;
  catalogCut: number;
  /** record (default) or DUCC's plain .wh.* files (`--whiteouts keep`) */
  form?: 'record' | 'keep' | undefined;
  onBytes?: (n: number) => void;
  onEntries?: (n: number) => void;
}

const utf8 = (b: string): string => Buffer.from(b, 'latin1').toString('utf8');

/** The entries that end an ingested layer: nested catalog markers, the record, DUCC's layers.json, the tar-split (for podman). */
export function ingestTrailer(r: RewriteResult, desc: Descriptor, catalogCut: number, form: 'record' | 'keep' = 'record', tarSplit?: Buffer): MemEntry[] {
  // where the image has its own marker, CVMFS makes a catalog anyway: neither replace nor hide the image's file
  const dirs =
    r.entries > catalogCut
      ? chooseCatalogDirs(r.direct, catalogCut)
          .filter((d) => !r.catalogs.has(d))
          .map(utf8)
      : [];
  const hidden = dirs.map((d) => `${d}/${CATALOG_MARKER}`);
  const created = new Date().toISOString();
  const marker: LayerMarker = {
    schema: 'cvmfs-thin/layer',
    version: 2,
    digest: desc.digest,
    diff_id: r.diffId,
    whiteouts: 'record',
    created,
    entries: r.entries,
    whiteout_count: r.whiteouts + r.opaques,
    hardlinks: r.hardlinks,
    record: { ...r.record, hidden },
  };
  const layersJson = [
    { id: r.diffId.slice(7), created, 'compressed-diff-digest': desc.digest, 'compressed-size': desc.size, 'diff-digest': r.diffId, 'diff-size': r.bytes },
  ];
  return [
    ...hidden.map((h) => ({ name: `${LAYER_ROOTFS}/${h}`, data: '' })),
    { name: `${METADATA_DIR}/` },
    { name: `${METADATA_DIR}/layers.json`, data: `${JSON.stringify(layersJson)}\n` },
    ...(tarSplit ? [{ name: `${METADATA_DIR}/${LAYER_TAR_SPLIT}`, data: tarSplit }] : []),
    // last: its presence says the layer is complete (DUCC's form has none: readers scan its .wh.* files)
    ...(form === 'record' ? [{ name: `${METADATA_DIR}/${LAYER_MARKER}`, data: `${JSON.stringify(marker)}\n` }] : []),
  ];
}

/** Publish one layer through the ingest hook. Resolves with what the rewriter saw. */
export async function ingestLayer(j: IngestJob): Promise<RewriteResult> {
  const hex = j.desc.digest.slice(7);
  const base = `${LAYERS_DIR}/${hex.slice(0, 2)}/${hex}`;
  const verifier = new DigestVerifier(j.desc.digest, j.desc.size, `blob ${j.desc.digest}`, j.onBytes);
  j.blob.on('error', (e) => verifier.destroy(e));
  j.blob.pipe(verifier);
  let result: RewriteResult | null = null;
  // the tar without its file contents, for podman (save, push) to rebuild this exact layer tar
  const split = tarSplitTee({ memory: true }, j.limits?.maxPaxHeaderBytes !== undefined ? { maxPaxHeaderBytes: j.limits.maxPaxHeaderBytes } : {});
  const rewriter = new LayerRewriter({
    prefix: `${LAYER_ROOTFS}/`,
    keepWhiteouts: j.form === 'keep',
    baseEntry: true,
    ...(j.limits?.maxNameBytes !== undefined ? { maxNameBytes: j.limits.maxNameBytes } : {}),
    ...(j.limits?.maxEntries !== undefined ? { maxEntries: j.limits.maxEntries } : {}),
    ...(j.limits?.maxTotalBytes !== undefined ? { maxTotalBytes: j.limits.maxTotalBytes } : {}),
    ...(j.limits?.maxPaxHeaderBytes !== undefined ? { maxPaxHeaderBytes: j.limits.maxPaxHeaderBytes } : {}),
    trailer: async (r) => {
      // the decompressor may stop before the blob's end: read the rest so the whole blob is checked
      if (!verifier.verified) {
        verifier.unpipe();
        verifier.resume();
        await finished(verifier);
      }
      if (!verifier.verified) throw new BadContentError(`blob ${j.desc.digest} was not read to its end`, 'CVMFS_THIN_DIGEST_MISMATCH');
      if (j.diffId !== undefined && r.diffId !== j.diffId) {
        throw new BadContentError(`uncompressed content has digest ${r.diffId}, the image config declares diff_id ${j.diffId}`, 'CVMFS_THIN_DIFFID_MISMATCH');
      }
      result = r;
      j.onEntries?.(r.entries);
      const recorded = await split.done;
      if (!recorded.ok)
        j.log.warn({ layer: j.desc.digest, reason: recorded.reason }, 'no tar-split for this layer: podman save/push of images with it will fail');
      return ingestTrailer(r, j.desc, j.catalogCut, j.form ?? 'record', recorded.ok ? recorded.data : undefined);
    },
  });
  const tar = decompress(verifier, j.compression);
  tar.on('error', (e) => rewriter.destroy(e));
  verifier.on('error', (e) => rewriter.destroy(e));
  split.stream.on('error', (e) => rewriter.destroy(e));
  tar.pipe(split.stream).pipe(rewriter);
  try {
    await j.publisher.ingest(base, rewriter);
  } finally {
    j.blob.unpipe?.(verifier);
    tar.destroy();
    if (!result) await split.abort();
  }
  if (!result)
    throw new UnavailableError(`layer ${j.desc.digest}: the ingest hook exited before the layer was streamed to its end`, 'CVMFS_THIN_INGEST_INCOMPLETE');
  j.log.info({ layer: j.desc.digest, base, entries: (result as RewriteResult).entries }, 'layer ingested');
  return result;
}

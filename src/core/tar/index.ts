/**
 * The tar library shared by the converter and the graph driver.
 *
 * - extractLayer: uncompressed layer tar → directory (overlay/apply/keep/record whiteouts)
 * - LayerRewriter: layer tar → the same layer as a tar for a streamed publish (ingest), whiteouts and xattrs into a record
 * - decompress / compressionForMediaType: gzip, zstd, sniffing
 * - tarSplitTee: records a layer's tar-split (its tar without file contents) while it passes through
 * - packDirectory / packEntries: directory or in-memory entries → tar stream
 * - UnsafeTarError: every refusal (reason says which)
 */
export {
  extractLayer,
  extractLayerFile,
  type ExtractLimits,
  type ExtractOptions,
  type ExtractProgress,
  type ExtractResult,
  type WhiteoutMode,
  type WriterStats,
} from './extract.js';
export { UnsafeTarError, TarIoError, type UnsafeTarReason } from './errors.js';
export type { IdMap, IdMaps } from './idmap.js';
export { LayerRewriter, type RewriteOptions, type RewriteResult } from './rewrite.js';
export { tarSplitTee, type TarSplitOutcome, type TarSplitTee } from './split.js';
export type { LayerRecordData } from './writer-meta.js';
export { packDirectory, packEntries, packEntriesToBuffer, type MemEntry, type PackChange, type PackOptions } from './pack.js';
export {
  decompress,
  compressionForMediaType,
  sniffCompression,
  isForeignLayer,
  type Compression,
  type Decompressor,
  type DecompressOptions,
} from './decompress.js';

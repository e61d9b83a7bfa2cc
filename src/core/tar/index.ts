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
  extractLayerChunks,
  extractLayerFile,
  type ExtractLimits,
  type ExtractOptions,
  type ExtractResult,
  type WhiteoutMode,
} from './extract.js';
export { UnsafeTarError, TarIoError, type UnsafeTarReason } from './errors.js';
export { LayerRewriter, type RewriteResult } from './rewrite.js';
export { tarSplitTee } from './split.js';
export { packDirectory, packEntries, packEntriesToBuffer, type MemEntry } from './pack.js';
export { decompress, compressionForMediaType, sniffCompression, isForeignLayer } from './decompress.js';

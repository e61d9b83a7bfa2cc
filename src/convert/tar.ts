/**
 * The converter's only door to the shared tar library (src/core/tar): layer
 * extraction and decompression, the parser (image archives) and the
 * in-memory packer (thin layers, image archives). Nothing in src/convert
 * reads or writes tars itself.
 */
export {
  compressionForMediaType,
  decompress,
  extractLayer,
  LayerRewriter,
  type MemEntry,
  type RewriteResult,
  tarSplitTee,
  packEntriesToBuffer,
  type ExtractLimits,
} from '../core/tar/index.js';
export { TarParser } from '../core/tar/parser.js';

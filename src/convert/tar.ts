/**
 * The converter's only door to the shared tar library (src/core/tar): layer
 * extraction and decompression. Nothing in src/convert parses layer tars.
 */
export {
  compressionForMediaType,
  decompress,
  extractLayer,
  type ExtractLimits,
  type ExtractProgress,
  type ExtractResult,
  UnsafeTarError,
} from '../core/tar/index.js';

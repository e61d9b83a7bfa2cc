/**
 * Where images come from and go to. One interface per direction, one
 * implementation per transport (registry, OCI layout, OCI archive, Docker
 * archive). Sources hand out raw manifests and blob streams; the pipeline
 * verifies digests (verify.ts) and never trusts a source's claims.
 */
import type { Readable } from 'node:stream';
import type { DockerReference } from '../reference.js';
import type { Descriptor, Platform, RawManifest } from './types.js';

export interface ImageSource {
  /** The source in transport syntax, for messages. */
  readonly description: string;
  /** The image's registry name, when the source knows one (names the DUCC tree entry and the default thin target). */
  readonly name: DockerReference | undefined;
  /** The manifest or index the reference points at. */
  topManifest(): Promise<RawManifest>;
  /** A child manifest of an index (verified against the descriptor). */
  manifest(desc: Descriptor): Promise<RawManifest>;
  /** A small blob (config) in memory, verified. */
  blobBytes(desc: Descriptor, limit: number): Promise<Buffer>;
  /** A blob as a stream, NOT verified: pipe it through a DigestVerifier. */
  openBlob(desc: Descriptor): Readable;
  close(): Promise<void>;
}

/** A blob of an image to write, in memory (thin images are tiny). */
export interface BlobToWrite {
  digest: string;
  mediaType: string;
  bytes: Buffer;
}

export interface ImageToWrite {
  manifest: RawManifest;
  config: BlobToWrite;
  layers: (BlobToWrite & { /** uncompressed tar, for docker-archive */ tar: Buffer; diffId: string })[];
  platform: Platform;
}

export interface WriteResult {
  /** Digest of what the reference now points at (manifest or index; the image ID for docker-archive). */
  digest: string;
  /** The target in transport syntax. */
  target: string;
}

export interface ImageTarget {
  readonly description: string;
  /** Write images; with `index`, the reference points at the index, else at the single image. */
  write(images: ImageToWrite[], index: RawManifest | null): Promise<WriteResult>;
  /** Digest the reference currently points at, or null (used to skip work already done). */
  current(): Promise<string | null>;
}

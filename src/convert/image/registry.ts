/** `docker://` sources and targets on the registry client. */
import type { Readable } from 'node:stream';
import { sha256Digest } from '../../core/util/digest.js';
import { BadContentError } from '../errors.js';
import { type DockerReference, formatDockerReference } from '../reference.js';
import type { RegistryClient } from '../registry/client.js';
import type { ImageSource, ImageTarget, ImageToWrite, WriteResult } from './source.js';
import type { Descriptor, RawManifest } from './types.js';

export class RegistrySource implements ImageSource {
  readonly description: string;
  readonly name: DockerReference;
  constructor(
    private readonly client: RegistryClient,
    private readonly ref: DockerReference,
  ) {
    this.description = `docker://${formatDockerReference(ref)}`;
    this.name = ref;
  }
  topManifest(): Promise<RawManifest> {
    return this.client.getManifest(this.ref.repository, this.ref.digest ?? this.ref.tag ?? 'latest');
  }
  async manifest(desc: Descriptor): Promise<RawManifest> {
    const m = await this.client.getManifest(this.ref.repository, desc.digest);
    if (m.bytes.length !== desc.size)
      throw new BadContentError(`${this.description}: manifest ${desc.digest} has ${m.bytes.length} bytes, the index declares ${desc.size}`);
    return { ...m, mediaType: m.mediaType || desc.mediaType };
  }
  blobBytes(desc: Descriptor, limit: number): Promise<Buffer> {
    return this.client.getBlobBytes(this.ref.repository, desc.digest, limit);
  }
  openBlob(desc: Descriptor): Readable {
    return this.client.openBlob(this.ref.repository, desc.digest, desc.size);
  }
  async close(): Promise<void> {}
}

/** Which repositories of a registry hold which blobs (this process): candidates for cross-repository mounts. */
const seenBlobs = new Map<string, Set<string>>();
function remember(registry: string, repo: string, digest: string): void {
  const k = `${registry}\n${digest}`;
  let s = seenBlobs.get(k);
  if (!s) seenBlobs.set(k, (s = new Set()));
  s.add(repo);
}
function mountCandidates(registry: string, digest: string): string[] {
  return [...(seenBlobs.get(`${registry}\n${digest}`) ?? [])];
}

export class RegistryTarget implements ImageTarget {
  readonly description: string;
  constructor(
    private readonly client: RegistryClient,
    private readonly ref: DockerReference,
  ) {
    this.description = `docker://${formatDockerReference(ref)}`;
  }

  private get tag(): string {
    return this.ref.tag ?? 'latest';
  }

  async current(): Promise<string | null> {
    const h = await this.client.headManifest(this.ref.repository, this.tag);
    return h?.digest ?? null;
  }

  /** Blobs first (HEAD, mount, upload), then child manifests by digest, then the tag: a tag never points at missing content. */
  async write(images: ImageToWrite[], index: RawManifest | null): Promise<WriteResult> {
    const repo = this.ref.repository;
    const reg = this.client.registry;
    for (const img of images) {
      for (const b of [img.config, ...img.layers]) {
        await this.client.pushBlob(repo, { digest: b.digest, size: b.bytes.length }, b.bytes, mountCandidates(reg, b.digest));
        remember(reg, repo, b.digest);
      }
      if (index) await this.client.putManifest(repo, img.manifest.digest, img.manifest);
    }
    const top = index ?? images[0]!.manifest;
    if (top.digest !== sha256Digest(top.bytes)) throw new BadContentError(`${this.description}: internal: manifest digest mismatch`);
    await this.client.putManifest(repo, this.tag, top);
    return { digest: top.digest, target: this.description };
  }
}

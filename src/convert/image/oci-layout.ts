/** OCI image layouts (`oci:DIR[:TAG]`): read as a source, written as a target. */
import { createReadStream, promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { parseDigest, sha256Digest } from '../../core/util/digest.js';
import { NotFoundError } from '../../core/errors/errors.js';
import { writeFileAtomic } from '../../core/fs/fsutil.js';
import { BadContentError, BadReferenceError } from '../errors.js';
import type { Host } from '../../core/host/host.js';
import { acquireLock } from '../../core/state/lock.js';
import { type DockerReference, parseDockerReference } from '../reference.js';
import type { ImageSource, ImageTarget, ImageToWrite, WriteResult } from './source.js';
import { canonicalJson, type Descriptor, type ImageIndex, MT, parseManifest, type RawManifest } from './types.js';

const REF_NAME = 'org.opencontainers.image.ref.name';
const CONTAINERD_NAME = 'io.containerd.image.name';

function blobPath(dir: string, digest: string): string {
  const d = parseDigest(digest);
  if (!d) throw new BadContentError(`blob digest ${JSON.stringify(digest)} is not a sha256 digest`);
  return path.join(dir, 'blobs', d.algorithm, d.hex);
}

async function readIndex(dir: string, what: string): Promise<{ raw: RawManifest; index: ImageIndex }> {
  let bytes: Buffer;
  try {
    bytes = await fsp.readFile(path.join(dir, 'index.json'));
  } catch (e) {
    throw new NotFoundError(
      `${what}: ${path.join(dir, 'index.json')}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'not an OCI image layout (no index.json)' : (e as Error).message}`,
      'CVMFS_THIN_INPUT_NOT_FOUND',
    );
  }
  const raw: RawManifest = { bytes, mediaType: MT.ociIndex, digest: sha256Digest(bytes) };
  const p = parseManifest(raw, `${what}: index.json`);
  if (p.kind !== 'index') throw new BadContentError(`${what}: index.json is not an image index`);
  return { raw, index: p.index };
}

export class OciLayoutSource implements ImageSource {
  readonly description: string;
  name: DockerReference | undefined;
  private chosen: Descriptor | undefined;

  constructor(
    private readonly dir: string,
    private readonly tag: string | undefined,
    description?: string,
  ) {
    this.description = description ?? `oci:${dir}${tag !== undefined ? `:${tag}` : ''}`;
  }

  /** Select the index.json entry (by ref name, or the only one). Also learns the image name if annotated. */
  private async select(): Promise<Descriptor> {
    if (this.chosen) return this.chosen;
    const { index } = await readIndex(this.dir, this.description);
    let d: Descriptor | undefined;
    if (this.tag !== undefined) {
      d = index.manifests.find((m) => m.annotations?.[REF_NAME] === this.tag);
      if (!d) {
        const names = index.manifests.map((m) => m.annotations?.[REF_NAME]).filter(Boolean);
        throw new NotFoundError(
          `${this.description}: no image tagged ${JSON.stringify(this.tag)} (tags: ${names.join(', ') || 'none'})`,
          'CVMFS_THIN_INPUT_NOT_FOUND',
        );
      }
    } else if (index.manifests.length === 1) {
      d = index.manifests[0]!;
    } else {
      const names = index.manifests.map((m) => m.annotations?.[REF_NAME] ?? m.digest);
      throw new BadReferenceError(`${this.description}: the layout holds ${index.manifests.length} images; name one (${names.join(', ')})`);
    }
    const full = d.annotations?.[CONTAINERD_NAME];
    if (full) {
      try {
        this.name = parseDockerReference(full);
      } catch {
        /* not a reference: keep unnamed */
      }
    }
    this.chosen = d;
    return d;
  }

  async topManifest(): Promise<RawManifest> {
    const d = await this.select();
    return this.manifest(d);
  }

  async manifest(desc: Descriptor): Promise<RawManifest> {
    const bytes = await this.blobBytes(desc, 4 << 20);
    return { bytes, mediaType: desc.mediaType, digest: desc.digest };
  }

  async blobBytes(desc: Descriptor, limit: number): Promise<Buffer> {
    if (desc.size > limit) throw new BadContentError(`${this.description}: blob ${desc.digest} of ${desc.size} bytes is larger than ${limit}`);
    let bytes: Buffer;
    try {
      bytes = await fsp.readFile(blobPath(this.dir, desc.digest));
    } catch (e) {
      throw new NotFoundError(
        `${this.description}: blob ${desc.digest}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'missing from the layout' : (e as Error).message}`,
        'CVMFS_THIN_INPUT_NOT_FOUND',
      );
    }
    const got = sha256Digest(bytes);
    if (got !== desc.digest || bytes.length !== desc.size) {
      throw new BadContentError(
        `${this.description}: blob ${desc.digest}: content has digest ${got} and ${bytes.length} bytes (declared ${desc.size})`,
        'CVMFS_THIN_DIGEST_MISMATCH',
      );
    }
    return bytes;
  }

  openBlob(desc: Descriptor): Readable {
    const s = createReadStream(blobPath(this.dir, desc.digest), { highWaterMark: 1 << 20 });
    s.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') e.message = `${this.description}: blob ${desc.digest} is missing from the layout`;
    });
    return s;
  }

  async close(): Promise<void> {}
}

/** Write an image (or index) into an OCI layout and point `tag` at it; other tags are kept. */
export async function writeOciLayout(dir: string, tag: string, images: ImageToWrite[], index: RawManifest | null, host: Host, name?: string): Promise<string> {
  await fsp.mkdir(path.join(dir, 'blobs', 'sha256'), { recursive: true });
  const lock = await acquireLock(path.join(dir, '.cvmfs-thin.lock'), { host });
  try {
    const layoutFile = path.join(dir, 'oci-layout');
    try {
      await fsp.access(layoutFile);
    } catch {
      await writeFileAtomic(layoutFile, JSON.stringify({ imageLayoutVersion: '1.0.0' }));
    }
    const put = async (digest: string, bytes: Buffer) => {
      const p = blobPath(dir, digest);
      try {
        const st = await fsp.stat(p);
        if (st.size === bytes.length) return;
      } catch {
        /* missing */
      }
      await writeFileAtomic(p, bytes);
    };
    for (const img of images) {
      for (const b of [img.config, ...img.layers]) await put(b.digest, b.bytes);
      await put(img.manifest.digest, img.manifest.bytes);
    }
    const top = index ?? images[0]!.manifest;
    if (index) await put(index.digest, index.bytes);
    let existing: Descriptor[] = [];
    try {
      existing = (await readIndex(dir, `oci:${dir}`)).index.manifests;
    } catch (e) {
      if (!(e instanceof NotFoundError)) throw e;
    }
    const annotations: Record<string, string> = { [REF_NAME]: tag };
    if (name) annotations[CONTAINERD_NAME] = name;
    const entry: Descriptor = { mediaType: top.mediaType, digest: top.digest, size: top.bytes.length, annotations };
    if (!index) entry.platform = images[0]!.platform;
    const manifests = [...existing.filter((m) => m.annotations?.[REF_NAME] !== tag), entry];
    const out = { schemaVersion: 2, mediaType: MT.ociIndex, manifests };
    await writeFileAtomic(path.join(dir, 'index.json'), canonicalJson(out));
    return top.digest;
  } finally {
    lock.release();
  }
}

export class OciLayoutTarget implements ImageTarget {
  readonly description: string;
  constructor(
    private readonly dir: string,
    private readonly tag: string,
    private readonly host: Host,
    private readonly imageName?: string,
  ) {
    this.description = `oci:${dir}:${tag}`;
  }
  async current(): Promise<string | null> {
    try {
      const { index } = await readIndex(this.dir, this.description);
      return index.manifests.find((m) => m.annotations?.[REF_NAME] === this.tag)?.digest ?? null;
    } catch {
      return null;
    }
  }
  async write(images: ImageToWrite[], index: RawManifest | null): Promise<WriteResult> {
    const digest = await writeOciLayout(this.dir, this.tag, images, index, this.host, this.imageName);
    return { digest, target: this.description };
  }
}

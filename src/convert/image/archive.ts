/**
 * Archive transports: `oci-archive:FILE[:TAG]` (a tar of an OCI layout) and
 * `docker-archive:FILE[:REF|:@INDEX]` (`docker save` format). Reading spools
 * the archive's blobs into a private temporary directory (regular files under
 * cleaned, allow-listed names only; links become aliases, never links on
 * disk), then serves them like a layout. Reading and writing use the shared
 * tar library (src/core/tar); writing builds the tar in memory (thin images
 * are small) and renames it into place.
 */
import { createReadStream, promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import type { Host } from '../../core/host/host.js';
import { sha256Digest } from '../../core/util/digest.js';
import { NotFoundError } from '../../core/errors/errors.js';
import { BadContentError, BadReferenceError } from '../errors.js';
import { type DockerReference, familiarName, parseDockerReference } from '../reference.js';
import { type MemEntry, packEntriesToBuffer } from '../tar.js';
import { cleanArchiveName, resolveName, spool, type Spooled } from './archive-spool.js';
import { makeSpoolDir, type SpoolDir } from './spool-dir.js';
import { OciLayoutSource, writeOciLayout } from './oci-layout.js';
import type { ImageSource, ImageTarget, ImageToWrite, WriteResult } from './source.js';
import { canonicalJson, type Descriptor, MT, type RawManifest } from './types.js';

/** `oci-archive:` source: spool, then read as a layout. */
export async function openOciArchive(file: string, tag: string | undefined, host: Host, tmpRoot?: string): Promise<ImageSource> {
  const description = `oci-archive:${file}${tag !== undefined ? `:${tag}` : ''}`;
  const sd = await makeSpoolDir(host, tmpRoot);
  try {
    await spool(file, sd.dir, description);
  } catch (e) {
    await sd.remove();
    throw e;
  }
  const src = new OciLayoutSource(sd.dir, tag, description);
  const close = src.close.bind(src);
  src.close = async () => {
    await close();
    await sd.remove();
  };
  return src;
}

interface DockerArchiveEntry {
  Config: string;
  RepoTags?: string[] | null;
  Layers: string[];
}

function layerMediaType(magic: Buffer): string {
  if (magic[0] === 0x1f && magic[1] === 0x8b) return MT.ociLayerGzip;
  if (magic[0] === 0x28 && magic[1] === 0xb5 && magic[2] === 0x2f && magic[3] === 0xfd) return MT.ociLayerZstd;
  return MT.ociLayer;
}

function sameRef(a: DockerReference, b: DockerReference): boolean {
  return a.registry === b.registry && a.repository === b.repository && (a.tag ?? 'latest') === (b.tag ?? 'latest');
}

/** `docker-archive:` source. The manifest is synthesised (OCI) from manifest.json; layers are keyed by the digest of the stored blob. */
export class DockerArchiveSource implements ImageSource {
  readonly description: string;
  name: DockerReference | undefined;
  private sp!: Spooled;
  private spoolDir!: SpoolDir;
  private top!: RawManifest;
  private readonly blobs = new Map<string, string>();

  private constructor(
    private readonly file: string,
    private readonly sel: { ref?: DockerReference | undefined; index?: number | undefined },
  ) {
    this.description = `docker-archive:${file}${sel.ref ? `:${familiarName(sel.ref)}` : sel.index !== undefined ? `:@${sel.index}` : ''}`;
    this.name = sel.ref;
  }

  static async open(
    file: string,
    sel: { ref?: DockerReference | undefined; index?: number | undefined },
    host: Host,
    tmpRoot?: string,
  ): Promise<DockerArchiveSource> {
    const s = new DockerArchiveSource(file, sel);
    s.spoolDir = await makeSpoolDir(host, tmpRoot);
    try {
      s.sp = await spool(file, s.spoolDir.dir, s.description);
      await s.load();
    } catch (e) {
      await s.spoolDir.remove();
      throw e;
    }
    return s;
  }

  private async load(): Promise<void> {
    const what = this.description;
    const mf = resolveName(this.sp, 'manifest.json');
    if (!this.sp.files.has(mf)) throw new BadContentError(`${what}: no manifest.json (not a docker save archive)`, 'CVMFS_THIN_BAD_ARCHIVE');
    let entries: DockerArchiveEntry[];
    try {
      entries = JSON.parse(await fsp.readFile(path.join(this.sp.dir, mf), 'utf8')) as DockerArchiveEntry[];
    } catch (e) {
      throw new BadContentError(`${what}: manifest.json is not valid JSON: ${(e as Error).message}`, 'CVMFS_THIN_BAD_ARCHIVE');
    }
    if (!Array.isArray(entries) || entries.length === 0) throw new BadContentError(`${what}: manifest.json lists no image`, 'CVMFS_THIN_BAD_ARCHIVE');
    let entry: DockerArchiveEntry | undefined;
    if (this.sel.index !== undefined) {
      entry = entries[this.sel.index];
      if (!entry)
        throw new NotFoundError(`${what}: the archive holds ${entries.length} image(s); @${this.sel.index} does not exist`, 'CVMFS_THIN_INPUT_NOT_FOUND');
    } else if (this.sel.ref) {
      const want = this.sel.ref;
      entry = entries.find((e) =>
        (e.RepoTags ?? []).some((t) => {
          try {
            return sameRef(parseDockerReference(t), want);
          } catch {
            return false;
          }
        }),
      );
      if (!entry) {
        const tags = entries.flatMap((e) => e.RepoTags ?? []);
        throw new NotFoundError(`${what}: no image tagged ${familiarName(want)} (tags: ${tags.join(', ') || 'none'})`, 'CVMFS_THIN_INPUT_NOT_FOUND');
      }
    } else if (entries.length === 1) {
      entry = entries[0]!;
    } else {
      throw new BadReferenceError(`${what}: the archive holds ${entries.length} images; name one with :REF or :@INDEX`);
    }
    if (typeof entry.Config !== 'string' || !Array.isArray(entry.Layers))
      throw new BadContentError(`${what}: manifest.json entry lacks Config or Layers`, 'CVMFS_THIN_BAD_ARCHIVE');
    if (!this.name && entry.RepoTags?.[0]) {
      try {
        this.name = parseDockerReference(entry.RepoTags[0]);
      } catch {
        /* unnamed */
      }
    }
    const fileOf = (n: string, kind: string) => {
      const clean = cleanArchiveName(n, what);
      const r = clean ? resolveName(this.sp, clean) : undefined;
      const info = r ? this.sp.files.get(r) : undefined;
      if (!r || !info)
        throw new BadContentError(`${what}: ${kind} ${JSON.stringify(n)} is listed in manifest.json but missing from the archive`, 'CVMFS_THIN_BAD_ARCHIVE');
      return { rel: r, ...info };
    };
    const cfg = fileOf(entry.Config, 'config');
    this.blobs.set(cfg.digest, path.join(this.sp.dir, cfg.rel));
    const layers: Descriptor[] = [];
    for (const l of entry.Layers) {
      const f = fileOf(l, 'layer');
      const p = path.join(this.sp.dir, f.rel);
      const fh = await fsp.open(p, 'r');
      const magic = Buffer.alloc(4);
      await fh.read(magic, 0, 4, 0);
      await fh.close();
      this.blobs.set(f.digest, p);
      layers.push({ mediaType: layerMediaType(magic), digest: f.digest, size: f.size });
    }
    const manifest = {
      schemaVersion: 2,
      mediaType: MT.ociManifest,
      config: { mediaType: MT.ociConfig, digest: cfg.digest, size: cfg.size },
      layers,
    };
    const bytes = canonicalJson(manifest);
    this.top = { bytes, mediaType: MT.ociManifest, digest: sha256Digest(bytes) };
  }

  async topManifest(): Promise<RawManifest> {
    return this.top;
  }
  async manifest(desc: Descriptor): Promise<RawManifest> {
    throw new NotFoundError(`${this.description}: no manifest ${desc.digest} (docker archives hold single-platform images)`, 'CVMFS_THIN_INPUT_NOT_FOUND');
  }
  private pathOf(desc: Descriptor): string {
    const p = this.blobs.get(desc.digest);
    if (!p) throw new NotFoundError(`${this.description}: no blob ${desc.digest}`, 'CVMFS_THIN_INPUT_NOT_FOUND');
    return p;
  }
  async blobBytes(desc: Descriptor, limit: number): Promise<Buffer> {
    if (desc.size > limit) throw new BadContentError(`${this.description}: blob ${desc.digest} is larger than ${limit} bytes`);
    return fsp.readFile(this.pathOf(desc));
  }
  openBlob(desc: Descriptor): Readable {
    return createReadStream(this.pathOf(desc), { highWaterMark: 1 << 20 });
  }
  async close(): Promise<void> {
    await this.spoolDir.remove();
  }
  /** The archive file this source reads. */
  get path(): string {
    return this.file;
  }
}

/** Write a tar of in-memory entries (thin images are small) under a temporary name, then rename it into place. */
async function packToFile(file: string, entries: MemEntry[]): Promise<void> {
  await fsp.mkdir(path.dirname(file), { recursive: true });
  const tmp = `${file}.tmp-${process.pid}-${Date.now()}`;
  try {
    await fsp.writeFile(tmp, packEntriesToBuffer(entries), { mode: 0o644 });
    await fsp.rename(tmp, file);
  } catch (e) {
    await fsp.rm(tmp, { force: true });
    throw e;
  }
}

/** `oci-archive:` target: the tar of a fresh layout holding this image under `tag`. */
export class OciArchiveTarget implements ImageTarget {
  readonly description: string;
  constructor(
    private readonly file: string,
    private readonly tag: string,
    private readonly host: Host,
    private readonly tmpRoot?: string,
    private readonly imageName?: string,
  ) {
    this.description = `oci-archive:${file}:${tag}`;
  }
  async current(): Promise<string | null> {
    try {
      const src = await openOciArchive(this.file, this.tag, this.host, this.tmpRoot);
      try {
        return (await src.topManifest()).digest;
      } finally {
        await src.close();
      }
    } catch {
      return null;
    }
  }
  async write(images: ImageToWrite[], index: RawManifest | null): Promise<WriteResult> {
    const sd = await makeSpoolDir(this.host, this.tmpRoot);
    const dir = sd.dir;
    try {
      const digest = await writeOciLayout(dir, this.tag, images, index, this.host, this.imageName);
      const entries: MemEntry[] = [
        { name: 'oci-layout', data: await fsp.readFile(path.join(dir, 'oci-layout')) },
        { name: 'index.json', data: await fsp.readFile(path.join(dir, 'index.json')) },
        { name: 'blobs/' },
        { name: 'blobs/sha256/' },
      ];
      for (const n of (await fsp.readdir(path.join(dir, 'blobs', 'sha256'))).sort()) {
        entries.push({ name: `blobs/sha256/${n}`, data: await fsp.readFile(path.join(dir, 'blobs', 'sha256', n)) });
      }
      await packToFile(this.file, entries);
      return { digest, target: this.description };
    } finally {
      await sd.remove();
    }
  }
}

/**
 * `docker-archive:` target, loadable by `docker load` and `ctr image import`:
 * `<config hex>.json`, `<diff id hex>/layer.tar` (uncompressed), `manifest.json`,
 * `repositories`. Holds one image (one platform).
 */
export class DockerArchiveTarget implements ImageTarget {
  readonly description: string;
  constructor(
    private readonly file: string,
    private readonly ref: DockerReference | undefined,
    private readonly host: Host,
  ) {
    this.description = `docker-archive:${file}${ref ? `:${familiarName(ref)}` : ''}`;
  }
  async current(): Promise<string | null> {
    try {
      const s = await DockerArchiveSource.open(this.file, this.ref ? { ref: this.ref } : {}, this.host);
      try {
        const m = JSON.parse((await s.topManifest()).bytes.toString()) as { config: { digest: string } };
        return m.config.digest;
      } finally {
        await s.close();
      }
    } catch {
      return null;
    }
  }
  async write(images: ImageToWrite[], index: RawManifest | null): Promise<WriteResult> {
    if (images.length !== 1 || index) {
      throw new BadReferenceError(
        `${this.description}: a docker archive holds one platform; write multi-platform thin images to docker://, oci: or oci-archive:`,
      );
    }
    const img = images[0]!;
    const cfgHex = img.config.digest.slice(7);
    const layerNames = img.layers.map((l) => `${l.diffId.slice(7)}/layer.tar`);
    const entry: Record<string, unknown> = { Config: `${cfgHex}.json`, RepoTags: this.ref ? [familiarName(this.ref)] : null, Layers: layerNames };
    const repositories: Record<string, Record<string, string>> = {};
    if (this.ref) {
      const fam = familiarName({ ...this.ref, tag: undefined, digest: undefined });
      repositories[fam] = { [this.ref.tag ?? 'latest']: img.layers[img.layers.length - 1]!.diffId.slice(7) };
    }
    const entries: MemEntry[] = [{ name: `${cfgHex}.json`, data: img.config.bytes }];
    for (let i = 0; i < img.layers.length; i++) {
      const l = img.layers[i]!;
      entries.push({ name: `${l.diffId.slice(7)}/` }, { name: layerNames[i]!, data: l.tar }, { name: `${l.diffId.slice(7)}/VERSION`, data: '1.0' });
    }
    entries.push({ name: 'manifest.json', data: canonicalJson([entry]) });
    if (this.ref) entries.push({ name: 'repositories', data: canonicalJson(repositories) });
    await packToFile(this.file, entries);
    return { digest: img.config.digest, target: this.description };
  }
}

/**
 * Converting one image reference: resolve the manifest (and platforms of an
 * index), unpack every layer in parallel (bounded, deduplicated), build
 * chains / flat trees when asked, write the thin image, then the DUCC
 * metadata (manifest.json last) and the readable link. A failing layer fails
 * its image but never stops the other layers or images; every error names
 * image, layer and entry.
 */
import path from 'node:path';
import type { Logger } from 'pino';
import { type ErrorCode, InternalError, ThinError, toThinError } from '../core/errors.js';
import { ConvertError } from './errors.js';
import { buildMerged } from './flat.js';
import { formatPlatform, hostPlatform, imageEntries, type PlatformSpec, platformDirName, platformMatches, selectPlatform } from './image/platform.js';
import type { ImageSource, ImageToWrite } from './image/source.js';
import { openSource, openTarget, type Registries, type TransportOptions } from './image/transports.js';
import { type Descriptor, type ImageConfig, type ImageManifest, MAX_CONFIG_BYTES, parseConfig, parseManifest, type Platform, type RawManifest } from './image/types.js';
import { type LayerOutcome, LayerUnpacker } from './layer.js';
import type { Progress } from './progress.js';
import type { Publisher } from './publish.js';
import {
  type DockerReference,
  defaultThinReference,
  duccImageName,
  formatImageReference,
  type ImageReference,
} from './reference.js';
import { type ImageRecord, RepoTree } from './repo.js';
import type { ExtractLimits } from './tar.js';
import { buildThinImage, buildThinIndex } from './thin.js';
import { Semaphore } from './util.js';
import { addImageToPodmanStore, podmanInput, podmanName } from './podman/index.js';
import { flatDir } from '../core/cvmfs/layout.js';
import { pathExists } from '../core/fsutil.js';
import { promises as fsp } from 'node:fs';

export interface ConverterOptions {
  repositoryDir: string;
  repository: string;
  /** Explicit `--platform`; default: the host's. */
  platform?: PlatformSpec | undefined;
  allPlatforms?: boolean | undefined;
  chains?: boolean | undefined;
  flat?: boolean | undefined;
  /** Convert even when the tree says it is up to date (DUCC's --convert-again). */
  force?: boolean | undefined;
  overwriteForeign?: boolean | undefined;
  whiteouts?: 'overlay' | 'keep' | undefined;
  /** Also add each image to `<repositoryDir>/podmanStore` (podman / CRI-O additional image store). */
  podmanStore?: boolean | undefined;
  /** Layers unpacked at once, across all images of the run. */
  jobs?: number | undefined;
  limits?: ExtractLimits | undefined;
  progress: Progress;
  log: Logger;
  signal?: AbortSignal | undefined;
  publisher: Publisher;
  registries: Registries;
  transport: TransportOptions;
}

export interface ImageJob {
  source: ImageReference;
  /** Thin-image target: a reference, `null` for none, undefined for the default (DUCC's `_thin` name). */
  thin?: ImageReference | null | undefined;
  /** The image's name in the tree (default: from the source). */
  name?: DockerReference | undefined;
}

export interface LayerSummary {
  digest: string;
  status: LayerOutcome['status'] | 'failed';
  bytes: number;
  files: number;
  whiteouts: number;
  opaques: number;
  seconds: number;
  error?: string | undefined;
}

export interface ErrorSummary {
  code: ErrorCode;
  /** containerd errdefs-style class; 'internal' (I/O errors, bugs) aborts a publishing transaction. */
  kind: string;
  message: string;
  image?: string | undefined;
  layer?: string | undefined;
  entry?: string | undefined;
}

export interface ImageSummary {
  source: string;
  name: string | null;
  platform: string | null;
  status: 'converted' | 'skipped' | 'failed';
  manifest_digest: string | null;
  config_digest: string | null;
  layers: LayerSummary[];
  chains: string[];
  flat: string | null;
  link: string | null;
  thin: { target: string; digest: string } | null;
  /** The podman store entry (`--podman-store`). */
  podman?: { image_id: string; status: string; names: string[] } | undefined;
  error: ErrorSummary | null;
  seconds: number;
}

export function errorSummary(e: unknown): ErrorSummary {
  const t = toThinError(e);
  const c = e instanceof ConvertError ? e : null;
  return { code: t.code, kind: t.kind, message: t.message, image: c?.image, layer: c?.layer, entry: c?.entry };
}

interface PlatformImage {
  desc: Descriptor | null;
  raw: RawManifest;
  manifest: ImageManifest;
  platform: Platform;
  /** Directory under .multiarch (all-platforms conversions), or undefined for the plain name. */
  platformDirs: (string | undefined)[];
}

/** Name of a local source that carries none: `localhost/<file name>:<tag>`. */
function localName(ref: ImageReference): DockerReference {
  const p = 'path' in ref ? ref.path : 'image';
  const base = path.basename(p).replace(/\.(tar|tgz|tar\.gz)$/, '').toLowerCase().replace(/[^a-z0-9._-]+/g, '-').replace(/^[^a-z0-9]+|[^a-z0-9]+$/g, '') || 'image';
  const tag = ref.transport === 'oci' || ref.transport === 'oci-archive' ? ref.tag : undefined;
  return { registry: 'localhost', repository: base, tag: tag && /^[\w][\w.-]{0,127}$/.test(tag) ? tag : 'latest' };
}

/** DUCC's default thin target for a source. */
export function defaultThinTarget(source: ImageReference, name: DockerReference): ImageReference {
  const thinRef = defaultThinReference(name);
  switch (source.transport) {
    case 'docker':
      return { transport: 'docker', ref: thinRef };
    case 'oci':
      return { transport: 'oci', path: source.path, tag: `${source.tag ?? name.tag ?? 'latest'}_thin` };
    case 'oci-archive':
    case 'docker-archive': {
      const dir = path.dirname(source.path);
      const base = path.basename(source.path).replace(/\.(tar|tgz|tar\.gz)$/, '');
      const file = path.join(dir, `${base}_thin.tar`);
      return source.transport === 'oci-archive'
        ? { transport: 'oci-archive', path: file, tag: thinRef.tag }
        : { transport: 'docker-archive', path: file, ref: thinRef };
    }
  }
}

export class Converter {
  readonly tree: RepoTree;
  private readonly unpacker: LayerUnpacker;
  private cleaned = false;

  constructor(private readonly o: ConverterOptions) {
    this.tree = new RepoTree(o.repositoryDir, o.repository, o.log);
    this.unpacker = new LayerUnpacker({
      tree: this.tree,
      jobs: new Semaphore(o.jobs ?? 4),
      progress: o.progress,
      log: o.log,
      limits: o.limits,
      signal: o.signal,
      overwriteForeign: o.overwriteForeign,
      whiteouts: o.whiteouts,
    });
  }

  /** Once per run: check the tree and remove what killed converters left behind. */
  async prepare(): Promise<void> {
    if (this.cleaned) return;
    await this.tree.init();
    await this.tree.cleanStaleTemps();
    this.cleaned = true;
  }

  /** Convert one source (all its selected platforms). Never throws for a per-image failure: see the summaries. */
  async convert(job: ImageJob): Promise<ImageSummary[]> {
    const t0 = Date.now();
    const description = formatImageReference(job.source);
    const failed = (e: unknown, extra: Partial<ImageSummary> = {}): ImageSummary[] => [
      {
        source: description,
        name: null,
        platform: null,
        status: 'failed',
        manifest_digest: null,
        config_digest: null,
        layers: [],
        chains: [],
        flat: null,
        link: null,
        thin: null,
        error: errorSummary(e instanceof ConvertError ? e : ConvertError.wrap(e, { image: description })),
        seconds: (Date.now() - t0) / 1000,
        ...extra,
      },
    ];
    let source: ImageSource;
    try {
      source = await openSource(job.source, this.o.registries, this.o.transport);
    } catch (e) {
      return failed(e);
    }
    try {
      return await this.o.publisher.session(async () => {
        // every write, including the tree's set-up and cleaning, happens inside the transaction
        await this.prepare();
        const res = await this.convertFrom(source, job, description, t0);
        const bad = res.find((s) => s.error?.kind === 'internal');
        // an I/O error or a bug may have left the tree in an unknown state: abort the transaction
        if (bad && this.o.publisher.enabled) throw new InternalError(bad.error!.message, bad.error!.code);
        return res;
      });
    } catch (e) {
      // a publishing step failed after the conversions ran
      return failed(e);
    } finally {
      await source.close().catch(() => undefined);
    }
  }

  private async resolve(source: ImageSource, description: string): Promise<{ images: PlatformImage[]; indexDigest: string | null }> {
    const top = await source.topManifest();
    const parsed = parseManifest(top, description);
    const want = this.o.platform ?? hostPlatform();
    if (parsed.kind === 'manifest') {
      return { images: [{ desc: null, raw: parsed.raw, manifest: parsed.manifest, platform: want, platformDirs: [undefined] }], indexDigest: null };
    }
    const chosen = this.o.allPlatforms ? imageEntries(parsed.index) : [selectPlatform(parsed.index, want, description)];
    if (chosen.length === 0) throw new ConvertError({ image: description }, 'the index lists no runnable image', 'invalid-argument', 'CVMFS_THIN_NO_PLATFORM');
    const images: PlatformImage[] = [];
    const defaultEntry = this.o.allPlatforms ? (() => {
      try {
        return selectPlatform(parsed.index, want, description);
      } catch {
        return null;
      }
    })() : null;
    for (const d of chosen) {
      const raw = await source.manifest(d);
      if (raw.digest !== d.digest) throw new ConvertError({ image: description }, `manifest ${d.digest} has digest ${raw.digest}`, 'invalid-argument', 'CVMFS_THIN_DIGEST_MISMATCH');
      const p = parseManifest({ ...raw, mediaType: raw.mediaType || d.mediaType }, `${description}@${d.digest}`);
      if (p.kind !== 'manifest') throw new ConvertError({ image: description }, `nested index ${d.digest} is not supported`, 'invalid-argument', 'CVMFS_THIN_UNSUPPORTED');
      const platform: Platform = d.platform ?? { os: want.os, architecture: want.architecture };
      const dirs: (string | undefined)[] = [];
      if (this.o.allPlatforms) {
        dirs.push(platformDirName(platform));
        if (defaultEntry && defaultEntry.digest === d.digest) dirs.push(undefined);
      } else dirs.push(undefined);
      images.push({ desc: d, raw: p.raw, manifest: p.manifest, platform, platformDirs: dirs });
    }
    return { images, indexDigest: parsed.raw.digest };
  }

  private async convertFrom(source: ImageSource, job: ImageJob, description: string, t0: number): Promise<ImageSummary[]> {
    let resolved;
    try {
      resolved = await this.resolve(source, description);
    } catch (e) {
      throw ConvertError.wrap(e, { image: description });
    }
    const name = job.name ?? source.name ?? localName(job.source);
    const treeName = duccImageName(name);
    const thinRef = job.thin === undefined ? defaultThinTarget(job.source, name) : job.thin;
    const thinName = thinRef?.transport === 'docker' ? thinRef.ref : thinRef?.transport === 'docker-archive' ? thinRef.ref : defaultThinReference(name);
    const target = thinRef ? openTarget(thinRef, this.o.registries, this.o.transport, thinName) : null;
    // the target's own description (tag or name filled in), the form recorded after a conversion
    const thinDesc = target ? target.description : null;
    const multi = resolved.indexDigest !== null && this.o.allPlatforms === true;

    // per platform: layers, chains/flat
    const perPlatform = await Promise.all(
      resolved.images.map((img) => this.convertPlatform(source, img, description, treeName, thinDesc, multi)),
    );
    const ok = perPlatform.filter((p) => p.summary.status !== 'failed');
    if (ok.length !== perPlatform.length || ok.length === 0) {
      for (const p of perPlatform) p.summary.seconds = (Date.now() - t0) / 1000;
      return perPlatform.map((p) => p.summary);
    }

    // thin image (all platforms at once), unless everything was up to date
    let thin: { target: string; digest: string } | null = null;
    if (target) {
      const allSkipped = perPlatform.every((p) => p.summary.status === 'skipped');
      try {
        const images: ImageToWrite[] = [];
        for (const p of perPlatform) {
          images.push(
            await buildThinImage({
              origin: description,
              manifestDigest: p.img.raw.digest,
              indexDigest: resolved.indexDigest ?? undefined,
              config: p.config,
              layers: p.img.manifest.layers.map((l) => l.digest.slice(7)),
              repository: this.o.repository,
              platform: p.platform,
            }),
          );
        }
        const index = multi ? buildThinIndex(images, { 'org.opencontainers.image.base.name': description, 'org.opencontainers.image.base.digest': resolved.indexDigest! }) : null;
        const expected = index ? index.digest : images[0]!.manifest.digest;
        const current = allSkipped ? await target.current().catch(() => null) : null;
        const expectedAtTarget = thinRef?.transport === 'docker-archive' ? images[0]!.config.digest : expected;
        if (allSkipped && current === expectedAtTarget) {
          thin = { target: target.description, digest: current };
        } else {
          const w = await target.write(images, index);
          thin = { target: w.target, digest: w.digest };
          if (allSkipped) for (const p of perPlatform) p.summary.status = 'converted';
        }
      } catch (e) {
        const err = ConvertError.wrap(e, { image: description });
        for (const p of perPlatform) {
          p.summary.status = 'failed';
          p.summary.error = errorSummary(new ConvertError({ image: description }, `thin image ${thinDesc}: ${err.reason}`, err.kind, err.code, { cause: err }));
          p.summary.seconds = (Date.now() - t0) / 1000;
        }
        return perPlatform.map((p) => p.summary);
      }
    }

    // metadata last (manifest.json is DUCC's "converted" marker), then the readable link
    for (const p of perPlatform) {
      const s = p.summary;
      s.thin = thin;
      try {
        if (s.status === 'converted') {
          const record: ImageRecord = {
            schema: 'cvmfs-thin/image',
            version: 1,
            source: description,
            name: treeName,
            platform: formatPlatform(p.platform),
            manifest_digest: p.img.raw.digest,
            config_digest: p.img.manifest.config.digest,
            layers: p.img.manifest.layers.map((l) => l.digest),
            chains: s.chains.length > 0,
            flat: s.flat ? path.relative(this.o.repositoryDir, s.flat) : null,
            thin,
            converted_at: new Date().toISOString(),
          };
          for (const dir of p.img.platformDirs) {
            await this.tree.writeImageMetadata(treeName, dir, { manifest: p.img.raw.bytes, config: p.configBytes, record });
            if (s.flat) s.link = await this.tree.link(treeName, dir, s.flat);
          }
        } else if (s.flat) {
          s.link = path.join(this.o.repositoryDir, treeName);
        }
      } catch (e) {
        s.status = 'failed';
        s.error = errorSummary(ConvertError.wrap(e, { image: description }));
        throw ConvertError.wrap(e, { image: description });
      }
      // the podman store: the plain name's platform only (one image per name), also when up to date
      if (this.o.podmanStore && p.img.platformDirs.includes(undefined)) {
        try {
          const input = await podmanInput(this.o.repositoryDir, { names: [podmanName(name)], manifest: p.img.raw.bytes, config: p.configBytes });
          const r = await addImageToPodmanStore(this.o.repositoryDir, input, { log: this.o.log, signal: this.o.signal, allowPlainWhiteouts: this.o.whiteouts === 'keep' });
          s.podman = { image_id: r.image_id, status: r.status, names: r.names };
          for (const w of r.warnings) this.o.log.warn({ image: description }, w);
        } catch (e) {
          // an I/O error (kind internal) aborts a publishing transaction like any other
          s.status = 'failed';
          s.error = errorSummary(ConvertError.wrap(e, { image: description }));
        }
      }
      s.seconds = (Date.now() - t0) / 1000;
    }
    if (multi && resolved.indexDigest) {
      const top = await source.topManifest();
      await this.tree.writeIndexMetadata(treeName, top.bytes);
    }
    return perPlatform.map((p) => p.summary);
  }

  private async convertPlatform(
    source: ImageSource,
    img: PlatformImage,
    description: string,
    treeName: string,
    thinDesc: string | null,
    multi: boolean,
  ): Promise<{ summary: ImageSummary; config: ImageConfig; configBytes: Buffer; platform: Platform; img: PlatformImage }> {
    const t0 = Date.now();
    const label = multi ? `${description} [${formatPlatform(img.platform)}]` : description;
    const summary: ImageSummary = {
      source: description,
      name: treeName,
      platform: formatPlatform(img.platform),
      status: 'failed',
      manifest_digest: img.raw.digest,
      config_digest: img.manifest.config.digest,
      layers: [],
      chains: [],
      flat: null,
      link: null,
      thin: null,
      error: null,
      seconds: 0,
    };
    let config: ImageConfig = {};
    let configBytes: Buffer = Buffer.alloc(0);
    let platform = img.platform;
    try {
      configBytes = await source.blobBytes(img.manifest.config, MAX_CONFIG_BYTES);
      config = parseConfig(configBytes, `${label}: config ${img.manifest.config.digest}`, img.manifest.layers.length);
      if (img.desc === null) {
        // a single-platform image: its platform is in its config
        platform = { os: config.os ?? 'linux', architecture: config.architecture ?? 'amd64', variant: config.variant };
        if (this.o.platform && !platformMatches(this.o.platform, platform)) {
          throw new ConvertError({ image: description }, `the image is ${formatPlatform(platform)}, not the requested ${formatPlatform(this.o.platform)}`, 'invalid-argument', 'CVMFS_THIN_NO_PLATFORM');
        }
        summary.platform = formatPlatform(platform);
      }
    } catch (e) {
      summary.error = errorSummary(ConvertError.wrap(e, { image: label }));
      summary.seconds = (Date.now() - t0) / 1000;
      return { summary, config, configBytes, platform, img };
    }
    const hexes = img.manifest.layers.map((l) => l.digest.slice(7));

    // up to date? (same manifest, every layer and requested tree present, same thin target)
    if (!this.o.force) {
      const rec = await this.tree.readRecord(treeName, img.platformDirs[0]);
      if (rec && rec.manifest_digest === img.raw.digest && (rec.thin?.target ?? null) === (thinDesc ?? null)) {
        const layersOk = (await Promise.all(hexes.map((h) => this.tree.layerState(h)))).every((s) => s !== null);
        const flatOk = !this.o.flat || (await pathExists(flatDir(this.o.repositoryDir, img.manifest.config.digest.slice(7))));
        const chainsOk = !this.o.chains || rec.chains;
        if (layersOk && flatOk && chainsOk) {
          summary.status = 'skipped';
          summary.layers = img.manifest.layers.map((l) => ({ digest: l.digest, status: 'present', bytes: 0, files: 0, whiteouts: 0, opaques: 0, seconds: 0 }));
          if (this.o.flat) summary.flat = flatDir(this.o.repositoryDir, img.manifest.config.digest.slice(7));
          summary.seconds = (Date.now() - t0) / 1000;
          for (const h of hexes) await this.tree.touchLayer(h);
          return { summary, config, configBytes, platform, img };
        }
      }
    }

    const diffIds = config.rootfs?.diff_ids;
    const results = await Promise.allSettled(
      img.manifest.layers.map((desc, index) =>
        this.unpacker.unpack({ source, desc, diffId: diffIds?.[index], image: label, index, count: img.manifest.layers.length }),
      ),
    );
    let firstError: unknown = null;
    summary.layers = results.map((r, i) => {
      const d = img.manifest.layers[i]!;
      if (r.status === 'fulfilled') {
        const v = r.value;
        return { digest: d.digest, status: v.status, bytes: v.bytes, files: v.files, whiteouts: v.whiteouts, opaques: v.opaques, seconds: v.seconds };
      }
      firstError ??= r.reason;
      return { digest: d.digest, status: 'failed', bytes: 0, files: 0, whiteouts: 0, opaques: 0, seconds: 0, error: ThinError.is(r.reason) || r.reason instanceof Error ? (r.reason as Error).message : String(r.reason) };
    });
    if (firstError !== null) {
      summary.error = errorSummary(ConvertError.wrap(firstError, { image: label }));
      summary.seconds = (Date.now() - t0) / 1000;
      return { summary, config, configBytes, platform, img };
    }
    try {
      for (const h of hexes) await this.tree.addOrigin(h, img.manifest.config.digest);
      if (this.o.chains || this.o.flat) {
        const merged = await buildMerged(this.tree, hexes, {
          chains: this.o.chains === true,
          flat: this.o.flat ? { configHex: img.manifest.config.digest.slice(7), config } : null,
          log: this.o.log,
        });
        summary.chains = merged.chains;
        summary.flat = merged.flat;
      }
    } catch (e) {
      summary.error = errorSummary(ConvertError.wrap(e, { image: label }));
      summary.seconds = (Date.now() - t0) / 1000;
      return { summary, config, configBytes, platform, img };
    }
    summary.status = 'converted';
    summary.seconds = (Date.now() - t0) / 1000;
    return { summary, config, configBytes, platform, img };
  }
}


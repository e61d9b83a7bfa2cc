/**
 * Converting one image reference: resolve the manifest (and platforms of an
 * index), unpack every layer in parallel (bounded, deduplicated), build
 * chains / flat trees when asked, write the thin image, then the DUCC
 * metadata (manifest.json last) and the readable link. A failing layer fails
 * its image but never stops the other layers or images; every error names
 * image, layer and entry.
 *
 * Per-platform resolution and conversion are in convert-platform.ts, the
 * summaries in summary.ts; this module owns the orchestration.
 */
import path from 'node:path';
import type { Logger } from 'pino';
import type { Host } from '../core/host/host.js';
import { codeOfKind } from '../core/errors/codes.js';
import { InternalError } from '../core/errors/errors.js';
import { ConvertError } from './errors.js';
import { formatPlatform, type PlatformSpec } from './image/platform.js';
import type { ImageSource, ImageToWrite } from './image/source.js';
import { openSource, openTarget, type Registries, type TransportOptions } from './image/transports.js';
import type { Progress } from './progress.js';
import type { Publisher } from './publish.js';
import { type DockerReference, defaultThinReference, duccImageName, formatImageReference, type ImageReference } from './reference.js';
import type { ImageRecord } from './repo.js';
import { errorSummary, type ImageSummary } from './summary.js';
import type { ExtractLimits } from './tar.js';
import type { ChainsMode } from './flat.js';
import { buildThinImage, buildThinIndex } from './thin.js';
import { addImageToPodmanStore, podmanInput, podmanName } from './podman/index.js';
import { PlatformConverter } from './convert-platform.js';
import type { LayerForm } from './whiteouts.js';

export { errorSummary, type ImageSummary } from './summary.js';

export interface ConverterOptions {
  /** Side effects on the node: merged trees (device nodes, owners, xattrs), the podman store's lock. */
  host: Host;
  repositoryDir: string;
  repository: string;
  /** Explicit `--platform`; default: the host's. */
  platform?: PlatformSpec | undefined;
  allPlatforms?: boolean | undefined;
  /** Chains to build (flat.ts): every prefix, or the image's own. */
  chains?: ChainsMode | undefined;
  flat?: boolean | undefined;
  /** Convert even when the tree says it is up to date (DUCC's --convert-again). */
  force?: boolean | undefined;
  overwriteForeign?: boolean | undefined;
  /** The layer form (whiteouts.ts resolves the default and refuses what cannot be published). */
  whiteouts?: LayerForm | undefined;
  /** Entries above which a record-form layer gets nested catalogs (default catalogs.ts CATALOG_CUT). */
  catalogCut?: number | undefined;
  /** Also add each image to `<repositoryDir>/podmanStore` (podman / CRI-O additional image store). */
  podmanStore?: boolean | undefined;
  /** Where the nodes mount the repository: the podman store's `diff` links point there (default: `repositoryDir`). */
  podmanStoreRoot?: string | undefined;
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

interface ImageJob {
  source: ImageReference;
  /** Thin-image target: a reference, `null` for none, undefined for the default (DUCC's `_thin` name). */
  thin?: ImageReference | null | undefined;
  /** The image's name in the tree (default: from the source). */
  name?: DockerReference | undefined;
}

/** Name of a local source that carries none: `localhost/<file name>:<tag>`. */
function localName(ref: ImageReference): DockerReference {
  const p = 'path' in ref ? ref.path : 'image';
  const base =
    path
      .basename(p)
      .replace(/\.(tar|tgz|tar\.gz)$/, '')
      .toLowerCase()
      .replace(/[^a-z0-9._-]+/g, '-')
      .replace(/^[^a-z0-9]+|[^a-z0-9]+$/g, '') || 'image';
  const tag = ref.transport === 'oci' || ref.transport === 'oci-archive' ? ref.tag : undefined;
  return { registry: 'localhost', repository: base, tag: tag && /^[\w][\w.-]{0,127}$/.test(tag) ? tag : 'latest' };
}

/** DUCC's default thin target for a source. */
function defaultThinTarget(source: ImageReference, name: DockerReference): ImageReference {
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

export class Converter extends PlatformConverter {
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
    if (this.o.publisher.ingests) {
      // the layers first, each through its own ingest; the metadata in one transaction after
      try {
        await this.ingestMissing(source, description);
      } catch (e) {
        await source.close().catch(() => undefined);
        return failed(e);
      }
    }
    try {
      return await this.o.publisher.session(async () => {
        // every write, including the tree's set-up and cleaning, happens inside the transaction
        await this.prepare();
        const res = await this.convertFrom(source, job, description, t0);
        const bad = res.find((s) => s.error?.kind === 'internal');
        // an I/O error or a bug may have left the tree in an unknown state: abort the transaction
        if (bad && this.o.publisher.enabled) throw new InternalError(bad.error!.message, codeOfKind('internal', bad.error!.code, 'CVMFS_THIN_INTERNAL'));
        return res;
      });
    } catch (e) {
      // a publishing step failed after the conversions ran
      return failed(e);
    } finally {
      await source.close().catch(() => undefined);
    }
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
    const perPlatform = await Promise.all(resolved.images.map((img) => this.convertPlatform(source, img, description, treeName, thinDesc, multi)));
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
        const index = multi
          ? buildThinIndex(images, { 'org.opencontainers.image.base.name': description, 'org.opencontainers.image.base.digest': resolved.indexDigest! })
          : null;
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
            // every prefix's chain (what --chains asks); --top-chain is checked on the tree itself
            chains: this.o.chains === 'all' && s.chains.length > 0,
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
          const r = await addImageToPodmanStore(this.o.repositoryDir, input, {
            host: this.o.host,
            log: this.o.log,
            signal: this.o.signal,
            allowPlainWhiteouts: this.o.whiteouts === 'keep',
            storeRoot: this.o.podmanStoreRoot,
          });
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
}

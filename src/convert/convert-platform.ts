/**
 * The per-platform half of converting one image: resolving the source's
 * manifest, or the selected platforms of its index (one entry per platform
 * with the directories it is recorded under), and converting one platform
 * image: its config and platform check, the up-to-date test, unpacking its
 * layers in parallel and building chains / flat trees, into its summary.
 * Converter (convert.ts) builds on it and does the orchestration.
 */
import { ThinError } from '../core/errors/errors.js';
import { ConvertError } from './errors.js';
import { buildMerged, chainsFor } from './flat.js';
import { formatPlatform, hostPlatform, imageEntries, platformDirName, platformMatches, selectPlatform } from './image/platform.js';
import type { ImageSource } from './image/source.js';
import {
  type Descriptor,
  type ImageConfig,
  type ImageManifest,
  MAX_CONFIG_BYTES,
  parseConfig,
  parseManifest,
  type Platform,
  type RawManifest,
} from './image/types.js';
import { LayerUnpacker } from './layer.js';
import { RepoTree } from './repo.js';
import { errorSummary, type ImageSummary } from './summary.js';
import { Semaphore } from '../core/util/concurrency.js';
import type { ConverterOptions } from './convert.js';
import { chainDir, duccChainIds, flatDir, LAYERS_DIR } from '../core/cvmfs/layout.js';
import { pathExists } from '../core/fs/fsutil.js';

interface PlatformImage {
  desc: Descriptor | null;
  raw: RawManifest;
  manifest: ImageManifest;
  platform: Platform;
  /** Directory under .multiarch (all-platforms conversions), or undefined for the plain name. */
  platformDirs: (string | undefined)[];
}

export class PlatformConverter {
  private cleaned = false;
  readonly tree: RepoTree;
  protected readonly unpacker: LayerUnpacker;

  constructor(protected readonly o: ConverterOptions) {
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
      catalogCut: o.catalogCut,
      ingest: o.publisher.ingests ? o.publisher : undefined,
      host: o.host,
    });
  }

  /**
   * Ingest mode, before the run's transaction: publish every layer of the
   * selected images that the repository lacks through the ingest hook (each
   * its own transaction), so the transaction that follows only writes
   * metadata (and finds the layers present).
   */
  protected async ingestMissing(source: ImageSource, description: string): Promise<void> {
    const { images } = await this.resolve(source, description);
    const todo: { img: PlatformImage; diffIds: string[] | undefined }[] = [];
    const buckets = new Set<string>();
    for (const img of images) {
      const configBytes = await source.blobBytes(img.manifest.config, MAX_CONFIG_BYTES);
      const config = parseConfig(configBytes, `${description}: config ${img.manifest.config.digest}`, img.manifest.layers.length);
      todo.push({ img, diffIds: config.rootfs?.diff_ids });
      for (const l of img.manifest.layers) {
        const hex = l.digest.slice(7);
        if ((await this.tree.layerState(hex)) === null && !(await pathExists(this.tree.bucket(LAYERS_DIR, hex))))
          buckets.add(this.tree.bucket(LAYERS_DIR, hex));
      }
    }
    // the directories above the layers first, in a transaction: an ingest would create them without a valid owner
    if (buckets.size > 0) {
      await this.o.publisher.session(async () => {
        await this.prepare();
        for (const b of buckets) await this.tree.ensureCatalog(b);
      });
    }
    for (const { img, diffIds } of todo) {
      const count = img.manifest.layers.length;
      // one at a time: every ingest is a transaction of the repository, and they queue on its lock anyway
      for (const [index, desc] of img.manifest.layers.entries()) {
        if ((await this.tree.layerState(desc.digest.slice(7))) !== null) continue;
        await this.unpacker.unpack({ source, desc, diffId: diffIds?.[index], image: description, index, count });
      }
    }
  }

  /** Once per run: check the tree and remove what killed converters left behind (inside a transaction when publishing). */
  async prepare(): Promise<void> {
    if (this.cleaned) return;
    await this.tree.init();
    await this.tree.cleanStaleTemps();
    this.cleaned = true;
  }

  protected async resolve(source: ImageSource, description: string): Promise<{ images: PlatformImage[]; indexDigest: string | null }> {
    const top = await source.topManifest();
    const parsed = parseManifest(top, description);
    const want = this.o.platform ?? hostPlatform();
    if (parsed.kind === 'manifest') {
      return { images: [{ desc: null, raw: parsed.raw, manifest: parsed.manifest, platform: want, platformDirs: [undefined] }], indexDigest: null };
    }
    const chosen = this.o.allPlatforms ? imageEntries(parsed.index) : [selectPlatform(parsed.index, want, description)];
    if (chosen.length === 0) throw new ConvertError({ image: description }, 'the index lists no runnable image', 'invalid-argument', 'CVMFS_THIN_NO_PLATFORM');
    const images: PlatformImage[] = [];
    const defaultEntry = this.o.allPlatforms
      ? (() => {
          try {
            return selectPlatform(parsed.index, want, description);
          } catch {
            return null;
          }
        })()
      : null;
    for (const d of chosen) {
      const raw = await source.manifest(d);
      if (raw.digest !== d.digest)
        throw new ConvertError({ image: description }, `manifest ${d.digest} has digest ${raw.digest}`, 'invalid-argument', 'CVMFS_THIN_DIGEST_MISMATCH');
      const p = parseManifest({ ...raw, mediaType: raw.mediaType || d.mediaType }, `${description}@${d.digest}`);
      if (p.kind !== 'manifest')
        throw new ConvertError({ image: description }, `nested index ${d.digest} is not supported`, 'invalid-argument', 'CVMFS_THIN_UNSUPPORTED');
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

  protected async convertPlatform(
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
          throw new ConvertError(
            { image: description },
            `the image is ${formatPlatform(platform)}, not the requested ${formatPlatform(this.o.platform)}`,
            'invalid-argument',
            'CVMFS_THIN_NO_PLATFORM',
          );
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
        const top = chainDir(this.o.repositoryDir, duccChainIds(hexes).at(-1)!);
        const mode = chainsFor(this.o.chains, hexes.length);
        const chainsOk = !mode || (mode === 'top' ? await pathExists(top) : rec.chains);
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
      return {
        digest: d.digest,
        status: 'failed',
        bytes: 0,
        files: 0,
        whiteouts: 0,
        opaques: 0,
        seconds: 0,
        error: ThinError.is(r.reason) || r.reason instanceof Error ? (r.reason as Error).message : String(r.reason),
      };
    });
    if (firstError !== null) {
      summary.error = errorSummary(ConvertError.wrap(firstError, { image: label }));
      summary.seconds = (Date.now() - t0) / 1000;
      return { summary, config, configBytes, platform, img };
    }
    try {
      for (const h of hexes) await this.tree.addOrigin(h, img.manifest.config.digest);
      if (chainsFor(this.o.chains, hexes.length) || this.o.flat) {
        const merged = await buildMerged(this.tree, hexes, {
          chains: chainsFor(this.o.chains, hexes.length),
          flat: this.o.flat ? { configHex: img.manifest.config.digest.slice(7), config } : null,
          log: this.o.log,
          host: this.o.host,
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

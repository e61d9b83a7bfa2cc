/** Wiring of one converter run (shared by `convert`, `wishlist` and `gc`), and the human summary. */
import os from 'node:os';
import path from 'node:path';
import type { Logger } from 'pino';
import type { Host } from '../core/host/host.js';
import { DEFAULT_REPOSITORY, REPOSITORY_NAME } from '../core/cvmfs/location.js';
import { InvalidArgumentError } from '../core/errors/errors.js';
import { Converter, type ImageSummary } from './convert.js';
import { checkStoreRoot } from './podman/index.js';
import { parsePlatform } from './image/platform.js';
import { Registries, type TransportOptions } from './image/transports.js';
import { createProgress, type Progress } from './progress.js';
import { hooksFromOptions, Publisher, serverConfWarnings } from './publish.js';
import { type LayerForm, resolveLayerForm } from './whiteouts.js';
import type { Credentials } from './registry/auth.js';
import type { ChainsMode } from './flat.js';
import type { ExtractLimits } from './tar.js';
import { formatBytes } from './util.js';

export interface RunFlags {
  repositoryDir?: string | undefined;
  repository?: string | undefined;
  platform?: string | undefined;
  allPlatforms?: boolean | undefined;
  /** Chains to build (flat.ts): every prefix, or the image's own. */
  chains?: ChainsMode | undefined;
  flat?: boolean | undefined;
  force?: boolean | undefined;
  overwriteLayers?: boolean | undefined;
  whiteouts?: LayerForm | undefined;
  ingest?: boolean | undefined;
  ingestCommand?: string | undefined;
  catalogCut?: number | undefined;
  podmanStore?: boolean | undefined;
  podmanStoreRoot?: string | undefined;
  jobs?: number | undefined;
  creds?: Credentials | undefined;
  destCreds?: Credentials | undefined;
  insecure?: boolean | undefined;
  transactionCommand?: string | undefined;
  publishCommand?: string | undefined;
  abortCommand?: string | undefined;
  cvmfsServer?: boolean | undefined;
  lockFile?: string | undefined;
  tmpDir?: string | undefined;
  quiet?: boolean | undefined;
  json?: boolean | undefined;
  limits?: ExtractLimits | undefined;
}

/** `--repository` defaults to the directory's name when that is a repository name (`/cvmfs/unpacked.cern.ch`). */
export function resolveRepository(
  flags: { repositoryDir?: string | undefined; repository?: string | undefined },
  fallbackRepo?: string,
): { dir: string; repository: string } {
  const repo = flags.repository ?? fallbackRepo;
  if (repo !== undefined && !REPOSITORY_NAME.test(repo))
    throw new InvalidArgumentError(`--repository ${JSON.stringify(repo)} is not a CVMFS repository name (like unpacked.cern.ch)`, 'CVMFS_THIN_BAD_FLAG');
  if (!flags.repositoryDir) {
    if (!repo)
      throw new InvalidArgumentError(
        '--repository-dir is required (the repository root, e.g. /cvmfs/unpacked.cern.ch during a transaction)',
        'CVMFS_THIN_BAD_FLAG',
      );
    return { dir: path.join('/cvmfs', repo), repository: repo };
  }
  const dir = path.resolve(flags.repositoryDir);
  const base = path.basename(dir);
  return { dir, repository: repo ?? (REPOSITORY_NAME.test(base) ? base : DEFAULT_REPOSITORY) };
}

/**
 * Where the nodes mount the repository, for the podman store's absolute
 * `diff` links: `--podman-store-root`, else `/cvmfs/<repository>` when the
 * name was given (`--repository`, a recipe's `cvmfs_repo`), else the
 * repository directory (on a publisher: /cvmfs/<repository> itself).
 */
export function resolvePodmanStoreRoot(
  flags: { podmanStoreRoot?: string | undefined; repository?: string | undefined },
  dir: string,
  fallbackRepo?: string,
): string {
  if (flags.podmanStoreRoot !== undefined) return checkStoreRoot(flags.podmanStoreRoot.replace(/(.)\/+$/, '$1'));
  const repo = flags.repository ?? fallbackRepo;
  return repo !== undefined ? path.join('/cvmfs', repo) : dir;
}

interface Run {
  converter: Converter;
  registries: Registries;
  publisher: Publisher;
  progress: Progress;
  transport: TransportOptions;
  dir: string;
  repository: string;
}

/** `host`: where the run's side effects go (the CLI passes the real host). */
export function createRun(flags: RunFlags, host: Host, log: Logger, signal: AbortSignal, fallbackRepo?: string): Run {
  const { dir, repository } = resolveRepository(flags, fallbackRepo);
  const transport: TransportOptions = {
    creds: flags.creds,
    destCreds: flags.destCreds,
    insecure: flags.insecure,
    insecureRegistries: new Set(),
    log,
    signal,
    tmpDir: flags.tmpDir,
    host,
  };
  const registries = new Registries(transport);
  const hooks = hooksFromOptions({
    transactionCmd: flags.transactionCommand,
    publishCmd: flags.publishCommand,
    abortCmd: flags.abortCommand,
    ingestCmd: flags.ingestCommand,
    cvmfsServer: flags.cvmfsServer,
    ingest: flags.ingest,
  } as Parameters<typeof hooksFromOptions>[0]);
  if (hooks.ingest && flags.overwriteLayers) {
    throw new InvalidArgumentError(
      "--overwrite-layers cannot be used with --ingest: an ingest merges into an existing layer directory instead of replacing it; replace DUCC's layers through a transaction (--cvmfs-server without --ingest)",
      'CVMFS_THIN_CANNOT_PUBLISH',
    );
  }
  // before anything is opened: refuse a layer form the publish would destroy
  const whiteouts = resolveLayerForm(flags.whiteouts, {
    transaction: Boolean(hooks.transaction || hooks.publish),
    ingest: Boolean(hooks.ingest),
    repositoryDir: dir,
  });
  if (flags.cvmfsServer) for (const w of serverConfWarnings(repository, { transaction: Boolean(hooks.transaction) })) log.warn(w);
  const podmanStoreRoot = resolvePodmanStoreRoot(flags, dir, fallbackRepo);
  if (flags.podmanStore && whiteouts === 'record') {
    log.warn('layers are written in record form (for a CVMFS publish): images whose layers delete files cannot be added to the podman store');
  }
  const publisher = new Publisher({
    hooks,
    repository,
    repositoryDir: dir,
    lockFile: flags.lockFile,
    log,
    host,
  });
  const progress = createProgress(!flags.quiet && !flags.json);
  if (flags.allPlatforms && flags.platform) throw new InvalidArgumentError('--platform and --all-platforms exclude each other', 'CVMFS_THIN_BAD_FLAG');
  const converter = new Converter({
    host,
    repositoryDir: dir,
    repository,
    platform: flags.platform ? parsePlatform(flags.platform) : undefined,
    allPlatforms: flags.allPlatforms,
    chains: flags.chains,
    flat: flags.flat,
    force: flags.force,
    overwriteForeign: flags.overwriteLayers,
    whiteouts,
    catalogCut: flags.catalogCut,
    podmanStore: flags.podmanStore,
    podmanStoreRoot,
    jobs: flags.jobs ?? Math.max(2, os.availableParallelism()),
    limits: flags.limits,
    progress,
    log,
    signal,
    publisher,
    registries,
    transport,
  });
  return { converter, registries, publisher, progress, transport, dir, repository };
}

export function summaryLine(s: ImageSummary): string {
  const what = `${s.source}${s.platform ? ` (${s.platform})` : ''}`;
  if (s.status === 'failed') return `FAILED     ${what}: ${s.error?.message ?? 'unknown error'}`;
  const unpacked = s.layers.filter((l) => l.status === 'unpacked');
  const bytes = unpacked.reduce((a, l) => a + l.bytes, 0);
  const parts = [
    `${s.layers.length} layers (${unpacked.length} unpacked, ${s.layers.length - unpacked.length} present${unpacked.length ? `, ${formatBytes(bytes)}` : ''})`,
  ];
  if (s.flat) parts.push(`flat ${s.flat}`);
  if (s.thin) parts.push(`thin ${s.thin.target}@${s.thin.digest}`);
  return `${s.status === 'skipped' ? 'up to date' : 'converted '} ${what}: ${parts.join(', ')}`;
}

/** SIGINT/SIGTERM abort the run (temporary files are cleaned, an open transaction is aborted); a second signal exits at once. */
export function abortOnSignals(log: Logger): AbortController {
  const ctl = new AbortController();
  let count = 0;
  const onSig = (sig: NodeJS.Signals) => {
    count++;
    if (count > 1) process.exit(130);
    log.warn({ signal: sig }, 'interrupted; cleaning up (signal again to exit at once)');
    process.stderr.write(`cvmfs-thin: ${sig}: stopping, cleaning up\n`);
    ctl.abort(new Error(`interrupted by ${sig}`));
  };
  process.on('SIGINT', onSig);
  process.on('SIGTERM', onSig);
  return ctl;
}

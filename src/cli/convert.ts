/**
 * `cvmfs-thin convert SOURCE`: unpack an image (registry, OCI layout or
 * archive) into a CVMFS repository tree (DUCC's layout) and write its thin
 * image; run by the publisher (on a Stratum-0, inside a `cvmfs_server` transaction).
 */
import os from 'node:os';
import { Command, Option } from 'commander';
import { InvalidArgumentError } from '../core/errors/errors.js';
import { createLogger, type LogLevel } from '../core/telemetry/log.js';
import { parseCreds } from '../convert/registry/auth.js';
import { parseImageReference } from '../convert/reference.js';
import { writeConvertMetrics } from '../convert/metrics.js';
import { abortOnSignals, createRun, type RunFlags, summaryLine } from '../convert/run.js';
import { systemHost } from '../core/host/host.js';
import { sweepStaleSpools } from '../convert/image/spool-dir.js';
import { GENERIC_CODE, withCode } from '../edge/error-policy.js';

/** `123`, `10K`, `2.5G` (binary units) → bytes. */
export function parseSize(name: string) {
  return (v: string): number => {
    const m = /^(\d+(?:\.\d+)?)([KMGT]i?B?)?$/i.exec(v.trim());
    if (!m) throw new InvalidArgumentError(`${name}: ${JSON.stringify(v)} is not a size (like 512M or 100G)`, 'CVMFS_THIN_BAD_FLAG');
    const unit = (m[2] ?? '').charAt(0).toUpperCase();
    const mult = unit === '' ? 1 : 1024 ** ('KMGT'.indexOf(unit) + 1);
    return Math.floor(Number(m[1]) * mult);
  };
}

function positiveInt(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`${name}: ${JSON.stringify(v)} is not a positive integer`, 'CVMFS_THIN_BAD_FLAG');
    return n;
  };
}

/** `--metrics-textfile` must be absolute: refused before anything is converted. */
export function checkTextfileFlag(v: unknown): void {
  if (typeof v === 'string' && !v.startsWith('/')) throw new InvalidArgumentError(`--metrics-textfile ${v} must be an absolute path`, 'CVMFS_THIN_BAD_FLAG');
}

/** Options shared by `convert` and `wishlist`. */
export function addConversionOptions(cmd: Command): Command {
  return cmd
    .option('--repository-dir <dir>', 'root of the repository tree to fill (e.g. /cvmfs/unpacked.cern.ch inside a transaction)')
    .option('--repository <name>', 'CVMFS repository name written into thin.json URLs (default: the directory name, else unpacked.cern.ch)')
    .option('--platform <os/arch[/variant]>', 'platform to pick from a multi-arch index (default: the host)')
    .option('--all-platforms', 'convert every platform of a multi-arch index (thin image becomes an index)')
    .option('--chains', 'also build DUCC chains (.chains/<xx>/<chain id>: layers merged, whiteouts applied), one per layer prefix')
    .option(
      '--top-chain',
      "also build the image's own chain only (.chains/<xx>/<chain id> of all its layers): its containers start from that one directory, whatever the layer count (default for images of 16 layers or more)",
    )
    .option('--no-top-chain', "never build the image's own chain (nodes stack its layers)")
    .option('--flat', 'also build the flat tree (.flat/<xx>/<config>) and the readable link <registry>/<repository>:<tag>')
    .option('--force', 'convert even if the tree says the image is up to date')
    .option('--overwrite-layers', 'replace layers that exist without a cvmfs-thin marker (e.g. written by DUCC)')
    .addOption(
      new Option(
        '--whiteouts <how>',
        'record: deletions, opaque dirs and xattrs in a record beside the layer, nothing a CVMFS publish drops (default when publishing or writing into a transaction); overlay: overlayfs whiteouts in the layer (default for a plain tree); keep: OCI .wh.* files as DUCC writes them (ingest only)',
      ).choices(['record', 'overlay', 'keep']),
    )
    .option(
      '--max-layer-size <bytes>',
      'refuse a layer whose uncompressed tar is larger (suffixes K, M, G, T; default 256G)',
      parseSize('--max-layer-size'),
      256 * 1024 ** 3,
    )
    .option('--max-layer-entries <n>', 'refuse a layer with more tar entries (default 10000000)', positiveInt('--max-layer-entries'), 10_000_000)
    .option('--podman-store', 'also add the image to <repository-dir>/podmanStore, a podman/CRI-O additional image store (docs/podman.md)')
    .option(
      '--podman-store-root <dir>',
      "where the nodes mount the repository, for the store's absolute layer links (default: /cvmfs/<repository> when --repository is given, else --repository-dir)",
    )
    .option('--jobs <n>', 'layers downloaded and unpacked at once (default: max(2, CPUs))', positiveInt('--jobs'))
    .option('--creds <user:pass>', 'credentials for the source registry (default: ~/.docker/config.json)')
    .option('--dest-creds <user:pass>', 'credentials for the thin-image registry (default: ~/.docker/config.json)')
    .option('--insecure', 'allow plain HTTP to registries (loopback registries always may)')
    .option(
      '--transaction-command <cmd>',
      'run before writing (no shell; {repository} and {repository_dir} are replaced), e.g. "cvmfs_server transaction {repository}"',
    )
    .option('--publish-command <cmd>', 'run after writing, e.g. "cvmfs_server publish {repository}"')
    .option('--abort-command <cmd>', 'run when writing or publishing failed, e.g. "cvmfs_server abort -f {repository}"')
    .option('--cvmfs-server', 'shorthand for the three cvmfs_server transaction/publish/abort -f commands')
    .option(
      '--ingest',
      "publish each layer by streaming it to cvmfs_server ingest (DUCC's way; no local unpack), then the metadata in one transaction; with --cvmfs-server",
    )
    .option(
      '--nested-catalog-entries <n>',
      'a published layer with more entries gets nested catalogs (.cvmfscatalog, hidden from containers) so that no catalog holds more (default 100000; CVMFS refuses a catalog over 200000)',
      positiveInt('--nested-catalog-entries'),
    )
    .option(
      '--ingest-command <cmd>',
      'the ingest command (layer tar on stdin; {base} = .layers/<xx>/<digest>), default with --cvmfs-server --ingest: "cvmfs_server ingest --catalog -k -t - -b {base} {repository}"',
    )
    .option('--lock-file <file>', 'host-wide lock serialising publications (default /run/lock/cvmfs-thin-<repository>.lock)')
    .option(
      '--tmp-dir <dir>',
      'where archives are spooled for reading and writing (default: the system temp dir; spools left by killed conversions are removed once their owner is gone)',
    )
    .option('--json', 'print a machine-readable summary on stdout')
    .option(
      '--metrics-textfile <file>',
      "write the run's figures (layers, bytes, seconds, images) for node_exporter's textfile collector, e.g. /var/lib/node_exporter/textfile/cvmfs-thin.prom",
    )
    .option('-q, --quiet', 'no progress display')
    .addOption(
      new Option('--log-level <level>', 'log level of the JSON logs on stderr').choices(['trace', 'debug', 'info', 'warn', 'error', 'fatal']).default('warn'),
    );
}

export function runFlags(o: Record<string, unknown>): RunFlags {
  return {
    repositoryDir: o['repositoryDir'] as string | undefined,
    repository: o['repository'] as string | undefined,
    platform: o['platform'] as string | undefined,
    allPlatforms: o['allPlatforms'] as boolean | undefined,
    // the image's own chain: asked, refused, or (default) for images of many layers (flat.ts)
    chains: o['chains'] === true ? 'all' : o['topChain'] === true ? 'top' : o['topChain'] === false ? undefined : 'auto',
    flat: o['flat'] as boolean | undefined,
    force: o['force'] as boolean | undefined,
    overwriteLayers: o['overwriteLayers'] as boolean | undefined,
    whiteouts: o['whiteouts'] as 'record' | 'overlay' | 'keep' | undefined,
    ingest: o['ingest'] as boolean | undefined,
    ingestCommand: o['ingestCommand'] as string | undefined,
    catalogCut: o['nestedCatalogEntries'] as number | undefined,
    podmanStore: o['podmanStore'] as boolean | undefined,
    podmanStoreRoot: o['podmanStoreRoot'] as string | undefined,
    jobs: o['jobs'] as number | undefined,
    creds: o['creds'] ? parseCreds(String(o['creds']), '--creds') : undefined,
    destCreds: o['destCreds'] ? parseCreds(String(o['destCreds']), '--dest-creds') : undefined,
    insecure: o['insecure'] as boolean | undefined,
    transactionCommand: o['transactionCommand'] as string | undefined,
    publishCommand: o['publishCommand'] as string | undefined,
    abortCommand: o['abortCommand'] as string | undefined,
    cvmfsServer: o['cvmfsServer'] as boolean | undefined,
    lockFile: o['lockFile'] as string | undefined,
    tmpDir: o['tmpDir'] as string | undefined,
    quiet: o['quiet'] as boolean | undefined,
    json: o['json'] as boolean | undefined,
    limits: {
      ...(typeof o['maxLayerSize'] === 'number' ? { maxTotalBytes: o['maxLayerSize'] } : {}),
      ...(typeof o['maxLayerEntries'] === 'number' ? { maxEntries: o['maxLayerEntries'] } : {}),
    },
  };
}

export function convertCommand(): Command {
  const cmd = new Command('convert')
    .description('unpack an image into a CVMFS repository tree (DUCC layout) and write its thin image')
    .argument('<source>', 'docker://HOST/REPO[:TAG|@DIGEST], oci:DIR[:TAG], oci-archive:FILE[:TAG] or docker-archive:FILE[:REF|:@INDEX]')
    .option('--thin <target>', 'where to write the thin image, any transport (default: <registry>/<repository>_thin:<tag>, or next to a local source)')
    .option('--no-thin', 'do not write a thin image')
    .option('--name <registry/repository:tag>', 'name of the image in the tree (.metadata/<name>, the readable link) when the source has none or another');
  addConversionOptions(cmd);
  return cmd.action(async (sourceArg: string, o: Record<string, unknown>) => {
    checkTextfileFlag(o['metricsTextfile']);
    const log = createLogger(o['logLevel'] as LogLevel, 'cvmfs-thin-convert');
    const source = parseImageReference(sourceArg);
    let thin = undefined as ReturnType<typeof parseImageReference> | null | undefined;
    if (o['thin'] === false) thin = null;
    else if (typeof o['thin'] === 'string') thin = parseImageReference(o['thin']);
    let name;
    if (typeof o['name'] === 'string') {
      const { parseDockerReference } = await import('../convert/reference.js');
      name = parseDockerReference(o['name']);
    }
    const flags = runFlags(o);
    // archive spools of conversions killed before (kill -9, a crash): removed once their owner is gone
    await sweepStaleSpools(flags.tmpDir ?? os.tmpdir(), { host: systemHost, log });
    const ctl = abortOnSignals(log);
    const run = createRun(flags, systemHost, log, ctl.signal);
    const t0 = Date.now();
    let summaries;
    try {
      summaries = await run.converter.convert({ source, thin, name });
    } finally {
      run.progress.close();
    }
    const failed = summaries.filter((s) => s.status === 'failed');
    if (typeof o['metricsTextfile'] === 'string') await writeConvertMetrics(o['metricsTextfile'], summaries, (Date.now() - t0) / 1000);
    if (flags.json) {
      process.stdout.write(
        `${JSON.stringify({ images: summaries, converted: summaries.filter((s) => s.status === 'converted').length, skipped: summaries.filter((s) => s.status === 'skipped').length, failed: failed.length, publish_steps: run.publisher.steps, seconds: (Date.now() - t0) / 1000 }, null, 2)}\n`,
      );
    } else {
      for (const s of summaries) {
        if (s.status === 'failed') process.stderr.write(`cvmfs-thin: ${withCode(s.error?.message ?? 'failed', s.error?.code ?? GENERIC_CODE)}\n`);
        else process.stdout.write(`${summaryLine(s)}\n`);
      }
    }
    if (failed.length) process.exitCode = ctl.signal.aborted ? 130 : 1;
  });
}

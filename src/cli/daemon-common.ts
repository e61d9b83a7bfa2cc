/** What the two daemon commands share: CVMFS options, config precedence, logging, signals. */
import { type Command, InvalidArgumentError, Option } from 'commander';
import path from 'node:path';
import { type CvmfsLocation, cvmfsLocation, REPOSITORY_NAME } from '../core/cvmfs/location.js';
import { InvalidArgumentError as BadSettingError } from '../core/errors/errors.js';
import { type Field, resolveSettings, type Settings } from '../edge/settings.js';
import { createLogger, type LogLevel } from '../core/telemetry/log.js';
import type { Logger } from 'pino';
import { existsSync } from 'node:fs';
import { systemHost } from '../core/host/host.js';
import { type HealthCheck, type Metrics, noMetrics, socketAnswers } from '../core/telemetry/metrics.js';
import { cvmfsMountState } from '../core/stack/mount-health.js';
import { CvmfsProbe } from '../core/host/probe.js';

const checkRepo = (v: string) => (REPOSITORY_NAME.test(v) ? null : 'not a CVMFS repository name (like unpacked.cern.ch)');
const checkAbs = (v: string) => (path.isAbsolute(v) ? null : 'must be an absolute path');

/** Keys shared by the snapshotter and the graph driver TOML files (kebab-case as in containerd-cvmfs-grpc). */
export const cvmfsKeys = {
  repository: { type: 'string', check: checkRepo },
  'absolute-mountpoint': { type: 'string', check: checkAbs },
  'cvmfs-root': { type: 'string', check: checkAbs },
  'allowed-repositories': { type: 'string[]', check: checkRepo },
  'log-level': { type: 'enum', values: ['trace', 'debug', 'info', 'warn', 'error', 'fatal'] },
  /** Seconds a CVMFS mount may take to answer before a request fails (a stalled client). */
  'cvmfs-timeout': { type: 'integer', min: 1, max: 600 },
  /** Seconds between checks of running containers for a dead CVMFS lower (0: never). */
  'check-interval': { type: 'integer', min: 0, max: 86400 },
} as const satisfies Record<string, Field>;

/** The CVMFS location flags (same names and defaults in both daemons). */
export function addCvmfsOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option('--log-level <level>', 'log level (default info)').choices(['trace', 'debug', 'info', 'warn', 'error', 'fatal']))
    .option('--repository <name>', 'CVMFS repository holding unpacked layers (default unpacked.cern.ch)')
    .option('--absolute-mountpoint <dir>', 'where that repository is mounted (default <cvmfs-root>/<repository>)')
    .option('--cvmfs-root <dir>', 'where CVMFS repositories are mounted (default /cvmfs)')
    .option('--allowed-repository <name...>', 'repositories thin images may reference (default: the repository)')
    .option('--cvmfs-timeout <seconds>', 'a CVMFS mount that does not answer for this long fails the request (stalled client; default 10)', seconds)
    .option('--check-interval <seconds>', 'look for running containers on a dead CVMFS mount this often, 0 = never (default 30)', seconds);
}

function seconds(v: string): number {
  if (!/^\d+$/.test(v)) throw new InvalidArgumentError(`${JSON.stringify(v)} is not a number of seconds`);
  return Number(v);
}

/** A flag's whole number (commander parser). */
export function wholeNumber(v: string): number {
  if (!/^\d{1,9}$/.test(v) || Number(v) === 0) throw new InvalidArgumentError(`${JSON.stringify(v)} is not a positive whole number`);
  return Number(v);
}

/** A flag's value: 0 or a positive whole number (0 turns the feature off). */
export function zeroOrMore(v: string): number {
  if (!/^\d{1,9}$/.test(v)) throw new InvalidArgumentError(`${JSON.stringify(v)} is not a whole number`);
  return Number(v);
}

interface DaemonSettings<S extends Record<string, Field>> extends Settings<S> {
  location: CvmfsLocation;
  /** `cvmfs-timeout` and `check-interval`, in ms (undefined: the defaults). */
  cvmfsTimeoutMs: number | undefined;
  checkIntervalMs: number | undefined;
  log: Logger;
}

/** The layer daemons' settings (edge/settings.ts: flags over the config file over the defaults) and what follows from them. */
export function daemonSettings<S extends Record<string, Field>>(
  o: Record<string, unknown>,
  cmd: Command,
  spec: S & typeof cvmfsKeys,
  loggerName: string,
): DaemonSettings<S> {
  const s = resolveSettings(spec, o, cmd);
  const log = createLogger((s.pick<string>('logLevel', 'log-level') ?? 'info') as LogLevel, loggerName);
  const location = cvmfsLocation({
    repository: s.pick('repository', 'repository'),
    absoluteMountpoint: s.pick('absoluteMountpoint', 'absolute-mountpoint'),
    cvmfsRoot: s.pick('cvmfsRoot', 'cvmfs-root'),
    allowedRepositories: s.pick('allowedRepository', 'allowed-repositories'),
  });
  const ms = (v: number | undefined) => (v === undefined ? undefined : v * 1000);
  const cvmfsTimeoutMs = ms(s.pick<number>('cvmfsTimeout', 'cvmfs-timeout'));
  // the flag's parser takes any whole number (the TOML key's range starts at 1): 0 is a user's error, exit 2
  if (cvmfsTimeoutMs === 0) throw new BadSettingError('--cvmfs-timeout must be at least 1 second', 'CVMFS_THIN_BAD_FLAG');
  return { ...s, location, log, cvmfsTimeoutMs, checkIntervalMs: ms(s.pick<number>('checkInterval', 'check-interval')) };
}

/** Stop cleanly on SIGTERM/SIGINT (stopping never deletes or unmounts data). */
function stopOnSignals(stop: () => Promise<void>, log: Logger): void {
  const handler = (sig: string) => {
    log.info({ signal: sig }, 'stopping');
    stop().then(
      () => process.exit(0),
      (e: unknown) => {
        log.error({ err: e }, 'error while stopping');
        process.exit(1);
      },
    );
  };
  process.once('SIGTERM', () => handler('SIGTERM'));
  process.once('SIGINT', () => handler('SIGINT'));
}

/** `--metrics-address`, shared by every daemon. */
export function addMetricsOption(cmd: Command): Command {
  return cmd.option('--metrics-address <addr>', 'serve Prometheus /metrics, /healthz and /readyz on host:port, :port or a unix socket path (default: off)');
}

/**
 * Start the metrics server when asked (`metrics-address` flag or TOML key);
 * otherwise recording is a no-op and prom-client is never loaded.
 */
export async function maybeStartMetrics(
  address: string | undefined,
  log: Logger,
  checks: { live?: Record<string, HealthCheck>; ready?: Record<string, HealthCheck> } = {},
): Promise<{ metrics: Metrics; stop(): Promise<void> }> {
  if (!address) return { metrics: noMetrics, stop: async () => {} };
  const { startMetricsServer } = await import('../core/telemetry/metrics.js');
  const s = await startMetricsServer({ address, log, ...checks });
  return { metrics: s.metrics, stop: () => s.stop() };
}

/**
 * The readiness checks every daemon has: its own socket answers, its CVMFS
 * directory exists. With `timeoutMs` (the layer daemons), the CVMFS mount
 * is asked off the process within that deadline (a stalled client never
 * hangs the check), and a dead client fails it too.
 */
export function readiness(socket: string, cvmfsDir: string, timeoutMs?: number | null, log?: Logger): Record<string, HealthCheck> {
  let cvmfs: HealthCheck = () => (existsSync(cvmfsDir) ? null : `${cvmfsDir} does not exist (is CVMFS mounted?)`);
  if (timeoutMs !== undefined && log) {
    const probe = new CvmfsProbe({ host: systemHost, log, timeoutMs: timeoutMs ?? undefined });
    cvmfs = async () => {
      const s = await cvmfsMountState(probe, cvmfsDir);
      return s.state === 'ok' ? null : s.state === 'absent' ? `${cvmfsDir} does not exist (is CVMFS mounted?)` : s.detail;
    };
  }
  return { socket: () => socketAnswers(socket), cvmfs };
}

/**
 * Start a daemon after its metrics server: a failed start stops the metrics
 * server too; SIGTERM/SIGINT stop the daemon, then the metrics server.
 */
export async function serveWithMetrics<D extends { stop(): Promise<void> }>(
  metrics: { stop(): Promise<void> },
  log: Logger,
  start: () => Promise<D>,
  onStopping?: () => void,
): Promise<D> {
  let daemon: D;
  try {
    daemon = await start();
  } catch (e) {
    await metrics.stop();
    throw e;
  }
  stopOnSignals(async () => {
    onStopping?.();
    await daemon.stop();
    await metrics.stop();
  }, log);
  return daemon;
}

/**
 * Settings of the mount manager shared by the three volume front-ends: the
 * same TOML keys and flags everywhere (`cvmfs-thin volume-plugin`, `csi`,
 * `flexvolume`), flags over the file over the defaults.
 */
import path from 'node:path';
import { type Command, Option } from 'commander';
import type { Logger } from 'pino';
import { type Field, type FlagSource, resolveSettings, type Settings } from '../edge/settings.js';
import { InvalidArgumentError } from '../core/errors/errors.js';
import { createLogger, type LogLevel } from '../core/telemetry/log.js';
import { DEFAULT_CVMFS_TIMEOUT_MS } from '../core/host/probe.js';
import { DEFAULT_MOUNT_COMMAND } from '../core/volumes/backend.js';
import { DEFAULT_CLIENT_CONFIG_KEYS, RepositoryAllowlist } from '../core/volumes/spec.js';
import type { Backend, MountManagerOptions } from '../core/volumes/types.js';

const checkAbs = (v: string) => (path.isAbsolute(v) ? null : 'must be an absolute path');
const checkSeconds = (v: string) => (/^\d{1,7}$/.test(v) ? null : 'must be a whole number of seconds');
const checkPattern = (v: string) => {
  try {
    new RepositoryAllowlist([v]);
    return null;
  } catch (e) {
    return (e as Error).message;
  }
};

/** TOML keys of every volume front-end's file. */
export const volumeKeys = {
  'state-dir': { type: 'string', check: checkAbs },
  'cvmfs-root': { type: 'string', check: checkAbs },
  'allowed-repositories': { type: 'string[]', check: checkPattern },
  backend: { type: 'enum', values: ['host', 'client'] },
  'mount-command': { type: 'string' },
  'client-config-keys': { type: 'string[]' },
  'idle-unmount': { type: 'integer', min: 0, max: 86_400 },
  'mount-timeout': { type: 'integer', min: 1, max: 3600 },
  'cvmfs-timeout': { type: 'integer', min: 1, max: 600 },
  'check-interval': { type: 'integer', min: 0, max: 86_400 },
  'log-level': { type: 'enum', values: ['trace', 'debug', 'info', 'warn', 'error', 'fatal'] },
} as const satisfies Record<string, Field>;

/** The flags of the volume keys (the front-end adds its own). */
export function addVolumeOptions(cmd: Command, defaultStateDir: string): Command {
  return cmd
    .option('--config <file>', 'TOML configuration (kebab-case keys as the flags; unknown keys are refused)')
    .option('--state-dir <dir>', `mount points and durable state (default ${defaultStateDir})`)
    .option('--cvmfs-root <dir>', 'where the host mounts CVMFS repositories (default /cvmfs)')
    .option('--allowed-repository <pattern...>', 'repositories that may be mounted: names, *.domain suffixes, or * (default *)')
    .addOption(
      new Option(
        '--backend <kind>',
        'host: bind <cvmfs-root>/<repo> (autofs or mounted by the host); client: mount privately with the CVMFS mount helper (default host)',
      ).choices(['host', 'client']),
    )
    .option('--mount-command <cmd>', `client backend mount command, "-o config=<file> <repo> <dir>" appended (default "${DEFAULT_MOUNT_COMMAND.join(' ')}")`)
    .option('--client-config-key <key...>', 'client parameters a volume may set (default: where to fetch from and which snapshot; see docs/volumes.md)')
    .option('--idle-unmount <seconds>', 'keep a repository mounted this long after its last user (default 0)')
    .option(
      '--mount-timeout <seconds>',
      "a repository mount (the mount helper, an autofs automount) must finish within this (default 100, inside dockerd's 2 minutes)",
    )
    .option(
      '--cvmfs-timeout <seconds>',
      `a mounted repository that does not answer for this long fails the request (stalled client; default ${DEFAULT_CVMFS_TIMEOUT_MS / 1000})`,
    )
    .option('--check-interval <seconds>', 'look for broken (ENOTCONN) mounts this often, 0 = never (default 30)')
    .addOption(new Option('--log-level <level>', 'log level (default info)').choices(['trace', 'debug', 'info', 'warn', 'error', 'fatal']));
}

/** The mount manager's options from a volume front-end's settings (the allowlist parsed once, here). */
export type VolumeManagerSettings = Omit<MountManagerOptions, 'host' | 'allow'> & { allow: RepositoryAllowlist; log: Logger };

/**
 * Resolve a volume front-end's settings (edge/settings.ts: flags given on the
 * command line, then the environment where the front-end names a variable,
 * then the TOML file, then the defaults) and the mount manager's options.
 */
export function volumeSettings<S extends Record<string, Field>>(
  o: Record<string, unknown>,
  cmd: FlagSource | null,
  spec: S & typeof volumeKeys,
  defaults: { stateDir: string; loggerName: string; cvmfsRoot?: string },
  env: NodeJS.ProcessEnv = process.env,
): Settings<S> & { manager: VolumeManagerSettings } {
  const s = resolveSettings(spec, o, cmd, env);
  const pick = s.pick;
  const seconds = (flag: string, key: keyof S & string, dflt: number): number => {
    const v = pick<string | number>(flag, key);
    if (v === undefined) return dflt;
    if (typeof v === 'number') return v * 1000;
    if (checkSeconds(v))
      throw new InvalidArgumentError(
        `--${flag.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)} ${JSON.stringify(v)}: must be a whole number of seconds`,
        'CVMFS_THIN_BAD_FLAG',
      );
    return Number(v) * 1000;
  };
  const mc = pick<string>('mountCommand', 'mount-command');
  const mountCommand = mc === undefined ? DEFAULT_MOUNT_COMMAND : mc.trim().split(/\s+/);
  if (mountCommand.length === 0 || mountCommand[0] === '') throw new InvalidArgumentError('mount-command must not be empty', 'CVMFS_THIN_BAD_FLAG');
  const abs = (flag: string, v: string) => {
    if (!path.isAbsolute(v)) throw new InvalidArgumentError(`--${flag} ${JSON.stringify(v)} must be an absolute path`, 'CVMFS_THIN_BAD_FLAG');
    return path.resolve(v);
  };
  const stateDir = abs('state-dir', pick<string>('stateDir', 'state-dir') ?? defaults.stateDir);
  const cvmfsRoot = abs('cvmfs-root', pick<string>('cvmfsRoot', 'cvmfs-root') ?? defaults.cvmfsRoot ?? '/cvmfs');
  const allow = new RepositoryAllowlist(pick<string[]>('allowedRepository', 'allowed-repositories') ?? ['*']);
  const log = createLogger((pick<string>('logLevel', 'log-level') ?? 'info') as LogLevel, defaults.loggerName);
  const cvmfsTimeoutMs = seconds('cvmfsTimeout', 'cvmfs-timeout', DEFAULT_CVMFS_TIMEOUT_MS);
  if (cvmfsTimeoutMs < 1000 || cvmfsTimeoutMs > 600_000) throw new InvalidArgumentError('--cvmfs-timeout must be from 1 to 600 seconds', 'CVMFS_THIN_BAD_FLAG');
  return {
    ...s,
    manager: {
      stateDir,
      cvmfsRoot,
      allow,
      backend: pick<Backend>('backend', 'backend') ?? 'host',
      mountCommand,
      clientConfigKeys: pick<string[]>('clientConfigKey', 'client-config-keys') ?? DEFAULT_CLIENT_CONFIG_KEYS,
      idleUnmountMs: seconds('idleUnmount', 'idle-unmount', 0),
      mountTimeoutMs: seconds('mountTimeout', 'mount-timeout', 100_000),
      cvmfsTimeoutMs,
      checkIntervalMs: seconds('checkInterval', 'check-interval', 30_000),
      log,
    },
  };
}

/**
 * `cvmfs-thin flexvolume init|mount|unmount …` — the FlexVolume call-outs, with
 * kubelet's argument shapes and nothing but one JSON object on stdout — and
 * `cvmfs-thin flexvolume install`, which puts the `cern~cvmfs/cvmfs` driver
 * into kubelet's plugin directory.
 *
 * kubelet passes no flags, so the driver reads its settings from
 * $CVMFS_THIN_FLEXVOLUME_CONFIG or /etc/cvmfs-thin/flexvolume.toml (the volume
 * keys of `cvmfs-thin volume-plugin`/`csi`, plus `allow-client-config` and
 * `log-file`); logs go to that file, never to kubelet.
 */
import { existsSync, mkdirSync, promises as fsp } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import pino from 'pino';
import { acquireLock } from '../core/state/lock.js';
import { type Field, loadToml } from '../edge/settings.js';
import { InvalidArgumentError } from '../core/errors/errors.js';
import { systemHost } from '../core/host/host.js';
import { writeFileAtomic } from '../core/fs/fsutil.js';
import { volumeKeys, volumeSettings } from './volume-config.js';
import { MountManager } from '../core/volumes/manager.js';
import { flexCall, flexFailure, isFlexOperation, notSupported } from '../flexvolume/driver.js';

const FLEX_DEFAULTS = {
  config: '/etc/cvmfs-thin/flexvolume.toml',
  stateDir: '/var/lib/cvmfs-thin/flexvolume',
  pluginDir: '/usr/libexec/kubernetes/kubelet-plugins/volume/exec',
  driver: 'cern~cvmfs',
};

const flexConfigSpec = {
  ...volumeKeys,
  'allow-client-config': { type: 'boolean' },
  'log-file': { type: 'string' },
} as const satisfies Record<string, Field>;

/**
 * Run one call-out; prints exactly one JSON line and sets the exit code. A
 * call-out the driver does not implement is "Not supported" even when the
 * settings cannot be read (kubelet caches that answer; a Failure would fail
 * the pod's volume set-up instead).
 */
export async function flexMain(argv: readonly string[]): Promise<void> {
  let out: { result: unknown; code: number };
  try {
    const configFile = process.env['CVMFS_THIN_FLEXVOLUME_CONFIG'] ?? (existsSync(FLEX_DEFAULTS.config) ? FLEX_DEFAULTS.config : undefined);
    const s = volumeSettings(configFile ? { config: configFile } : {}, null, flexConfigSpec, {
      stateDir: FLEX_DEFAULTS.stateDir,
      loggerName: 'cvmfs-thin-flexvolume',
    });
    const logFile = s.file['log-file'] ?? path.join(s.manager.stateDir, 'flexvolume.log');
    mkdirSync(path.dirname(logFile), { recursive: true });
    const log = pino(
      { name: 'cvmfs-thin-flexvolume', level: s.file['log-level'] ?? 'info', base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime },
      pino.destination({ dest: logFile, sync: true, mkdir: true }),
    );
    out = await flexCall(argv, {
      allowClientConfig: s.file['allow-client-config'] ?? false,
      async open() {
        const lock = await acquireLock(path.join(s.manager.stateDir, 'flexvolume.lock'), { host: systemHost, timeoutMs: s.manager.mountTimeoutMs ?? 100_000 });
        try {
          const manager = await MountManager.open({ ...s.manager, log, checkIntervalMs: 0, host: systemHost });
          return {
            manager,
            async close() {
              await manager.close();
              lock.release();
            },
          };
        } catch (e) {
          lock.release();
          throw e;
        }
      },
    });
    log.info(
      {
        call: argv[0],
        dir: argv[1],
        status: (out.result as { status: string }).status,
        message: (out.result as { message?: string }).message,
        code: (out.result as { code?: string }).code,
      },
      'flexvolume call',
    );
  } catch (e) {
    out = argv[0] !== undefined && !isFlexOperation(argv[0]) ? notSupported(argv[0]) : flexFailure(e);
  }
  process.stdout.write(`${JSON.stringify(out.result)}\n`);
  process.exitCode = out.code;
}

/** `cvmfs-thin flexvolume install`: the driver file kubelet discovers (no kubelet restart needed). */
export function flexvolumeCommand(): Command {
  const cmd = new Command('flexvolume').description(
    'Kubernetes FlexVolume driver cern/cvmfs: kubelet calls "init", "mount <dir> <json>", "unmount <dir>" (each prints one JSON object; any other call-out answers {"status":"Not supported"}); "install" puts the driver in place',
  );
  // the call-outs: what kubelet runs (src/cli/main.ts hands them to flexMain before this parser)
  const callOut = (name: string, args: string, what: string) =>
    cmd
      .command(`${name}${args}`)
      .description(what)
      .allowExcessArguments()
      .action(async (...a: unknown[]) => flexMain([name, ...(a.slice(0, -2) as (string | undefined)[]).filter((x): x is string => x !== undefined)]));
  callOut('init', '', 'kubelet, at discovery: prints the capabilities (mount-only: attach false)');
  callOut('mount', ' <dir> <options-json>', 'kubelet, per pod volume: binds the repository in options.repository read-only on <dir>');
  callOut('unmount', ' <dir>', 'kubelet, per pod volume: releases <dir>');
  cmd
    .command('install')
    .description(`write <plugin-dir>/${FLEX_DEFAULTS.driver}/cvmfs, which runs this cvmfs-thin with this Node`)
    .option('--plugin-dir <dir>', `kubelet's --volume-plugin-dir (default ${FLEX_DEFAULTS.pluginDir})`)
    .option('--config <file>', `the driver's settings (default ${FLEX_DEFAULTS.config} when it exists)`)
    .action(async (o: { pluginDir?: string; config?: string }) => {
      const dir = path.join(path.resolve(o.pluginDir ?? FLEX_DEFAULTS.pluginDir), FLEX_DEFAULTS.driver);
      if (o.config !== undefined) {
        if (!path.isAbsolute(o.config)) throw new InvalidArgumentError(`--config ${o.config} must be an absolute path`, 'CVMFS_THIN_BAD_FLAG');
        loadToml(o.config, flexConfigSpec); // refuse a bad file now rather than at kubelet's first call
      }
      const cli = fileURLToPath(new URL('../../bin/cvmfs-thin.js', import.meta.url));
      const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
      const script = [
        '#!/bin/sh',
        '# Kubernetes FlexVolume driver cern/cvmfs, written by `cvmfs-thin flexvolume install`',
        ...(o.config ? [`CVMFS_THIN_FLEXVOLUME_CONFIG=${q(o.config)}`, 'export CVMFS_THIN_FLEXVOLUME_CONFIG'] : []),
        `exec ${q(process.execPath)} ${q(cli)} flexvolume "$@"`,
        '',
      ].join('\n');
      await fsp.mkdir(dir, { recursive: true, mode: 0o755 });
      // atomic: kubelet may exec the driver while it is being replaced
      await writeFileAtomic(path.join(dir, 'cvmfs'), script, 0o755);
      process.stdout.write(`installed ${path.join(dir, 'cvmfs')}\n`);
    });
  return cmd;
}

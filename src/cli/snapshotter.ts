import { Command, Option } from 'commander';
import { z } from 'zod';
import { cvmfsKeys, cvmfsLocation, loadToml } from '../core/config.js';
import { createLogger, type LogLevel } from '../core/log.js';
import { startSnapshotter } from '../snapshotter/server.js';

export const SNAPSHOTTER_DEFAULTS = {
  address: '/run/containerd-cvmfs-grpc/containerd-cvmfs-grpc.sock',
  root: '/var/lib/containerd-cvmfs-grpc',
};

/** Keys of the snapshotter's TOML file: containerd-cvmfs-grpc's two keys, plus ours. */
export const snapshotterConfigShape = {
  ...cvmfsKeys,
  address: z.string().optional(),
  root: z.string().optional(),
  'thin-images': z.boolean().optional(),
  'remote-layers': z.boolean().optional(),
};

export function snapshotterCommand(): Command {
  return new Command('snapshotter')
    .description('serve the containerd Snapshots API (proxy_plugins snapshotter) with CVMFS thin images and remote layers')
    .option('--address <path>', `unix socket to listen on (default ${SNAPSHOTTER_DEFAULTS.address})`)
    .option('--root <dir>', `state directory (default ${SNAPSHOTTER_DEFAULTS.root})`)
    .option('--config <file>', 'TOML configuration (keys: repository, absolute-mountpoint, cvmfs-root, allowed-repositories, thin-images, remote-layers, log-level, address, root)')
    .addOption(new Option('--log-level <level>', 'log level').choices(['trace', 'debug', 'info', 'warn', 'error', 'fatal']))
    .option('--repository <name>', 'CVMFS repository holding unpacked layers (default unpacked.cern.ch)')
    .option('--absolute-mountpoint <dir>', 'where that repository is mounted (default <cvmfs-root>/<repository>)')
    .option('--cvmfs-root <dir>', 'where CVMFS repositories are mounted (default /cvmfs)')
    .option('--allowed-repository <name...>', 'repositories thin images may reference (default: the repository)')
    .option('--no-thin-images', 'do not recognise thin images')
    .option('--no-remote-layers', 'do not serve CRI-labelled layers from CVMFS')
    .action(async (o: Record<string, unknown>, cmd: Command) => {
      const file = o['config'] ? loadToml(String(o['config']), snapshotterConfigShape) : {};
      const src = (k: string) => cmd.getOptionValueSource(k);
      const pick = <T>(flag: string, key: keyof typeof file): T | undefined =>
        (src(flag) === 'cli' ? o[flag] : (file[key] ?? undefined)) as T | undefined;
      const level = (pick<string>('logLevel', 'log-level') ?? 'info') as LogLevel;
      const log = createLogger(level, 'cvmfs-thin-snapshotter');
      const location = cvmfsLocation({
        repository: pick('repository', 'repository'),
        absoluteMountpoint: pick('absoluteMountpoint', 'absolute-mountpoint'),
        cvmfsRoot: pick('cvmfsRoot', 'cvmfs-root'),
        allowedRepositories: pick('allowedRepository', 'allowed-repositories'),
      });
      const daemon = await startSnapshotter({
        address: pick<string>('address', 'address') ?? SNAPSHOTTER_DEFAULTS.address,
        root: pick<string>('root', 'root') ?? SNAPSHOTTER_DEFAULTS.root,
        location,
        thinImages: src('thinImages') === 'cli' ? Boolean(o['thinImages']) : (file['thin-images'] ?? true),
        remoteLayers: src('remoteLayers') === 'cli' ? Boolean(o['remoteLayers']) : (file['remote-layers'] ?? true),
        log,
      });
      const stop = (sig: string) => {
        log.info({ signal: sig }, 'stopping');
        daemon.stop().then(
          () => process.exit(0),
          (e: unknown) => {
            log.error({ err: e }, 'error while stopping');
            process.exit(1);
          },
        );
      };
      process.once('SIGTERM', () => stop('SIGTERM'));
      process.once('SIGINT', () => stop('SIGINT'));
    });
}

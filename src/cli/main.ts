#!/usr/bin/env node
/**
 * `cvmfs-thin`: the command line of every command (started by bin/cvmfs-thin.js);
 * picks the subcommand and loads only its code.
 */
import { readFileSync } from 'node:fs';
import v8 from 'node:v8';
import { Command } from 'commander';
import { ThinError } from '../core/errors/errors.js';
import { cliErrorText } from '../edge/error-policy.js';

const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };

/**
 * Subcommands, loaded on demand: a daemon loads only its own code (the
 * snapshotter's memory footprint must not pay for the converter).
 */
const COMMANDS: Record<string, () => Promise<Command>> = {
  snapshotter: async () => (await import('./snapshotter.js')).snapshotterCommand(),
  graphdriver: async () => (await import('./graphdriver.js')).graphdriverCommand(),
  convert: async () => (await import('./convert.js')).convertCommand(),
  wishlist: async () => (await import('./wishlist.js')).wishlistCommand(),
  gc: async () => (await import('./gc.js')).gcCommand(),
  rm: async () => (await import('./rm.js')).rmCommand(),
  'volume-plugin': async () => (await import('./volume-plugin.js')).volumePluginCommand(),
  csi: async () => (await import('./csi.js')).csiCommand(),
  flexvolume: async () => (await import('./flexvolume.js')).flexvolumeCommand(),
  setup: async () => (await import('./setup.js')).setupCommand(),
  doctor: async () => (await import('./doctor.js')).doctorCommand(),
  'why-slow': async () => (await import('./why-slow.js')).whySlowCommand(),
  profile: async () => (await import('./profile.js')).profileCommand(),
};

/**
 * FlexVolume call-outs bypass the command parser: kubelet reads exactly one
 * JSON object, also for call-outs this driver does not know (today's
 * `getvolumename`, `expandvolume`…, or ones kubelet adds later). Only the
 * driver's own administration (`install`) and help go through the parser.
 */
function isFlexCallOut(args: readonly string[]): boolean {
  const [op] = args;
  if (op === 'install' || op === 'help' || args.some((a) => a === '--help' || a === '-h')) return false;
  return op === undefined || !op.startsWith('-');
}

export async function buildCli(argv: string[] = process.argv): Promise<Command> {
  const program = new Command('cvmfs-thin')
    .description(
      'Run container images straight from CernVM-FS (containerd snapshotter, Docker graph driver, image converter) and mount CVMFS repositories as volumes (Docker volume plugin, Kubernetes CSI and FlexVolume)',
    )
    .version(pkg.version, '-v, --version')
    .showHelpAfterError();
  const sub = argv[2];
  // long-running daemons: make V8 favour a small heap (measured: 10 000 snapshots
  // take ~75 MiB of RSS instead of ~140 MiB after a burst of requests)
  if (sub === 'snapshotter' || sub === 'graphdriver' || sub === 'volume-plugin' || sub === 'csi') v8.setFlagsFromString('--optimize-for-size');
  const names = sub !== undefined && Object.hasOwn(COMMANDS, sub) ? [sub] : Object.keys(COMMANDS);
  for (const n of names) program.addCommand(await COMMANDS[n]!());
  return program;
}

export async function main(argv: string[]): Promise<void> {
  if (argv[2] === 'flexvolume' && isFlexCallOut(argv.slice(3))) {
    await (await import('./flexvolume.js')).flexMain(argv.slice(3));
    return;
  }
  try {
    await (await buildCli(argv)).parseAsync(argv);
  } catch (e) {
    // the message and its code (error-policy.ts); an error that is not ours also gets its stack
    process.stderr.write(`cvmfs-thin: ${cliErrorText(e)}\n`);
    process.exitCode = ThinError.is(e) && e.kind === 'invalid-argument' ? 2 : 1;
  }
}

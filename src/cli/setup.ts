/**
 * `cvmfs-thin setup containerd|docker|volumes|podman`: configure a node
 * for cvmfs-thin (config entries, units); run once per node by an
 * administrator, or on Kubernetes by the containerd-setup DaemonSet
 * (packaging/kubernetes/snapshotter/containerd-setup.yaml).
 */
import { existsSync, realpathSync } from 'node:fs';
import path from 'node:path';
import { Command, Option } from 'commander';
import { InvalidArgumentError } from '../core/errors/errors.js';
import { type Host, systemHost } from '../core/host/host.js';
import type { Target } from '../ops/files.js';
import { type CommonOptions, type ContainerdOptions, planContainerd, planDocker, planVolumes, runPlan, runUndo, SNAPSHOTTER_ADDRESS } from '../ops/setup.js';
import { defaultStore, planPodman } from '../ops/podman.js';
import { DAEMONS, PACKAGED_EXEC } from '../ops/templates.js';

export const SETUP_DEFAULTS = {
  containerdConfig: '/etc/containerd/config.toml',
  daemonJson: '/etc/docker/daemon.json',
  systemdDir: '/etc/systemd/system',
  stateDir: '/var/lib/cvmfs-thin/setup',
  storageConf: '/etc/containers/storage.conf',
};

type Opts = Record<string, unknown>;

/** How units start cvmfs-thin: `cvmfs-thin` on PATH, else this node and this script. */
function defaultExec(): string {
  const self = process.argv[1] ? realpathSync(process.argv[1]) : undefined;
  for (const dir of (process.env['PATH'] ?? '').split(':')) {
    const p = path.join(dir || '.', 'cvmfs-thin');
    try {
      if (existsSync(p) && (!self || realpathSync(p) === self) && ['/usr/bin', '/usr/local/bin', '/bin'].includes(dir)) return PACKAGED_EXEC;
    } catch {
      /* dangling link */
    }
  }
  if (!self) return PACKAGED_EXEC;
  return `${process.execPath} ${self}`;
}

function common(o: Opts): CommonOptions {
  const prefix = o['rootPrefix'] ? path.resolve(String(o['rootPrefix'])) : '';
  const p = (flag: string, def: string) => path.resolve((o[flag] as string | undefined) ?? path.join(prefix || '/', def));
  const systemctl = String(o['systemctl'] ?? 'systemctl')
    .trim()
    .split(/\s+/);
  if (systemctl[0] === '') throw new InvalidArgumentError('--systemctl: empty command', 'CVMFS_THIN_BAD_FLAG');
  return {
    rootPrefix: prefix,
    stateDir: p('stateDir', SETUP_DEFAULTS.stateDir),
    systemdDir: p('systemdDir', SETUP_DEFAULTS.systemdDir),
    units: o['units'] !== false,
    exec: (o['exec'] as string | undefined) ?? defaultExec(),
    systemctl,
    systemdRunning: existsSync(path.join(prefix || '/', 'run/systemd/system')),
    restart: o['restart'] !== false,
    repository: o['repository'] as string | undefined,
    cvmfsRoot: o['cvmfsRoot'] as string | undefined,
  };
}

function containerdOpts(o: Opts, c: CommonOptions, kubernetes: boolean): ContainerdOptions {
  const p = (flag: string, def: string) => path.resolve((o[flag] as string | undefined) ?? path.join(c.rootPrefix || '/', def));
  const v = o['configVersion'] as string | undefined;
  return {
    containerdConfig: p('containerdConfig', SETUP_DEFAULTS.containerdConfig),
    snapshotterConfig: p('snapshotterConfig', DAEMONS.snapshotter.configPath),
    pluginName: (o['snapshotterName'] as string | undefined) ?? 'cvmfs-snapshotter',
    address: o['snapshotterAddress'] as string | undefined,
    kubernetes,
    bootstrapRuntime: kubernetes ? (o['bootstrapRuntime'] as string | undefined) : undefined,
    configVersion: v === undefined ? undefined : (Number(v) as 2 | 3),
  };
}

function withCommon(cmd: Command): Command {
  return cmd
    .option('--dry-run', 'print the exact changes (unified diff) and the systemctl calls; change nothing')
    .option('--undo', 'restore the files this target changed, byte for byte, and remove the ones it created')
    .option('--root-prefix <dir>', "prefix of every default path below (a copy of a node's root, or the host's root mounted in a pod)")
    .option('--state-dir <dir>', `backups and the manifest for --undo (default ${SETUP_DEFAULTS.stateDir})`)
    .option('--systemd-dir <dir>', `where units are installed (default ${SETUP_DEFAULTS.systemdDir})`)
    .option('--no-units', 'do not install our systemd units or daemon config files (the daemon runs elsewhere, e.g. as a DaemonSet)')
    .option('--no-restart', 'do not restart containerd/dockerd (print that it is needed)')
    .option('--exec <command>', `command the units run (default: ${PACKAGED_EXEC} when installed on PATH, else this node and script)`)
    .option('--systemctl <command>', 'systemctl command, split on spaces (e.g. "nsenter -t 1 -m -- systemctl" from a pod)', 'systemctl')
    .option('--repository <name>', 'CVMFS repository with the layers, written to the daemon config files')
    .option('--cvmfs-root <dir>', 'where CVMFS is mounted, written to the daemon config files');
}

function withContainerd(cmd: Command): Command {
  return cmd
    .option('--containerd-config <file>', `containerd's configuration (default ${SETUP_DEFAULTS.containerdConfig})`)
    .option('--snapshotter-config <file>', `the snapshotter's configuration (default ${DAEMONS.snapshotter.configPath})`)
    .option('--snapshotter-address <socket>', `the snapshotter's socket (default: its config file's address, else ${SNAPSHOTTER_ADDRESS})`)
    .option('--snapshotter-name <name>', 'proxy plugin name (default cvmfs-snapshotter)')
    .addOption(new Option('--config-version <n>', 'version of a new containerd config file (default: 3 for containerd 2.x, else 2)').choices(['2', '3']));
}

/** Options an undo needs again: where the state and the files are, how systemctl is run. */
const UNDO_KEYS = [
  'rootPrefix',
  'stateDir',
  'systemdDir',
  'storageConf',
  'containerdConfig',
  'snapshotterConfig',
  'daemonJson',
  'graphdriverConfig',
  'volumePluginConfig',
  'systemctl',
  'restart',
];

/** Those of UNDO_KEYS given on the command line, as arguments. */
function undoArgs(cmd: Command | undefined): string[] {
  if (!cmd) return [];
  const out: string[] = [];
  for (const key of UNDO_KEYS) {
    const opt = cmd.options.find((x) => x.attributeName() === key);
    if (!opt?.long || cmd.getOptionValueSource(key) !== 'cli') continue;
    const v = cmd.getOptionValue(key) as unknown;
    if (typeof v === 'boolean') out.push(opt.long);
    else out.push(opt.long, String(v));
  }
  return out;
}

async function run(target: Target, o: Opts, plan: (c: CommonOptions) => Promise<Parameters<typeof runPlan>[1]>, host: Host, cmd?: Command): Promise<void> {
  const c = { ...common(o), undoArgs: undoArgs(cmd) };
  const io = { out: (s: string) => void process.stdout.write(s) };
  if (o['undo']) await runUndo(c, target, host, io, Boolean(o['dryRun']));
  else await runPlan(c, await plan(c), host, io, Boolean(o['dryRun']));
}

export function setupCommand(host: Host = systemHost): Command {
  const setup = new Command('setup').description(
    'configure this node: containerd, dockerd, the volume plugin and podman/CRI-O for cvmfs-thin (idempotent; --dry-run shows the diff; --undo restores)',
  );

  setup.addCommand(
    withContainerd(withCommon(new Command('containerd')))
      .description('containerd: proxy_plugins entry for the snapshotter (and with --kubernetes the CRI snapshotter and annotations), the snapshotter unit')
      .option('--kubernetes', 'also make CRI (kubelet) pull through the snapshotter, with disable_snapshot_annotations = false')
      .option(
        '--bootstrap-runtime <name>',
        "with --kubernetes: add a CRI runtime handler NAME on containerd's overlayfs snapshotter (containerd >= 1.7), for the RuntimeClass of the snapshotter's own DaemonSet",
      )
      .action(async (o: Opts, cmd: Command) => run('containerd', o, (c) => planContainerd(c, containerdOpts(o, c, Boolean(o['kubernetes'])), host), host, cmd)),
  );

  setup.addCommand(
    withContainerd(withCommon(new Command('docker')))
      .description(
        'dockerd: daemon.json for the graph driver (Docker 20.10-27) or the containerd image store with the snapshotter (Docker >= 24), and their units',
      )
      .option('--daemon-json <file>', `dockerd's configuration (default ${SETUP_DEFAULTS.daemonJson})`)
      .addOption(
        new Option('--mode <mode>', 'graphdriver, containerd-store, or auto: graph driver for Docker 20.10-27, containerd image store for 28+')
          .choices(['auto', 'graphdriver', 'containerd-store'])
          .default('auto'),
      )
      .option('--docker-version <version>', 'the Docker version (default: dockerd --version)')
      .option('--graphdriver-name <name>', 'storage driver name = socket /run/docker/plugins/<name>.sock', 'cvmfs')
      .option('--graphdriver-config <file>', `the graph driver's configuration (default ${DAEMONS.graphdriver.configPath})`)
      .option('--volumes', 'also set up the volume plugin (as setup volumes)')
      .option('--volume-driver-name <name>', 'volume driver name = socket /run/docker/plugins/<name>.sock', 'cvmfs')
      .option('--volume-plugin-config <file>', `the volume plugin's configuration (default ${DAEMONS['volume-plugin'].configPath})`)
      .action(async (o: Opts, cmd: Command) =>
        run(
          'docker',
          o,
          (c) => {
            const p = (flag: string, def: string) => path.resolve((o[flag] as string | undefined) ?? path.join(c.rootPrefix || '/', def));
            const volumePluginConfig = p('volumePluginConfig', DAEMONS['volume-plugin'].configPath);
            const graphdriverConfig = p('graphdriverConfig', DAEMONS.graphdriver.configPath);
            return planDocker(
              c,
              {
                daemonJson: p('daemonJson', SETUP_DEFAULTS.daemonJson),
                mode: o['mode'] as 'auto',
                dockerVersion: o['dockerVersion'] as string | undefined,
                graphdriverName: String(o['graphdriverName']),
                graphdriverConfig,
                containerd: containerdOpts(o, c, false),
                volumePluginConfig,
                volumes: o['volumes'] ? { volumeDriverName: String(o['volumeDriverName']), volumePluginConfig, graphdriverConfig } : undefined,
              },
              host,
            );
          },
          host,
          cmd,
        ),
      ),
  );

  setup.addCommand(
    withCommon(new Command('volumes'))
      .description('the Docker volume plugin: its config file and unit (ordered before docker.service)')
      .option('--volume-driver-name <name>', 'volume driver name = socket /run/docker/plugins/<name>.sock', 'cvmfs')
      .option('--volume-plugin-config <file>', `the volume plugin's configuration (default ${DAEMONS['volume-plugin'].configPath})`)
      .option('--graphdriver-config <file>', `the graph driver's configuration, to keep the names apart (default ${DAEMONS.graphdriver.configPath})`)
      .action(async (o: Opts, cmd: Command) =>
        run(
          'volumes',
          o,
          (c) => {
            const p = (flag: string, def: string) => path.resolve((o[flag] as string | undefined) ?? path.join(c.rootPrefix || '/', def));
            return planVolumes(c, {
              volumeDriverName: String(o['volumeDriverName']),
              volumePluginConfig: p('volumePluginConfig', DAEMONS['volume-plugin'].configPath),
              graphdriverConfig: p('graphdriverConfig', DAEMONS.graphdriver.configPath),
            });
          },
          host,
          cmd,
        ),
      ),
  );
  setup.addCommand(
    withCommon(new Command('podman'))
      .description("podman and CRI-O: the repository's store (convert --podman-store) as an additional image store in storage.conf")
      .option('--storage-conf <file>', `containers/storage's configuration (default ${SETUP_DEFAULTS.storageConf})`)
      .option('--store <dir>', 'the store as the node sees it (default <cvmfs-root>/<repository>/podmanStore)')
      .option('--fuse-overlayfs', 'mount with fuse-overlayfs (rootless podman, or layers converted with --whiteouts keep)')
      .action(async (o: Opts, cmd: Command) =>
        run(
          'podman',
          o,
          (c) =>
            planPodman(c, {
              storageConf: path.resolve((o['storageConf'] as string | undefined) ?? path.join(c.rootPrefix || '/', SETUP_DEFAULTS.storageConf)),
              store: (o['store'] as string | undefined) ?? defaultStore(c),
              fuseOverlayfs: Boolean(o['fuseOverlayfs']),
            }),
          host,
          cmd,
        ),
      ),
  );
  return setup;
}

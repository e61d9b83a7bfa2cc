/**
 * `cvmfs-thin doctor`: checks a node (kernel, CVMFS, containerd/dockerd
 * configuration, our daemons' sockets) and says what to fix; run by an
 * administrator on the node (src/ops/doctor.ts).
 */
import path from 'node:path';
import { Command } from 'commander';
import { InvalidArgumentError } from '../core/errors/errors.js';
import { type Host, systemHost } from '../core/host/host.js';
import { formatChecks, runDoctor } from '../ops/doctor.js';
import { DAEMONS } from '../ops/templates.js';
import { SETUP_DEFAULTS } from './setup.js';

function seconds(v: string): number {
  if (!/^\d+(\.\d+)?$/.test(v) || Number(v) <= 0)
    throw new InvalidArgumentError(`--timeout ${JSON.stringify(v)}: want a number of seconds`, 'CVMFS_THIN_BAD_FLAG');
  return Number(v);
}

export function doctorCommand(host: Host = systemHost): Command {
  return new Command('doctor')
    .description(
      'check this node for cvmfs-thin (overlayfs, /cvmfs, the repository, dead or stalled CVMFS mounts and the containers on them, the CVMFS client configuration, containerd/dockerd configuration, sockets, Docker version, idmapped mounts) and say what to fix; exit 1 on a failure',
    )
    .option('--json', 'print the checks as JSON')
    .option('--cvmfs-root <dir>', "where CVMFS is mounted (default: the daemons' config files, else /cvmfs)")
    .option('--repository <name>', "the repository with the layers (default: the daemons' config files, else unpacked.cern.ch)")
    .option('--root-prefix <dir>', 'prefix of every default file path below')
    .option('--containerd-config <file>', `containerd's configuration (default ${SETUP_DEFAULTS.containerdConfig})`)
    .option('--daemon-json <file>', `dockerd's configuration (default ${SETUP_DEFAULTS.daemonJson})`)
    .option('--snapshotter-config <file>', `the snapshotter's configuration (default ${DAEMONS.snapshotter.configPath})`)
    .option('--graphdriver-config <file>', `the graph driver's configuration (default ${DAEMONS.graphdriver.configPath})`)
    .option('--volume-plugin-config <file>', `the volume plugin's configuration (default ${DAEMONS['volume-plugin'].configPath})`)
    .option('--systemd-dir <dir>', `where units are installed (default ${SETUP_DEFAULTS.systemdDir})`)
    .option('--timeout <seconds>', 'how long a socket or a CVMFS mount may take to answer (default 10)')
    .option('--snapshotter-root <dir>', "the snapshotter's state directory, whose containers are checked (default: its config file's root, else its default)")
    .option('--graphdriver-state-dir <dir>', "the graph driver's state directory (default: its config file's state-dir, else its default)")
    .action(async (o: Record<string, string | boolean | undefined>) => {
      const prefix = typeof o['rootPrefix'] === 'string' ? path.resolve(o['rootPrefix']) : '/';
      const p = (flag: string, def: string) => path.resolve(typeof o[flag] === 'string' ? o[flag] : path.join(prefix, def));
      const checks = await runDoctor({
        host,
        containerdConfig: p('containerdConfig', SETUP_DEFAULTS.containerdConfig),
        daemonJson: p('daemonJson', SETUP_DEFAULTS.daemonJson),
        snapshotterConfig: p('snapshotterConfig', DAEMONS.snapshotter.configPath),
        graphdriverConfig: p('graphdriverConfig', DAEMONS.graphdriver.configPath),
        volumePluginConfig: p('volumePluginConfig', DAEMONS['volume-plugin'].configPath),
        systemdDir: p('systemdDir', SETUP_DEFAULTS.systemdDir),
        cvmfsRoot: o['cvmfsRoot'] as string | undefined,
        repository: o['repository'] as string | undefined,
        snapshotterRoot: o['snapshotterRoot'] as string | undefined,
        graphdriverStateDir: o['graphdriverStateDir'] as string | undefined,
        ...(typeof o['timeout'] === 'string' ? { timeoutMs: seconds(o['timeout']) * 1000 } : {}),
      });
      const ok = !checks.some((c) => c.status === 'fail');
      process.stdout.write(o['json'] ? `${JSON.stringify({ ok, checks }, null, 2)}\n` : formatChecks(checks));
      if (!ok) process.exitCode = 1;
    });
}

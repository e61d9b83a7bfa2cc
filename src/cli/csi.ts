/**
 * `cvmfs-thin csi`: the Kubernetes CSI node plugin daemon (CVMFS repositories
 * as read-only volumes); run by kubelet's DaemonSet
 * (packaging/kubernetes/csi/daemonset.yaml).
 */
import os from 'node:os';
import path from 'node:path';
import { Command } from 'commander';
import type { Field } from '../edge/settings.js';
import { addVolumeOptions, volumeKeys, type VolumeManagerSettings, volumeSettings } from './volume-config.js';
import { CSI_DEFAULTS, checkDriverName, checkNodeId, parseEndpoint, startCsi } from '../csi/server.js';
import { addMetricsOption, maybeStartMetrics, readiness, serveWithMetrics } from './daemon-common.js';

/** Keys of the CSI plugin's TOML file: the shared volume keys plus the plugin's own (same names as the flags). */
export const csiConfigSpec = {
  ...volumeKeys,
  endpoint: { type: 'string', check: (v: string) => (v.startsWith('unix:') || path.isAbsolute(v) ? null : 'must be unix:///path or an absolute path') },
  'node-id': { type: 'string' },
  'driver-name': { type: 'string' },
  'allow-ephemeral-client-config': { type: 'boolean' },
  'metrics-address': { type: 'string' },
} as const satisfies Record<string, Field>;

interface CsiSettings {
  endpoint: string;
  nodeId: string;
  driverName: string;
  allowEphemeralClientConfig: boolean;
  metricsAddress: string | undefined;
  manager: VolumeManagerSettings;
}

/**
 * Flags, then the environment (CSI_ENDPOINT, NODE_ID: what a CSI supervisor
 * and the DaemonSet set), then the config file, then the defaults.
 */
export function resolveCsiSettings(o: Record<string, unknown>, cmd: Command | null, env: NodeJS.ProcessEnv = process.env): CsiSettings {
  const s = volumeSettings(o, cmd, csiConfigSpec, { stateDir: CSI_DEFAULTS.stateDir, loggerName: 'cvmfs-thin-csi' }, env);
  const out: CsiSettings = {
    endpoint: s.pick<string>('endpoint', 'endpoint', 'CSI_ENDPOINT') ?? CSI_DEFAULTS.endpoint,
    nodeId: s.pick<string>('nodeId', 'node-id', 'NODE_ID') ?? os.hostname(),
    driverName: s.pick<string>('driverName', 'driver-name') ?? CSI_DEFAULTS.driverName,
    allowEphemeralClientConfig: s.pick<boolean>('allowEphemeralClientConfig', 'allow-ephemeral-client-config') ?? false,
    metricsAddress: s.pick<string>('metricsAddress', 'metrics-address'),
    manager: s.manager,
  };
  parseEndpoint(out.endpoint);
  checkDriverName(out.driverName);
  checkNodeId(out.nodeId);
  return out;
}

export function csiCommand(): Command {
  const cmd = new Command('csi')
    .description('serve the Kubernetes CSI node plugin (csi.v1 Identity + Node): CVMFS repositories, or all of /cvmfs, as read-only volumes')
    .option('--endpoint <endpoint>', `CSI socket, unix:///path (default: $CSI_ENDPOINT, else ${CSI_DEFAULTS.endpoint})`)
    .option('--node-id <id>', 'this node in NodeGetInfo (default: $NODE_ID, else the host name)')
    .option('--driver-name <name>', `plugin name (default ${CSI_DEFAULTS.driverName}, the name cvmfs-csi uses)`)
    .option('--allow-ephemeral-client-config', 'let inline ephemeral volumes (pod authors) set clientConfig');
  return addMetricsOption(addVolumeOptions(cmd, CSI_DEFAULTS.stateDir)).action(async (o: Record<string, unknown>, c: Command) => {
    const s = resolveCsiSettings(o, c);
    const socket = parseEndpoint(s.endpoint);
    const m = await maybeStartMetrics(s.metricsAddress, s.manager.log, {
      ready: readiness(socket, s.manager.cvmfsRoot, s.manager.cvmfsTimeoutMs ?? null, s.manager.log),
    });
    await serveWithMetrics(m, s.manager.log, () =>
      startCsi({
        ...s.manager,
        endpoint: s.endpoint,
        nodeId: s.nodeId,
        driverName: s.driverName,
        allowEphemeralClientConfig: s.allowEphemeralClientConfig,
        metrics: m.metrics,
      }),
    );
  });
}

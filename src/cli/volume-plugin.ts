/**
 * `cvmfs-thin volume-plugin`: the Docker volume plugin daemon (CVMFS repositories
 * as volumes); run by systemd (packaging/dockervolume/cvmfs-thin-volume-plugin.service)
 * or as a managed Docker plugin (packaging/dockervolume/config.json).
 */
import { Command } from 'commander';
import type { Field } from '../edge/settings.js';
import { systemHost } from '../core/host/host.js';
import { addVolumeOptions, volumeKeys, volumeSettings } from './volume-config.js';
import { parseAllowed } from '../core/volumes/spec.js';
import { checkKnownVolumes } from '../dockervolume/driver.js';
import { startVolumePlugin } from '../dockervolume/server.js';
import { addMetricsOption, maybeStartMetrics, readiness, serveWithMetrics } from './daemon-common.js';

export const VOLUME_PLUGIN_DEFAULTS = {
  /** Legacy plugin discovery: `-d cvmfs` / `volume-driver=cvmfs` finds /run/docker/plugins/cvmfs.sock (CERN's docker-volume-cvmfs socket). */
  socket: '/run/docker/plugins/cvmfs.sock',
  stateDir: '/var/lib/cvmfs-thin/volumes',
};

/** Keys of the volume plugin's TOML file: the shared volume keys, plus its socket. */
export const volumePluginConfigSpec = {
  ...volumeKeys,
  socket: { type: 'string', check: (v: string) => (v.startsWith('/') ? null : 'must be an absolute path') },
  'known-volumes': { type: 'string[]' },
  'metrics-address': { type: 'string' },
} as const satisfies Record<string, Field>;

export function volumePluginCommand(): Command {
  const cmd = new Command('volume-plugin')
    .description('serve a Docker volume plugin: CVMFS repositories as volumes (docker run -v cms.cern.ch:/cvmfs/cms.cern.ch)')
    .option('--socket <path>', `unix socket to listen on (default ${VOLUME_PLUGIN_DEFAULTS.socket}; the file name is the driver name)`)
    .option(
      '--known-volume <name...>',
      'volumes that exist without docker volume create (-v NAME:/path then works without --volume-driver); any other name must be created, which is how -o options reach the plugin',
    );
  addVolumeOptions(cmd, VOLUME_PLUGIN_DEFAULTS.stateDir);
  return addMetricsOption(cmd).action(async (o: Record<string, unknown>, c: Command) => {
    const s = volumeSettings(o, c, volumePluginConfigSpec, { stateDir: VOLUME_PLUGIN_DEFAULTS.stateDir, loggerName: 'cvmfs-thin-volume-plugin' });
    const socket = s.pick<string>('socket', 'socket') ?? VOLUME_PLUGIN_DEFAULTS.socket;
    const knownVolumes = s.pick<string[]>('knownVolume', 'known-volumes');
    checkKnownVolumes(knownVolumes ?? [], (n) => parseAllowed(s.manager.allow, s.manager.clientConfigKeys ?? [], n, {}));
    const m = await maybeStartMetrics(s.pick<string>('metricsAddress', 'metrics-address'), s.manager.log, {
      ready: readiness(socket, s.manager.cvmfsRoot, s.manager.cvmfsTimeoutMs ?? null, s.manager.log),
    });
    await serveWithMetrics(m, s.manager.log, () =>
      startVolumePlugin({ ...s.manager, socket, knownVolumes, host: systemHost, metrics: m.metrics, daemon: 'volume-plugin' }),
    );
  });
}

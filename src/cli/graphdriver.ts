/**
 * `cvmfs-thin graphdriver`: the Docker graph driver plugin daemon (thin images
 * on dockerd 20.10-27); run by systemd
 * (packaging/graphdriver/cvmfs-thin-graphdriver.service) or as a managed
 * Docker plugin (packaging/graphdriver/config.json).
 */
import { Command, Option } from 'commander';
import type { Field } from '../edge/settings.js';
import type { IdmapMode } from '../graphdriver/options.js';
import { type GraphDriverDaemonOptions, type RunningGraphDriver, startGraphDriver } from '../graphdriver/server.js';
import { systemHost } from '../core/host/host.js';
import type { Metrics } from '../core/telemetry/metrics.js';
import type { Logger } from 'pino';
import {
  addCvmfsOptions,
  cvmfsKeys,
  addMetricsOption,
  maybeStartMetrics,
  readiness,
  daemonSettings,
  serveWithMetrics,
  wholeNumber,
  zeroOrMore,
} from './daemon-common.js';

export const GRAPHDRIVER_DEFAULTS = {
  /** Legacy plugin discovery: dockerd -s cvmfs finds /run/docker/plugins/cvmfs.sock. */
  socket: '/run/docker/plugins/cvmfs.sock',
  stateDir: '/var/lib/cvmfs-thin/graphdriver',
};

/** Keys of the graph driver's TOML file: the snapshotter's CVMFS keys, plus ours. */
const graphdriverConfigSpec = {
  ...cvmfsKeys,
  socket: { type: 'string' },
  'state-dir': { type: 'string' },
  'thin-images': { type: 'boolean' },
  'idmapped-layers': { type: 'enum', values: ['auto', 'off', 'require'] },
  prefetch: { type: 'boolean' },
  'start-budget': { type: 'integer', min: 1, max: 3_600_000 },
  'hot-wait': { type: 'integer', min: 0, max: 60_000 },
  'hot-image': { type: 'boolean' },
  'metrics-address': { type: 'string' },
  volumes: { type: 'boolean' },
  'volume-config': { type: 'string' },
} as const satisfies Record<string, Field>;

/**
 * `--volumes`: the Docker volume plugin's VolumeDriver on the graph driver's
 * socket, so that both keep CERN's driver name `cvmfs` (one socket, one name).
 */
async function volumeInterfaces(
  file: string | undefined,
  cvmfsRoot: string,
  log: Logger,
  metrics: Metrics,
): Promise<NonNullable<GraphDriverDaemonOptions['also']>> {
  const [{ volumeSettings }, { volumePluginConfigSpec, VOLUME_PLUGIN_DEFAULTS }, { MountManager }, { DockerVolumeDriver }, { volumeDriverInterface }] =
    await Promise.all([
      import('./volume-config.js'),
      import('./volume-plugin.js'),
      import('../core/volumes/manager.js'),
      import('../dockervolume/driver.js'),
      import('../dockervolume/server.js'),
    ]);
  // the volume settings' own cvmfs-root, else the graph driver's
  const vs = volumeSettings(file ? { config: file } : {}, null, volumePluginConfigSpec, {
    stateDir: VOLUME_PLUGIN_DEFAULTS.stateDir,
    loggerName: 'cvmfs-thin-graphdriver',
    cvmfsRoot,
  });
  const manager = await MountManager.open({
    ...vs.manager,
    log,
    host: systemHost,
    metrics,
    daemon: 'volume-plugin',
  });
  let driver: InstanceType<typeof DockerVolumeDriver>;
  try {
    driver = new DockerVolumeDriver(manager, log, { knownVolumes: vs.file['known-volumes'] });
  } catch (e) {
    await manager.close();
    throw e;
  }
  return { interfaces: [volumeDriverInterface(driver)], close: () => driver.close() };
}

export function graphdriverCommand(): Command {
  const cmd = new Command('graphdriver')
    .description('serve a Docker graph driver plugin (dockerd 20.10-27 with --experimental) that runs CVMFS thin images')
    .option('--socket <path>', `unix socket to listen on (default ${GRAPHDRIVER_DEFAULTS.socket}; the file name is the driver name for dockerd -s)`)
    .option('--state-dir <dir>', `where the last GraphDriver.Init is remembered across plugin restarts (default ${GRAPHDRIVER_DEFAULTS.stateDir})`)
    .option('--config <file>', `TOML configuration (keys: ${Object.keys(graphdriverConfigSpec).join(', ')})`);
  addCvmfsOptions(cmd)
    .option('--no-thin-images', 'do not recognise thin images (every layer is an ordinary layer)')
    .addOption(
      new Option(
        '--idmapped-layers <mode>',
        'with dockerd --userns-remap, idmapped mounts of CVMFS layers: auto (use when the file system allows), off, require',
      ).choices(['auto', 'off', 'require']),
    )
    .option('--no-prefetch', "do not read an image's access profile ahead when a container of it is created")
    .option(
      '--hot-wait <ms>',
      "how long registering a thin image waits for its hot layer: the files its profile's pack holds, unpacked locally above its layers (default 1500; 0: no hot layers)",
      zeroOrMore,
    )
    .option('--no-hot-image', "do not mount a profile's EROFS image from CVMFS as the hot layer: unpack its pack instead")
    .option('--start-budget <ms>', 'log why a container start took longer than this (its phases, what CVMFS fetched); see cvmfs-thin why-slow', wholeNumber)
    .option('--volumes', 'also serve the Docker volume plugin on this socket (Implements GraphDriver and VolumeDriver: one driver name for both)')
    .option('--volume-config <file>', 'with --volumes: the volume settings (the keys of volume-plugin.toml; socket is ignored)');
  return addMetricsOption(cmd).action(async (o: Record<string, unknown>, c: Command) => {
    const s = daemonSettings(o, c, graphdriverConfigSpec, 'cvmfs-thin-graphdriver');
    const socket = s.pick<string>('socket', 'socket') ?? GRAPHDRIVER_DEFAULTS.socket;
    let daemon: RunningGraphDriver | undefined;
    let stopped = false;
    const mountpoint = s.location.absoluteMountpoint;
    const m = await maybeStartMetrics(s.pick<string>('metricsAddress', 'metrics-address'), s.log, {
      live: { store: () => (daemon === undefined ? 'starting' : stopped ? 'stopping' : null) },
      ready: readiness(socket, mountpoint, s.cvmfsTimeoutMs ?? null, s.log),
    });
    const start = async () => {
      const volumes = s.pick<boolean>('volumes', 'volumes') ?? false;
      const also = volumes ? await volumeInterfaces(s.pick<string>('volumeConfig', 'volume-config'), s.location.cvmfsRoot, s.log, m.metrics) : undefined;
      return startGraphDriver({
        also,
        socket,
        stateDir: s.pick<string>('stateDir', 'state-dir') ?? GRAPHDRIVER_DEFAULTS.stateDir,
        location: s.location,
        thinImages: s.enabled('thinImages', 'thin-images'),
        idmappedLayers: s.pick<IdmapMode>('idmappedLayers', 'idmapped-layers') ?? 'auto',
        log: s.log,
        metrics: m.metrics,
        cvmfsTimeoutMs: s.cvmfsTimeoutMs,
        checkIntervalMs: s.checkIntervalMs,
        starts: {
          prefetch: s.enabled('prefetch', 'prefetch'),
          budgetMs: s.pick<number>('startBudget', 'start-budget'),
          hotWaitMs: s.pick<number>('hotWait', 'hot-wait'),
          hotImage: s.enabled('hotImage', 'hot-image'),
        },
      });
    };
    daemon = await serveWithMetrics(m, s.log, start, () => (stopped = true));
  });
}

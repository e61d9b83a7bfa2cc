/**
 * The Docker volume plugin's edge: the VolumeDriver route table on the shared
 * plugin transport (src/edge/plugin-http.ts), and the daemon that opens the
 * mount manager and serves it. Errors are mapped once, by the transport.
 */
import type { Logger } from 'pino';
import { type PluginInterface, type PluginServer, servePlugin } from '../edge/plugin-http.js';
import { MountManager } from '../core/volumes/manager.js';
import type { Metrics } from '../core/telemetry/metrics.js';
import type { MountManagerOptions } from '../core/volumes/types.js';
import { DockerVolumeDriver, type DockerVolumeDriverOptions, type VolumeManager } from './driver.js';
import { parseMountId, parseName, parseOpts } from './protocol.js';

/** The VolumeDriver interface's routes (POST /VolumeDriver.<Method>). */
export function volumeDriverInterface(driver: DockerVolumeDriver): PluginInterface {
  return {
    name: 'VolumeDriver',
    routes: {
      Capabilities: async () => ({ Capabilities: { Scope: 'local' } }),
      Create: async (c) => {
        const b = await c.json();
        await driver.create(parseName(b), parseOpts(b));
        return {};
      },
      Remove: async (c) => {
        await driver.remove(parseName(await c.json()));
        return {};
      },
      Get: async (c) => ({ Volume: await driver.get(parseName(await c.json())) }),
      List: async (c) => {
        await c.json();
        return { Volumes: driver.list() };
      },
      Path: async (c) => ({ Mountpoint: driver.path(parseName(await c.json())) }),
      Mount: async (c) => {
        const b = await c.json();
        return { Mountpoint: await driver.mount(parseName(b), parseMountId(b)) };
      },
      Unmount: async (c) => {
        const b = await c.json();
        await driver.unmount(parseName(b), parseMountId(b));
        return {};
      },
    },
  };
}

interface VolumePluginOptions extends MountManagerOptions, DockerVolumeDriverOptions {
  socket: string;
}

export interface RunningVolumePlugin {
  driver: DockerVolumeDriver;
  manager: VolumeManager;
  plugin: PluginServer;
  /** Stop serving; never unmounts anything (running containers keep their volumes). */
  stop(): Promise<void>;
}

/** Serve a driver over an already opened manager (tests pass a manager with a recording host). */
export async function serveVolumePlugin(
  manager: VolumeManager,
  socket: string,
  log: Logger,
  metrics?: Metrics,
  o: DockerVolumeDriverOptions = {},
): Promise<RunningVolumePlugin> {
  const driver = new DockerVolumeDriver(manager, log, o);
  const plugin = await servePlugin({ socket, interfaces: [volumeDriverInterface(driver)], log, close: () => driver.close(), metrics, daemon: 'volume-plugin' });
  return {
    driver,
    manager,
    plugin,
    async stop() {
      await plugin.stop();
      log.info('volume plugin stopped; mounts kept');
    },
  };
}

export async function startVolumePlugin(o: VolumePluginOptions): Promise<RunningVolumePlugin> {
  const { socket, knownVolumes, ...managerOptions } = o;
  const manager = await MountManager.open(managerOptions);
  let running: RunningVolumePlugin;
  try {
    running = await serveVolumePlugin(manager, socket, o.log, o.metrics, { knownVolumes });
  } catch (e) {
    await manager.close();
    throw e;
  }
  o.log.info({ socket, stateDir: o.stateDir, cvmfsRoot: o.cvmfsRoot, allow: o.allow, backend: o.backend }, 'volume plugin serving');
  return running;
}

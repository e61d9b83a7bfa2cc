/**
 * One plugin socket implementing two interfaces (`Implements: ["GraphDriver",
 * "VolumeDriver"]`), as the shared transport allows: dockerd 20.10 uses it as
 * a volume driver. This is what lets the graph driver and the volume plugin
 * share CERN's /run/docker/plugins/cvmfs.sock. (The GraphDriver table here is
 * a stub; the real one is src/graphdriver's.)
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { systemHost } from '../../src/core/host/host.js';
import { silentLogger } from '../../src/core/telemetry/log.js';
import { type PluginServer, servePlugin } from '../../src/edge/plugin-http.js';
import { MountManager } from '../../src/core/volumes/manager.js';
import { DockerVolumeDriver } from '../../src/dockervolume/driver.js';
import { volumeDriverInterface } from '../../src/dockervolume/server.js';
import { needs } from '../helpers/env.js';
import { type Dockerd, PLUGIN_DIR, pluginCall, removeTestDir, shortTempDir, startDockerd } from '../graphdriver/harness.js';
import { loadBusybox, mountsBelow } from './harness.js';

describe.skipIf(needs({ root: true, binaries: ['dockerd', 'containerd', 'runc'] }))('one socket, two plugin interfaces', () => {
  const name = `cvmfsvoltestshared${process.pid}`;
  const socket = path.join(PLUGIN_DIR, `${name}.sock`);
  let dir: string;
  let server: PluginServer | undefined;
  let dockerd: Dockerd | undefined;
  let graphCalls = 0;

  beforeAll(async () => {
    dir = shortTempDir('dvs-');
    mkdirSync(path.join(dir, 'cvmfs', 'cms.cern.ch'), { recursive: true });
    writeFileSync(path.join(dir, 'cvmfs', 'cms.cern.ch', 'README'), 'shared socket\n');
    const manager = await MountManager.open({
      stateDir: path.join(dir, 'state'),
      cvmfsRoot: path.join(dir, 'cvmfs'),
      allow: ['*.cern.ch'],
      backend: 'host',
      host: systemHost,
      log: silentLogger(),
    });
    const driver = new DockerVolumeDriver(manager, silentLogger());
    const graph = { name: 'GraphDriver', routes: { Status: async () => (graphCalls++, { Status: [] }) } };
    server = await servePlugin({ socket, interfaces: [graph, volumeDriverInterface(driver)], log: silentLogger(), close: () => driver.close() });
    dockerd = await startDockerd(path.join(dir, 'd'), 'vfs');
  });

  afterAll(async () => {
    await dockerd?.stop();
    await server?.stop();
    if (dir) removeTestDir(dir);
  });

  it('activates with both interfaces, and dockerd uses it as a volume driver', async () => {
    expect((await pluginCall(socket, 'Plugin.Activate')).json()).toEqual({ Implements: ['GraphDriver', 'VolumeDriver'] });
    expect((await pluginCall(socket, 'GraphDriver.Status', {})).json()).toEqual({ Status: [] });
    expect(graphCalls).toBe(1);
    const image = await loadBusybox(dockerd!, dir);
    const out = await dockerd!.docker(['run', '--rm', '--network', 'none', '--volume-driver', name, '-v', 'cms.cern.ch:/c', image, 'cat', '/c/README']);
    expect(out.stdout).toBe('shared socket\n');
    expect((await dockerd!.docker(['info', '--format', '{{json .Plugins.Volume}}'])).stdout).toContain(name);
    expect(mountsBelow(path.join(dir, 'state', 'mounts'))).toEqual([]);
  });
});

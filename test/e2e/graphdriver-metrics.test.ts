/**
 * The graph driver's metrics (in-process, recording host: no root): requests
 * by endpoint and result code, thin layers resolved, mounts held (layers got
 * and not put), CVMFS unavailable.
 */
import { mkdirSync, renameSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cvmfsLocation } from '../../src/core/cvmfs/location.js';
import { silentLogger } from '../../src/core/telemetry/log.js';
import { createRegistry } from '../../src/core/telemetry/metrics.js';
import { type RunningGraphDriver, startGraphDriver } from '../../src/graphdriver/server.js';
import { addLayer, thinJson } from '../helpers/cvmfs-tree.js';
import { tempDir } from '../helpers/env.js';
import { tarOf } from '../helpers/oci-image.js';
import { RecordingHost } from '../helpers/recording-host.js';
import { pluginCall } from '../graphdriver/harness.js';
import { metricValue } from './metrics-scrape.js';

const ID = (n: number) => n.toString(16).padStart(64, '0');

describe('graph driver metrics (no root)', () => {
  const dir = tempDir('gd-metrics-');
  const socket = path.join(dir, 'gd.sock');
  const repo = path.join(dir, 'cvmfs', 'unpacked.cern.ch');
  let gd: RunningGraphDriver;
  let text: () => Promise<string>;
  const call = (m: string, body?: unknown, o?: Parameters<typeof pluginCall>[3]) => pluginCall(socket, m, body, o);
  const value = async (name: string, labels: Record<string, string> = {}) => metricValue(await text(), `cvmfs_thin_${name}`, labels);

  beforeAll(async () => {
    mkdirSync(repo, { recursive: true });
    const r = await createRegistry({ defaultMetrics: false });
    text = () => r.registry.metrics();
    gd = await startGraphDriver({
      socket,
      stateDir: path.join(dir, 'state'),
      location: cvmfsLocation({ absoluteMountpoint: repo }),
      thinImages: true,
      idmappedLayers: 'off',
      log: silentLogger(),
      host: new RecordingHost(),
      metrics: r.metrics,
    });
  });
  afterAll(async () => {
    await gd?.stop();
  });

  it('counts endpoints by result, thin layers, mounts held, CVMFS unavailable', async () => {
    expect((await call('GraphDriver.Create', { ID: ID(1) })).status).toBe(412); // before Init
    expect(await value('mounts_held', { daemon: 'graphdriver' })).toBe(0);
    expect((await call('GraphDriver.Init', { Home: path.join(dir, 'home'), Opts: null, UIDMaps: null, GIDMaps: null })).status).toBe(200);
    expect(await value('requests_total', { daemon: 'graphdriver', method: 'GraphDriver.Init', code: 'OK' })).toBe(1);
    expect(await value('requests_total', { daemon: 'graphdriver', method: 'GraphDriver.Create', code: 'CVMFS_THIN_NOT_INITIALISED' })).toBe(1);

    // a thin image layer, and a container layer above it
    const layer = addLayer(repo, 'gd-metrics', { f: 'x' }, { converter: true });
    expect((await call('GraphDriver.Create', { ID: ID(2) })).status).toBe(200);
    const tar = await tarOf([{ path: 'thin.json', content: thinJson('unpacked.cern.ch', [layer]) }]);
    expect((await call('GraphDriver.ApplyDiff', undefined, { query: `id=${ID(2)}&parent=`, raw: tar, chunked: true })).status).toBe(200);
    expect(await value('thin_images_resolved_total', { daemon: 'graphdriver' })).toBe(1);
    expect((await call('GraphDriver.CreateReadWrite', { ID: ID(3), Parent: ID(2) })).status).toBe(200);
    expect((await call('GraphDriver.Get', { ID: ID(3), MountLabel: '' })).status).toBe(200);
    expect(await value('mounts_held', { daemon: 'graphdriver' })).toBe(1);
    expect((await call('GraphDriver.Put', { ID: ID(3) })).status).toBe(200);
    expect(await value('mounts_held', { daemon: 'graphdriver' })).toBe(0);
    expect(await value('request_duration_seconds_count', { daemon: 'graphdriver', method: 'GraphDriver.Get' })).toBe(1);

    // the CVMFS layer goes away: a Get of a layer above it is refused as unavailable
    renameSync(layer.dir, `${layer.dir}.gone`);
    const r = await call('GraphDriver.Get', { ID: ID(3), MountLabel: '' });
    renameSync(`${layer.dir}.gone`, layer.dir);
    expect(r.status).toBe(503);
    expect(await value('cvmfs_unavailable_total', { daemon: 'graphdriver' })).toBe(1);
  });
});

import { readFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/core/telemetry/log.js';
import { metricsDoc } from '../../src/core/telemetry/metrics-doc.js';
import {
  createRegistry,
  type MetricsServer,
  noMetrics,
  parseMetricsAddress,
  recordRequest,
  startMetricsServer,
  writeTextfile,
} from '../../src/core/telemetry/metrics.js';
import { tempDir } from '../helpers/env.js';

const dir = tempDir('cvmfs-thin-metrics-');
const servers: MetricsServer[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await s.stop();
});

function get(address: string, p: string): Promise<{ status: number; body: string; type: string }> {
  const where = parseMetricsAddress(address);
  return new Promise((resolve, reject) => {
    const req = http.request(
      { ...('socket' in where ? { socketPath: where.socket } : { host: where.host.replace(/^\[|\]$/g, ''), port: where.port }), path: p },
      (res) => {
        let body = '';
        res.on('data', (d: Buffer) => (body += d.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body, type: String(res.headers['content-type']) }));
      },
    );
    req.once('error', reject);
    req.end();
  });
}

describe('metrics', () => {
  it('serves what was recorded, with gauges set at scrape time', async () => {
    let snapshots = 3;
    const s = await startMetricsServer({ address: '127.0.0.1:0', log: silentLogger() });
    servers.push(s);
    s.metrics.onCollect(() => s.metrics.set('snapshots', { kind: 'committed', source: 'thin' }, snapshots));
    recordRequest(s.metrics, 'snapshotter', 'Prepare', process.hrtime.bigint() - 2_000_000n, 'OK');
    recordRequest(s.metrics, 'snapshotter', 'Prepare', process.hrtime.bigint(), 'NotFound');
    s.metrics.inc('remote_layers_total', { result: 'served' }, 2);
    const r = await get(s.address, '/metrics');
    expect(r.status).toBe(200);
    expect(r.type).toContain('text/plain');
    expect(r.body).toContain('cvmfs_thin_requests_total{daemon="snapshotter",method="Prepare",code="OK"} 1');
    expect(r.body).toContain('cvmfs_thin_requests_total{daemon="snapshotter",method="Prepare",code="NotFound"} 1');
    expect(r.body).toMatch(/cvmfs_thin_request_duration_seconds_count\{daemon="snapshotter",method="Prepare"\} 2/);
    expect(r.body).toContain('cvmfs_thin_remote_layers_total{result="served"} 2');
    expect(r.body).toContain('cvmfs_thin_snapshots{kind="committed",source="thin"} 3');
    expect(r.body).toContain('cvmfs_thin_process_resident_memory_bytes');
    snapshots = 5;
    expect((await get(s.address, '/metrics')).body).toContain('cvmfs_thin_snapshots{kind="committed",source="thin"} 5');
    expect((await get(s.address, '/nope')).status).toBe(404);
  });

  it('health and readiness name the failing check', async () => {
    let storeOpen = true;
    const s = await startMetricsServer({
      address: path.join(dir, 'm.sock'),
      log: silentLogger(),
      live: { store: () => (storeOpen ? null : 'store closed') },
      ready: { cvmfs: async () => '/cvmfs/unpacked.cern.ch: not reachable' },
    });
    servers.push(s);
    expect(await get(s.address, '/healthz')).toMatchObject({ status: 200, body: `${JSON.stringify({ status: 'ok', checks: { store: 'ok' } })}\n` });
    const ready = await get(s.address, '/readyz');
    expect(ready.status).toBe(503);
    expect(JSON.parse(ready.body)).toEqual({ status: 'fail', checks: { store: 'ok', cvmfs: '/cvmfs/unpacked.cern.ch: not reachable' } });
    storeOpen = false;
    expect((await get(s.address, '/healthz')).status).toBe(503);
  });

  it('addresses: host:port, :port, [v6]:port, unix path; anything else is refused', () => {
    expect(parseMetricsAddress(':9100')).toEqual({ host: '127.0.0.1', port: 9100 });
    expect(parseMetricsAddress('0.0.0.0:9100')).toEqual({ host: '0.0.0.0', port: 9100 });
    expect(parseMetricsAddress('[::1]:9100')).toEqual({ host: '::1', port: 9100 });
    expect(parseMetricsAddress('/run/x.sock')).toEqual({ socket: '/run/x.sock' });
    for (const bad of ['9100', 'host:99999', 'relative.sock', 'a:b:c']) expect(() => parseMetricsAddress(bad)).toThrow(/--metrics-address/);
  });

  it('noMetrics records nothing and costs nothing', () => {
    expect(noMetrics.enabled).toBe(false);
    expect(() => recordRequest(noMetrics, 'x', 'y', 0n, 'OK')).not.toThrow();
  });

  it('writes a textfile-collector file atomically', async () => {
    const { metrics, registry } = await createRegistry({ defaultMetrics: false });
    metrics.inc('convert_layers_total', { result: 'converted' }, 3);
    const f = path.join(dir, 'textfile', 'cvmfs-thin.prom');
    await writeTextfile(f, registry);
    expect(readFileSync(f, 'utf8')).toContain('cvmfs_thin_convert_layers_total{result="converted"} 3');
    await expect(writeTextfile('relative.prom', registry)).rejects.toThrow(/absolute/);
  });

  it('docs/metrics.md is generated from the list', () => {
    expect(readFileSync(path.resolve(import.meta.dirname, '../../docs/metrics.md'), 'utf8')).toBe(metricsDoc());
  });
});

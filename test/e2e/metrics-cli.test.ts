/**
 * `--metrics-address` (flag and TOML key `metrics-address`) on the snapshotter
 * and graph driver daemons, as processes: /metrics, /healthz, /readyz on a
 * unix socket, readiness naming the failed check, socket removed at stop.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, describe, expect, it } from 'vitest';
import { type Daemon, startDaemon } from '../helpers/daemon.js';
import { CLI, needs, tempDir } from '../helpers/env.js';
import { httpGet, scrape } from './metrics-scrape.js';

describe.skipIf(needs({ root: true }))('daemons with --metrics-address', () => {
  const base = tempDir('metrics-cli-');
  const repo = path.join(base, 'cvmfs', 'unpacked.cern.ch');
  mkdirSync(repo, { recursive: true });
  const daemons: Daemon[] = [];
  const procs: ChildProcess[] = [];
  afterAll(async () => {
    for (const d of daemons) await d.stop('SIGKILL');
    for (const p of procs) if (p.exitCode === null) p.kill('SIGKILL');
  });

  it('snapshotter: metrics, health and readiness on a unix socket; readiness names a missing CVMFS mountpoint', async () => {
    const msock = path.join(base, 'sn-m.sock');
    const d = await startDaemon(['--root', path.join(base, 'sn'), '--absolute-mountpoint', repo, '--metrics-address', msock], path.join(base, 'sn.sock'));
    daemons.push(d);
    await d.client.prepare('a');
    await d.client.stat('a');
    const v = await scrape(msock);
    expect(v('cvmfs_thin_requests_total', { daemon: 'snapshotter', method: 'Stat', code: 'OK' })).toBe(1);
    expect(v('cvmfs_thin_snapshots', { kind: 'active', source: 'local' })).toBe(1);
    expect(v('cvmfs_thin_process_resident_memory_bytes')).toBeGreaterThan(0);
    const h = await httpGet(msock, '/healthz');
    expect(h.status).toBe(200);
    expect(JSON.parse(h.body)).toEqual({ status: 'ok', checks: { store: 'ok' } });
    expect(JSON.parse((await httpGet(msock, '/readyz')).body)).toEqual({ status: 'ok', checks: { store: 'ok', socket: 'ok', cvmfs: 'ok' } });
    expect(await d.stop()).toBe(0);
    expect(existsSync(msock)).toBe(false);

    // TOML key; a mountpoint that is not there: alive, not ready, and it says why
    const cfg = path.join(base, 'sn.toml');
    const missing = path.join(base, 'no-cvmfs', 'unpacked.cern.ch');
    writeFileSync(cfg, `absolute-mountpoint = "${missing}"\nmetrics-address = "${msock}"\n`);
    const d2 = await startDaemon(['--root', path.join(base, 'sn'), '--config', cfg], path.join(base, 'sn.sock'));
    daemons.push(d2);
    expect((await httpGet(msock, '/healthz')).status).toBe(200);
    const r = await httpGet(msock, '/readyz');
    expect(r.status).toBe(503);
    expect((JSON.parse(r.body) as { checks: Record<string, string> }).checks['cvmfs']).toContain(`${missing} does not exist`);
    expect((await scrape(msock))('cvmfs_thin_snapshots', { kind: 'active', source: 'local' })).toBe(1);
  });

  it('snapshotter: a bad --metrics-address is refused clearly before anything starts', async () => {
    await expect(
      startDaemon(
        ['--root', path.join(base, 'sn-bad'), '--absolute-mountpoint', repo, '--metrics-address', 'nonsense'],
        path.join(base, 'sn-bad.sock'),
        10_000,
      ),
    ).rejects.toThrow(/--metrics-address "nonsense": want host:port, :port or an absolute unix socket path/);
    expect(existsSync(path.join(base, 'sn-bad.sock'))).toBe(false);
  });

  it('graph driver: metrics-address from the TOML file, requests counted, readiness checks its socket', async () => {
    const msock = path.join(base, 'gd-m.sock');
    const socket = path.join(base, 'gd.sock');
    const cfg = path.join(base, 'gd.toml');
    writeFileSync(cfg, `absolute-mountpoint = "${repo}"\nstate-dir = "${path.join(base, 'gd-state')}"\nmetrics-address = "${msock}"\n`);
    const proc = spawn(process.execPath, [CLI, 'graphdriver', '--config', cfg, '--socket', socket], { stdio: ['ignore', 'pipe', 'pipe'] });
    procs.push(proc);
    let out = '';
    proc.stderr!.on('data', (b: Buffer) => (out += b.toString()));
    const exited = new Promise<number | null>((r) => proc.once('exit', (c) => r(c)));
    for (let i = 0; i < 400 && !out.includes('graph driver plugin serving'); i++) await sleep(25);
    expect(out).toContain('metrics and health endpoints serving');
    const act = await fetchActivate(socket);
    expect(act).toBe(200);
    const v = await scrape(msock);
    expect(v('cvmfs_thin_requests_total', { daemon: 'graphdriver', method: 'Plugin.Activate', code: 'OK' })).toBe(1);
    expect(v('cvmfs_thin_mounts_held', { daemon: 'graphdriver' })).toBe(0);
    expect((await httpGet(msock, '/readyz')).status).toBe(200);
    proc.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(existsSync(msock)).toBe(false);
  });
});

function fetchActivate(socket: string): Promise<number> {
  return new Promise((resolve, reject) => {
    import('node:http').then(({ default: http }) => {
      const req = http.request({ socketPath: socket, path: '/Plugin.Activate', method: 'POST' }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      });
      req.once('error', reject);
      req.end();
    }, reject);
  });
}

/**
 * The cost of metrics: the same snapshotter started twice in the same run,
 * once with `--metrics-address` (prom-client loaded, every RPC counted and
 * timed, journal commits observed, a scrape every second as Prometheus would)
 * and once without, measured interleaved with the lean gRPC client of
 * bench/snapshotter.ts (lib/h2-snapshots.ts).
 *
 *   npx tsx bench/metrics.ts                 (needs root)
 *   BENCH_CYCLES=400 BENCH_REPS=5 npx tsx bench/metrics.ts
 *
 * Prints the p50 of each RPC (Prepare, Mounts, Commit, Remove) and of the
 * whole cycle, on vs off, and the ratio on/off (target <= 1.05).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { SnapClient } from '../test/helpers/grpc.js';
import { LeanSnapClient } from './lib/h2-snapshots.js';
import { stopServers } from './lib/servers.js';

const CYCLES = Number(process.env['BENCH_CYCLES'] ?? 400);
const REPS = Number(process.env['BENCH_REPS'] ?? 5);
const CLI = path.resolve(import.meta.dirname, '../bin/cvmfs-thin.js');
const RPCS = ['Prepare', 'Mounts', 'Commit', 'Remove', 'cycle'] as const;
type Rpc = (typeof RPCS)[number];

interface Server {
  proc: ChildProcess;
  lean: LeanSnapClient;
  lat: Record<Rpc, number[]>;
}

async function start(dir: string, name: string, extra: string[]): Promise<Server> {
  const socket = path.join(dir, `${name}.sock`);
  const proc = spawn(
    process.execPath,
    [
      CLI,
      'snapshotter',
      '--root',
      path.join(dir, name),
      '--address',
      socket,
      '--absolute-mountpoint',
      path.join(dir, 'cvmfs'),
      '--log-level',
      'warn',
      ...extra,
    ],
    {
      stdio: ['ignore', 'ignore', 'inherit'],
    },
  );
  const probe = new SnapClient(socket);
  const t0 = Date.now();
  for (;;) {
    if (existsSync(socket)) {
      try {
        await probe.stat('probe');
      } catch (e) {
        if ((e as { code?: number }).code === 5) break;
      }
    }
    if (Date.now() - t0 > 20_000) throw new Error(`${name} did not start`);
    await sleep(20);
  }
  probe.close();
  return { proc, lean: new LeanSnapClient(socket), lat: { Prepare: [], Mounts: [], Commit: [], Remove: [], cycle: [] } };
}

let seq = 0;
async function cycle(s: Server): Promise<void> {
  const k = `bench/${seq++}/extract`;
  const t = [performance.now()];
  await s.lean.prepare(k, '');
  t.push(performance.now());
  await s.lean.mounts(k);
  t.push(performance.now());
  const name = `${k}-committed`;
  await s.lean.commit(name, k, { 'containerd.io/snapshot.ref': name });
  t.push(performance.now());
  await s.lean.remove(name);
  t.push(performance.now());
  for (let i = 0; i < 4; i++) s.lat[RPCS[i]!].push(t[i + 1]! - t[i]!);
  s.lat.cycle.push(t[4]! - t[0]!);
}

const p50 = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

function scrape(socketPath: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath, path: '/metrics' }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve(body));
    });
    req.once('error', reject);
    req.end();
  });
}

async function main() {
  if (process.getuid?.() !== 0) throw new Error('run as root (the snapshotter chowns)');
  const dir = mkdtempSync(path.join(os.tmpdir(), 'bench-metrics-'));
  const msock = path.join(dir, 'metrics.sock');
  const on = await start(dir, 'on', ['--metrics-address', msock]);
  const off = await start(dir, 'off', []);
  // a scraper, as Prometheus would (its cost lands on the "on" daemon)
  let scrapes = 0;
  const scraper = setInterval(() => void scrape(msock).then(() => scrapes++), 1000);
  try {
    for (const s of [on, off]) for (let i = 0; i < 50; i++) await cycle(s); // warm-up
    for (const s of [on, off]) for (const r of RPCS) s.lat[r] = [];
    const blocks = REPS * 4;
    for (let b = 0; b < blocks; b++) {
      for (const s of b % 2 ? [off, on] : [on, off]) for (let i = 0; i < Math.ceil(CYCLES / 4); i++) await cycle(s);
    }
    const text = await scrape(msock);
    const counted = /cvmfs_thin_requests_total\{daemon="snapshotter",method="Prepare",code="OK"\} (\d+)/.exec(text)?.[1];
    console.log(
      `metrics cost: snapshotter with --metrics-address (on) vs without (off), same run, interleaved; ${CYCLES} cycles x ${REPS} reps each, ${scrapes} scrapes`,
    );
    for (const r of RPCS) {
      const a = p50(on.lat[r]);
      const b = p50(off.lat[r]);
      console.log(
        `  ${r.padEnd(8)} p50 on ${a.toFixed(3)} ms   off ${b.toFixed(3)} ms   ratio on/off ${(a / b).toFixed(3)}${r === 'cycle' ? '   (target <= 1.05)' : ''}`,
      );
    }
    console.log(`  Prepare OK counted by the "on" daemon: ${counted} (cycles run against it: ${on.lat.cycle.length + 50})`);
  } finally {
    clearInterval(scraper);
    await stopServers([on, off], dir);
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});

/**
 * Snapshotter benchmark: our daemon vs the reference Go overlay snapshotter
 * (containerd's snapshots/overlay behind the Snapshots API: `overlayserver`
 * from ../shared/containerd-testsuite), measured in the same run with the same
 * client, interleaved. The load comes from a lean gRPC client on node:http2
 * (lib/h2-snapshots.ts): client and servers share this machine's CPUs, and
 * grpc-js's client costs about as much CPU per call as the server under test.
 *
 *   npx tsx bench/snapshotter.ts            (needs root and /tmp/ctdts/bin/overlayserver; CTDTS_BIN overrides)
 *   BENCH_CYCLES=300 BENCH_SNAPSHOTS=10000 BENCH_REPS=3 npx tsx bench/snapshotter.ts
 *   BENCH_BEFORE_CLI=/path/to/an/older/checkout/bin/cvmfs-thin.js npx tsx bench/snapshotter.ts
 *     (adds that build of our snapshotter as a third server, in the same interleaving:
 *      before/after ratios of a change in one run)
 *
 * Prints p50/p99 of a Prepare→Mounts→Commit→Remove cycle (1 client), the
 * throughput of 8 concurrent clients, the ratios ours/reference, our RSS idle
 * and with 10 000 snapshots, and our cycle latency at 10 000 vs 100 snapshots.
 * Then the same cycle driven by `rpcbench` (containerd's own Go proxy client,
 * the calls containerd itself makes; from ../shared/containerd-testsuite),
 * warmed up, interleaved, 1 and 8 clients: p50/p99 and throughput ratios.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { SnapClient } from '../test/helpers/grpc.js';
import { LeanSnapClient } from './lib/h2-snapshots.js';
import { stopServers } from './lib/servers.js';

const CYCLES = Number(process.env['BENCH_CYCLES'] ?? 300);
const CONC_CYCLES = Number(process.env['BENCH_CONC_CYCLES'] ?? 100); // per client and rep
const SNAPSHOTS = Number(process.env['BENCH_SNAPSHOTS'] ?? 10_000);
const REPS = Number(process.env['BENCH_REPS'] ?? 3);
const BIN = process.env['CTDTS_BIN'] ?? '/tmp/ctdts/bin';
const CLI = path.resolve(import.meta.dirname, '../bin/cvmfs-thin.js');
const BEFORE_CLI = process.env['BENCH_BEFORE_CLI'];

interface Server {
  name: string;
  proc: ChildProcess;
  /** grpc-js client: readiness probe and List */
  client: SnapClient;
  /** the load generator: cycles and preload (see lib/h2-snapshots.ts for why) */
  lean: LeanSnapClient;
  root: string;
}

async function start(name: string, cmd: string, args: string[], socket: string, root: string): Promise<Server> {
  const proc = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'inherit'] });
  const t0 = Date.now();
  const client = new SnapClient(socket);
  for (;;) {
    if (existsSync(socket)) {
      try {
        await client.stat('probe');
      } catch (e) {
        if ((e as { code?: number }).code === 5) break;
      }
    }
    if (Date.now() - t0 > 20_000) throw new Error(`${name} did not start`);
    await sleep(20);
  }
  return { name, proc, client, lean: new LeanSnapClient(socket), root };
}

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};

let seq = 0;
async function cycle(c: LeanSnapClient, parent: string): Promise<number> {
  const k = `bench/${seq++}/extract ${Math.random().toString(36).slice(2)}`;
  const t = performance.now();
  await c.prepare(k, parent);
  await c.mounts(k);
  const name = `${k}-committed`;
  await c.commit(name, k, { 'containerd.io/snapshot.ref': name });
  await c.remove(name);
  return performance.now() - t;
}

async function single(s: Server, n: number, parent = ''): Promise<number[]> {
  const lat: number[] = [];
  for (let i = 0; i < n; i++) lat.push(await cycle(s.lean, parent));
  return lat;
}

async function concurrent(s: Server, clients: number, perClient: number): Promise<number> {
  const t = performance.now();
  await Promise.all(
    Array.from({ length: clients }, async () => {
      for (let i = 0; i < perClient; i++) await cycle(s.lean, '');
    }),
  );
  return (clients * perClient) / ((performance.now() - t) / 1000);
}

/** Create committed snapshots until the server holds `n`, in chains of 10 (as images are). */
async function preload(s: Server, n: number): Promise<void> {
  let next = (await s.client.list()).length;
  await Promise.all(
    Array.from({ length: 16 }, async () => {
      let prev = '';
      for (let depth = 0; next < n; depth++) {
        const i = next++;
        await s.lean.prepare(`pre-${i}-x`, depth % 10 === 0 ? '' : prev);
        await s.lean.commit(`pre-${i}`, `pre-${i}-x`, { 'containerd.io/gc.root': 'bench' });
        prev = `pre-${i}`;
      }
    }),
  );
}

interface RpcBench {
  p50_us: number;
  p99_us: number;
  cycles_per_s: number;
}

/** One rpcbench run (containerd's proxy client) against a socket. */
function rpcbench(socket: string, clients: number, n: number): Promise<RpcBench> {
  return new Promise((resolve, reject) => {
    const p = spawn(path.join(BIN, 'rpcbench'), ['-address', socket, '-c', String(clients), '-n', String(n)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    p.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    p.once('exit', (code) => {
      try {
        if (code !== 0) throw new Error(`rpcbench exited with ${code}`);
        resolve(JSON.parse(out.trim().split('\n').pop()!) as RpcBench);
      } catch (e) {
        reject(e instanceof Error ? e : new Error(String(e)));
      }
    });
  });
}

/** rpcbench against both servers, warmed, interleaved; medians of the runs. */
async function withRpcbench(servers: Record<string, Server>): Promise<void> {
  if (!existsSync(path.join(BIN, 'rpcbench'))) {
    console.log(`rpcbench: ${path.join(BIN, 'rpcbench')} missing (build ../shared/containerd-testsuite); skipped`);
    return;
  }
  const sockOf = (s: Server) => path.join(path.dirname(s.root), `${path.basename(s.root)}.sock`);
  // warm-up with the same client and load, ~2 000 cycles each: measured on a fresh daemon, our
  // first 8-client runs of 400 cycles come at 0.9-1.0x of the reference and the steady state
  // (V8's optimised code for these paths, its heap sized) from the 5th on; the Go server's
  // throughput does not change with warm-up
  for (const s of Object.values(servers)) {
    await rpcbench(sockOf(s), 1, 50);
    await rpcbench(sockOf(s), 8, 250);
  }
  const f = (x: number) => x.toFixed(2);
  for (const clients of [1, 8]) {
    const runs: Record<string, RpcBench[]> = Object.fromEntries(Object.keys(servers).map((k) => [k, []]));
    for (let r = 0; r < REPS * 2; r++) {
      for (const [k, s] of interleaved(servers, r)) {
        runs[k]!.push(await rpcbench(sockOf(s), clients, Math.ceil((clients === 1 ? CYCLES : CONC_CYCLES) / 2)));
      }
    }
    const m = (k: string, field: keyof RpcBench) =>
      pct(
        runs[k]!.map((x) => x[field]),
        50,
      );
    console.log(
      `rpcbench (containerd's proxy client), ${clients} client(s): p50 ours ${f(m('ours', 'p50_us') / 1000)} ms overlay ${f(m('ref', 'p50_us') / 1000)} ms ratio ${f(m('ours', 'p50_us') / m('ref', 'p50_us'))} (target <= 1.0); ` +
        `p99 ratio ${f(m('ours', 'p99_us') / m('ref', 'p99_us'))} (target <= 1.2); throughput ${m('ours', 'cycles_per_s').toFixed(0)} vs ${m('ref', 'cycles_per_s').toFixed(0)} cycles/s ratio ${f(m('ours', 'cycles_per_s') / m('ref', 'cycles_per_s'))}${clients === 8 ? ' (target >= 1.5)' : ''}`,
    );
    if (servers['before'])
      console.log(
        `rpcbench, ${clients} client(s), this build vs before (${BEFORE_CLI}): p50 ${f(m('ours', 'p50_us') / 1000)} vs ${f(m('before', 'p50_us') / 1000)} ms ratio ${f(m('ours', 'p50_us') / m('before', 'p50_us'))}; ` +
          `p99 ratio ${f(m('ours', 'p99_us') / m('before', 'p99_us'))}; throughput ratio ${f(m('ours', 'cycles_per_s') / m('before', 'cycles_per_s'))}`,
      );
  }
}

/** The servers in an order that alternates between blocks: both ends see the same drift. */
function interleaved(servers: Record<string, Server>, block: number): [string, Server][] {
  const order = Object.entries(servers);
  return block % 2 ? order.reverse() : order;
}

function ourSnapshotter(cli: string, dir: string, name: string): Promise<Server> {
  const args = [cli, 'snapshotter', '--root', path.join(dir, name), '--address', path.join(dir, `${name}.sock`)];
  args.push('--absolute-mountpoint', path.join(dir, 'cvmfs'), '--log-level', 'warn');
  return start(name === 'ours' ? 'cvmfs-thin' : `cvmfs-thin (${name})`, process.execPath, args, path.join(dir, `${name}.sock`), path.join(dir, name));
}

async function main() {
  if (process.getuid?.() !== 0) throw new Error('run as root (both snapshotters mount-check and chown)');
  const ovlBin = path.join(BIN, 'overlayserver');
  if (!existsSync(ovlBin)) throw new Error(`${ovlBin} missing: build ../shared/containerd-testsuite (build.sh) first`);
  const dir = mkdtempSync(path.join(os.tmpdir(), 'bench-sn-'));
  const ours = await ourSnapshotter(CLI, dir, 'ours');
  const ref = await start(
    'overlay (Go)',
    ovlBin,
    ['-root', path.join(dir, 'ref'), '-address', path.join(dir, 'ref.sock')],
    path.join(dir, 'ref.sock'),
    path.join(dir, 'ref'),
  );
  const before = BEFORE_CLI ? await ourSnapshotter(BEFORE_CLI, dir, 'before') : undefined;
  const servers: Record<string, Server> = { ours, ref, ...(before ? { before } : {}) };
  try {
    await sleep(1500);
    const rssIdle = rssMiB(ours.proc.pid!);
    const refRssIdle = rssMiB(ref.proc.pid!);
    const beforeRssIdle = before ? rssMiB(before.proc.pid!) : NaN;
    // warm up each (JIT, page cache): ~700 cycles each, alone and 8 at once
    for (const s of Object.values(servers)) {
      await single(s, 300);
      await concurrent(s, 8, 50);
    }

    // interleave in small blocks (alternating which server goes first): this machine's
    // speed drifts, and both must see the same drift
    const lat: Record<string, number[]> = Object.fromEntries(Object.keys(servers).map((k) => [k, []]));
    const thr: Record<string, number[]> = Object.fromEntries(Object.keys(servers).map((k) => [k, []]));
    const blocks = REPS * 4;
    for (let r = 0; r < blocks; r++) {
      for (const [k, s] of interleaved(servers, r)) {
        lat[k]!.push(...(await single(s, Math.ceil(CYCLES / 4))));
        thr[k]!.push(await concurrent(s, 8, Math.ceil(CONC_CYCLES / 4)));
      }
    }
    const med = (xs: number[]) => pct(xs, 50);
    const p50 = { ours: pct(lat['ours']!, 50), ref: pct(lat['ref']!, 50) };
    const p99 = { ours: pct(lat['ours']!, 99), ref: pct(lat['ref']!, 99) };
    const tput = { ours: med(thr['ours']!), ref: med(thr['ref']!) };
    // the same cycle through containerd's own client, before either server grows
    await withRpcbench(servers);

    // scale: latency at 100 vs SNAPSHOTS snapshots, RSS at SNAPSHOTS
    await preload(ours, 100);
    const at100 = pct(await single(ours, CYCLES), 50);
    const t0 = performance.now();
    await preload(ours, SNAPSHOTS);
    const preloadS = (performance.now() - t0) / 1000;
    await sleep(1000);
    const atN = pct(await single(ours, CYCLES), 50);
    const listT = performance.now();
    const listed = (await ours.client.list()).length;
    const listMs = performance.now() - listT;
    const rssNow = rssMiB(ours.proc.pid!);
    await sleep(10_000); // steady state: V8 shrinks its heap after a burst once idle
    const rssN = rssMiB(ours.proc.pid!);

    const f = (x: number) => x.toFixed(2);
    console.log(
      `cvmfs-thin snapshotter benchmark (${CYCLES} cycles x ${REPS} reps; 8 clients x ${CONC_CYCLES} cycles; baseline: containerd overlay snapshotter, Go, same run)`,
    );
    console.log(`cycle = Prepare -> Mounts -> Commit -> Remove, one client`);
    console.log(`  p50  ours ${f(p50.ours)} ms   overlay ${f(p50.ref)} ms   ratio ours/overlay ${f(p50.ours / p50.ref)}   (target <= 1.0)`);
    console.log(`  p99  ours ${f(p99.ours)} ms   overlay ${f(p99.ref)} ms   ratio ours/overlay ${f(p99.ours / p99.ref)}`);
    console.log(
      `8 concurrent clients: ours ${tput.ours.toFixed(0)} cycles/s   overlay ${tput.ref.toFixed(0)} cycles/s   ratio ${f(tput.ours / tput.ref)}   (target >= 1.5)`,
    );
    if (before) {
      const bp50 = pct(lat['before']!, 50);
      const bp99 = pct(lat['before']!, 99);
      console.log(
        `this build vs before (${BEFORE_CLI}): p50 ${f(p50.ours)} vs ${f(bp50)} ms ratio ${f(p50.ours / bp50)}; p99 ratio ${f(p99.ours / bp99)}; ` +
          `8-client throughput ratio ${f(tput.ours / med(thr['before']!))}; RSS idle ${rssIdle.toFixed(1)} vs ${beforeRssIdle.toFixed(1)} MiB`,
      );
    }
    console.log(`RSS idle: ours ${rssIdle.toFixed(1)} MiB (target <= 60)   overlay ${refRssIdle.toFixed(1)} MiB`);
    console.log(
      `RSS with ${listed} snapshots: ours ${rssN.toFixed(1)} MiB steady (target <= 100), ${rssNow.toFixed(1)} MiB right after preload + List; preload took ${preloadS.toFixed(1)} s; List of all: ${listMs.toFixed(0)} ms`,
    );
    console.log(`cycle p50 at ${listed} snapshots ${f(atN)} ms vs at 100: ${f(at100)} ms   ratio ${f(atN / at100)}   (target <= 1.2)`);
  } finally {
    await stopServers(Object.values(servers), dir);
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});

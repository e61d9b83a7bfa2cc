/**
 * Where the snapshotter's p99 goes: one client (containerd's own proxy client,
 * `rpcbench` from ../shared/containerd-testsuite) runs Prepare→Mounts→Commit→
 * Remove cycles against our daemon at debug level, which logs when each call
 * reached its handler and how long the handler took. Each cycle's time is split
 * into handler time (our code, the journal's sync, the file-system calls) and
 * time between the calls (gRPC/HTTP/2 on both sides, the client, scheduling),
 * for the median cycles and the slowest 1 %; the daemon's own metrics
 * (scraped before and after) give the GC pauses and journal commits in the
 * same window (the journal compacts after 8 MiB of records, ~20 000 calls:
 * none falls in a window of this size). A variant with a larger young
 * generation (fewer scavenges) tests the GC as the cause.
 *
 *   npx tsx bench/snapshotter-p99.ts      (root, npm run build, /tmp/ctdts/bin/rpcbench; CTDTS_BIN overrides)
 *   BENCH_CYCLES=600 BENCH_REPS=3 npx tsx bench/snapshotter-p99.ts
 *
 * Debug logging costs time itself: the figures attribute, they do not
 * benchmark (bench/snapshotter.ts does).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

const CYCLES = Number(process.env['BENCH_CYCLES'] ?? 400);
const REPS = Number(process.env['BENCH_REPS'] ?? 3);
const BIN = process.env['CTDTS_BIN'] ?? '/tmp/ctdts/bin';
const CLI = path.resolve(import.meta.dirname, '../bin/cvmfs-thin.js');

interface Rpc {
  method: string;
  key?: string;
  name?: string;
  at: number;
  ms: number;
}

interface Variant {
  name: string;
  node?: string[];
  env?: Record<string, string>;
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? NaN;
};

function run(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    p.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    p.once('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} exited with ${code}`))));
  });
}

async function scrape(port: number): Promise<Map<string, number>> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const m = new Map<string, number>();
  for (const l of text.split('\n')) {
    if (l.startsWith('#') || !l.trim()) continue;
    const i = l.lastIndexOf(' ');
    m.set(l.slice(0, i), Number(l.slice(i + 1)));
  }
  return m;
}

const delta = (a: Map<string, number>, b: Map<string, number>, k: string) => (b.get(k) ?? 0) - (a.get(k) ?? 0);

async function measure(v: Variant, dir: string, port: number) {
  const root = path.join(dir, v.name.replace(/\W+/g, '-'));
  const sock = `${root}.sock`;
  const lines: Rpc[] = [];
  const proc: ChildProcess = spawn(
    process.execPath,
    [
      ...(v.node ?? []),
      CLI,
      'snapshotter',
      '--root',
      root,
      '--address',
      sock,
      '--absolute-mountpoint',
      path.join(dir, 'cvmfs'),
      '--log-level',
      'debug',
      '--metrics-address',
      `127.0.0.1:${port}`,
    ],
    {
      stdio: ['ignore', 'ignore', 'pipe'], // the log goes to stderr
      env: { ...process.env, ...v.env },
    },
  );
  let buf = '';
  proc.stderr!.on('data', (d: Buffer) => {
    buf += d.toString();
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const l = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (!l.includes('"msg":"rpc"')) continue;
      const j = JSON.parse(l) as Rpc;
      lines.push({ method: j.method, key: j.key, name: j.name, at: j.at, ms: j.ms });
    }
  });
  try {
    for (let t = 0; !existsSync(sock); t++) {
      if (t > 200) throw new Error('daemon did not start');
      await sleep(50);
    }
    await run(path.join(BIN, 'rpcbench'), ['-address', sock, '-c', '1', '-n', '100']); // warm-up
    await sleep(300);
    const before = await scrape(port);
    const from = lines.length;
    const res = JSON.parse((await run(path.join(BIN, 'rpcbench'), ['-address', sock, '-c', '1', '-n', String(CYCLES)])).trim().split('\n').pop()!) as {
      p50_us: number;
      p99_us: number;
    };
    const after = await scrape(port);
    await sleep(200);
    const rpcs = lines.slice(from);
    const cycles: { wall: number; handlers: number; between: number }[] = [];
    // a cycle: Prepare(K), Mounts(K), Commit(N from K), Remove(N)
    const byKey = new Map<string, Rpc[]>();
    for (const r of rpcs) {
      const k = r.method === 'Remove' ? `removed:${r.key}` : r.method === 'Commit' ? r.key! : r.key!;
      byKey.set(k, [...(byKey.get(k) ?? []), r]);
    }
    for (const [k, g] of byKey) {
      const commit = g.find((r) => r.method === 'Commit');
      const remove = commit && byKey.get(`removed:${commit.name}`)?.[0];
      if (k.startsWith('removed:') || !remove || g.length !== 3 || g[0]!.method !== 'Prepare') continue;
      const all = [...g, remove];
      const handlers = all.reduce((s, r) => s + r.ms, 0);
      const wall = remove.at + remove.ms - g[0]!.at;
      cycles.push({ wall, handlers, between: wall - handlers });
    }
    cycles.sort((a, b) => a.wall - b.wall);
    const mid = cycles.slice(Math.floor(cycles.length * 0.4), Math.ceil(cycles.length * 0.6));
    const slow = cycles.slice(Math.floor(cycles.length * 0.99));
    const avg = (xs: typeof cycles, k: 'wall' | 'handlers' | 'between') => xs.reduce((s, c) => s + c[k], 0) / Math.max(1, xs.length);
    return {
      p50: res.p50_us / 1000,
      p99: res.p99_us / 1000,
      mid: { wall: avg(mid, 'wall'), handlers: avg(mid, 'handlers'), between: avg(mid, 'between') },
      slow: { wall: avg(slow, 'wall'), handlers: avg(slow, 'handlers'), between: avg(slow, 'between') },
      gcMinor: delta(before, after, 'cvmfs_thin_nodejs_gc_duration_seconds_count{kind="minor"}'),
      gcMajor: delta(before, after, 'cvmfs_thin_nodejs_gc_duration_seconds_count{kind="major"}'),
      gcMs:
        1000 *
        (delta(before, after, 'cvmfs_thin_nodejs_gc_duration_seconds_sum{kind="minor"}') +
          delta(before, after, 'cvmfs_thin_nodejs_gc_duration_seconds_sum{kind="major"}')),
      commits: delta(before, after, 'cvmfs_thin_journal_commit_seconds_count{store="snapshotter"}'),
      commitMs: 1000 * delta(before, after, 'cvmfs_thin_journal_commit_seconds_sum{store="snapshotter"}'),
    };
  } finally {
    proc.kill('SIGTERM');
    await new Promise((r) => proc.once('exit', r));
  }
}

async function main() {
  if (process.getuid?.() !== 0) throw new Error('run as root');
  if (!existsSync(path.join(BIN, 'rpcbench'))) throw new Error(`${BIN}/rpcbench missing: build ../shared/containerd-testsuite first`);
  const dir = mkdtempSync(path.join(os.tmpdir(), 'bench-p99-'));
  const variants: Variant[] = [{ name: 'as shipped' }, { name: 'young generation 64 MiB', node: ['--min-semi-space-size=64', '--max-semi-space-size=64'] }];
  const f = (x: number) => x.toFixed(2);
  try {
    console.log(`snapshotter p99 attribution: ${CYCLES} cycles x ${REPS} reps per variant, 1 client (rpcbench), interleaved; times in ms`);
    const all = new Map<string, Awaited<ReturnType<typeof measure>>[]>();
    for (let r = 0; r < REPS; r++) {
      for (const [i, v] of variants.entries()) {
        const res = await measure(v, dir, 19_400 + r * 10 + i);
        all.set(v.name, [...(all.get(v.name) ?? []), res]);
      }
    }
    for (const v of variants) {
      const rs = all.get(v.name)!;
      const med = (g: (x: (typeof rs)[number]) => number) => pct(rs.map(g), 50);
      console.log(
        `${v.name.padEnd(32)} client p50 ${f(med((x) => x.p50))} p99 ${f(med((x) => x.p99))} | median cycles: handlers ${f(med((x) => x.mid.handlers))} between calls ${f(med((x) => x.mid.between))}` +
          ` | slowest 1%: handlers ${f(med((x) => x.slow.handlers))} between calls ${f(med((x) => x.slow.between))}` +
          ` | GC ${med((x) => x.gcMinor)} minor + ${med((x) => x.gcMajor)} major = ${f(med((x) => x.gcMs))} ms; journal ${med((x) => x.commits)} commits, ${f(med((x) => x.commitMs))} ms`,
      );
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});

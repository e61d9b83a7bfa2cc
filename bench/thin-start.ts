/**
 * Thin start from a real CernVM-FS client (issue 16, item 5 part 2): pull+run
 * of a thin image whose layers are read through a `cvmfs2` client mount, with
 * a cold and a warm client cache, against a full pull+run of the same image,
 * measured in the same run on one private containerd 1.6 (+ runc).
 *
 *   npm run build && npx tsx bench/thin-start.ts
 *
 * Setup (not in the timed figures): a 4-layer image (busybox-static as the
 * shell, ~14 000 files, ~93 MB of tar, ~29 MB gzip) written as an OCI archive; a
 * Stratum-0 made for the run (`cvmfs_server mkfs`, its storage served over
 * HTTP by this process on 127.0.0.1) and `cvmfs-thin convert --cvmfs-server`
 * of the archive into it (timed once, reported apart); a separate `cvmfs2`
 * client (own config and cache, HTTP to that server, no proxy) mounted at a
 * directory given to the snapshotter as --absolute-mountpoint.
 *
 * Each run starts a fresh containerd and `cvmfs-thin snapshotter` (empty
 * roots) and measures, as `ctr image import` then `ctr run --rm` of one
 * command that reads 5 files and checks a deleted one:
 *   - full: the OCI archive, unpacked by containerd's own overlayfs
 *     snapshotter (the baseline), then the same through ours;
 *   - thin cold: the client unmounted, its cache wiped, mounted again, then
 *     the thin archive imported and run with --snapshotter cvmfs-snapshotter;
 *   - thin warm: the thin image removed (`image rm --sync`), imported and run
 *     again: the client's cache and the snapshotter's state kept (a node that
 *     ran it before).
 * The runs alternate whether full or thin goes first. Medians per column;
 * ratios thin/full of the medians. The client's download counters
 * (`cvmfs_talk internal affairs`) give the bytes fetched by each thin
 * pull+run, against the image's compressed size. The Stratum-0's files come
 * from the page cache over loopback: no network latency (BENCH_LATENCY_MS adds
 * a delay to every HTTP answer), so cold figures are a lower bound.
 *
 * Env: BENCH_RUNS (default 3), BENCH_FILES (small files in the base layer,
 * default 10000), BENCH_LATENCY_MS (default 0), BENCH_KEEP=1 (keep the work dir).
 * Needs root, cvmfs_server, cvmfs2, cvmfs_talk, containerd, ctr, runc, busybox-static.
 */
import { type ChildProcess, execFile, execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { type Containerd, startContainerd } from '../test/helpers/containerd.js';
import { buildImage, busyboxEntries, type TarEntry, writeOciArchive } from '../test/helpers/oci-image.js';
import { content } from './lib/content.js';

const RUNS = Number(process.env['BENCH_RUNS'] ?? 3);
const FILES = Number(process.env['BENCH_FILES'] ?? 10_000);
const LATENCY = Number(process.env['BENCH_LATENCY_MS'] ?? 0);
const CLI = path.resolve(import.meta.dirname, '../bin/cvmfs-thin.js');
const SN = 'cvmfs-snapshotter';
const SRV = '/srv/cvmfs';
const execFileP = promisify(execFile);
const log = (s: string) => process.stderr.write(`[thin-start] ${s}\n`);

const have = (b: string) => spawnOk('sh', ['-c', `command -v ${b}`]);
function spawnOk(cmd: string, args: string[]): boolean {
  try {
    execFileSync(cmd, args, { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}
const missing = [
  ...(process.getuid?.() === 0 ? [] : ['root']),
  ...['cvmfs_server', 'cvmfs2', 'cvmfs_talk', 'containerd', 'ctr', 'runc'].filter((b) => !have(b)),
  ...(fs.existsSync('/bin/busybox') ? [] : ['/bin/busybox (busybox-static)']),
];
if (missing.length) {
  process.stdout.write(`bench/thin-start.ts: skipped, needs ${missing.join(', ')}\n`);
  process.exit(0);
}
if (!fs.existsSync(path.resolve(import.meta.dirname, '../dist/cli/main.js'))) {
  process.stderr.write('bench/thin-start.ts: dist/ is missing; run `npm run build` first\n');
  process.exit(1);
}

/** Run a command without blocking the event loop (the Stratum-0's HTTP server lives in this process). */
async function sh(cmd: string, args: string[], timeout = 600_000): Promise<string> {
  try {
    return (await execFileP(cmd, args, { encoding: 'utf8', timeout, maxBuffer: 64 << 20 })).stdout;
  } catch (e) {
    const x = e as { code?: number; stderr?: string; stdout?: string };
    throw new Error(`${cmd} ${args.join(' ')}: exit ${x.code}\n${x.stderr ?? ''}${x.stdout ?? ''}`);
  }
}

async function timed<T>(f: () => Promise<T>): Promise<[number, T]> {
  const t0 = process.hrtime.bigint();
  const r = await f();
  return [Number(process.hrtime.bigint() - t0) / 1e9, r];
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

// ---- the image -------------------------------------------------------------------------------

const dirsOf = (paths: string[]): TarEntry[] => [...new Set(paths.flatMap((p) => p.split('/').slice(0, -1).map((_, i, a) => `${a.slice(0, i + 1).join('/')}/`)))].map((d) => ({ path: d, type: 'dir' as const }));
/** Files of these sizes (and their directories), then `extra` entries (their directories too). */
const files = (list: [string, number][], extra: TarEntry[] = []): TarEntry[] => [...dirsOf([...list.map(([p]) => p), ...extra.map((e) => e.path)]), ...list.map(([p, size], i) => ({ path: p, content: content(size, i + size) })), ...extra];
const range = (n: number) => Array.from({ length: n }, (_, i) => i);

/** What the container does: read 5 files (+ busybox itself), check a file deleted by layer 2. */
const CMD = ['/bin/sh', '-c', 'cat /app/app.conf /etc/conf/c7 /usr/share/d12/f2413 /usr/lib/lib17.so /opt/data/part3.bin | md5sum; wc -c < /opt/data/part3.bin; test -e /usr/share/d0/f100 || echo deleted-ok'];

async function buildBenchImage(file: string): Promise<{ name: string; gz: number; raw: number; entries: number }> {
  const share = range(FILES).map((i): [string, number] => [`usr/share/d${Math.floor(i / 200)}/f${i}`, 256 + ((i * 7919) % 2048)]);
  const libs = range(200).map((i): [string, number] => [`usr/lib/lib${i}.so`, 64 << 10]);
  const layers: TarEntry[][] = [
    [...busyboxEntries('bench'), { path: 'bin/md5sum', type: 'symlink', target: 'busybox' }, ...files([...share, ...libs])],
    files(
      range(3000).map((i): [string, number] => [`usr/lib64/m${Math.floor(i / 300)}/x${i}.py`, 4096 + ((i * 131) % 8192)]),
      range(Math.floor(FILES / 100)).map((k) => ({ path: `usr/share/d${Math.floor((k * 100) / 200)}/.wh.f${k * 100}`, content: '' })), // deletes 1 % of the base
    ),
    files([...range(20).map((i): [string, number] => [`opt/data/part${i}.bin`, 1 << 20]), ['opt/data/blob.bin', 8 << 20]]),
    files([['app/app.conf', 700], ...range(500).map((i): [string, number] => [`etc/conf/c${i}`, 1024])]),
  ];
  const name = 'bench.example.org/thin-start/app:1';
  const img = await buildImage(name, layers, { config: { Cmd: CMD } });
  await writeOciArchive(file, img);
  return { name, gz: img.layers.reduce((a, l) => a + l.blob.length, 0), raw: img.layers.reduce((a, l) => a + l.raw.length, 0), entries: layers.reduce((a, l) => a + l.length, 0) };
}

// ---- the pieces, each with its cleanup --------------------------------------------------------

const cleanups: (() => Promise<unknown> | unknown)[] = [];
let cleaning: Promise<void> | undefined;
const cleanup = () =>
  (cleaning ??= (async () => {
    for (const f of cleanups.reverse()) await Promise.resolve().then(f).catch((e: unknown) => log(`cleanup: ${(e as Error).message}`));
  })());
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => {
    log(`${sig}: cleaning up`);
    void cleanup().then(() => process.exit(130));
  });

/** The Stratum-0's storage over HTTP (what Apache serves on a publisher). */
async function serveStratum0(): Promise<number> {
  const server = http.createServer((req, res) => {
    const p = path.normalize(path.join('/srv', decodeURIComponent((req.url ?? '/').split('?')[0]!)));
    const answer = () =>
      fs.stat(p, (err, st) => {
        if (!p.startsWith(`${SRV}/`) || err || !st.isFile()) return void res.writeHead(404).end();
        res.writeHead(200, { 'content-length': st.size });
        fs.createReadStream(p).pipe(res);
      });
    if (LATENCY > 0) setTimeout(answer, LATENCY);
    else answer();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  cleanups.push(() => new Promise((r) => server.close(() => r(undefined))));
  return (server.address() as AddressInfo).port;
}

/** The client: own config and cache; `mountFresh` unmounts, wipes the cache and mounts again. */
function client(work: string, repo: string, port: number) {
  const cache = path.join(work, 'client-cache');
  const mnt = path.join(work, 'cvmfs', repo);
  const conf = path.join(work, 'client.conf');
  const socket = path.join(cache, repo, `cvmfs_io.${repo}`);
  fs.mkdirSync(mnt, { recursive: true });
  fs.writeFileSync(conf, [`CVMFS_SERVER_URL=http://127.0.0.1:${port}/cvmfs/@fqrn@`, `CVMFS_PUBLIC_KEY=/etc/cvmfs/keys/${repo}.pub`, 'CVMFS_HTTP_PROXY=DIRECT', `CVMFS_CACHE_BASE=${cache}`, `CVMFS_RELOAD_SOCKETS=${cache}`, 'CVMFS_QUOTA_LIMIT=4000', ''].join('\n'));
  const mounted = () => fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4] === mnt);
  const unmount = async () => {
    if (mounted()) await sh('umount', [mnt]);
  };
  cleanups.push(() => (mounted() ? sh('umount', ['-l', mnt]) : undefined));
  return {
    mnt,
    async mountFresh() {
      await unmount();
      fs.rmSync(cache, { recursive: true, force: true });
      fs.mkdirSync(cache, { recursive: true });
      await sh('cvmfs2', ['-o', `config=${conf},allow_other`, repo, mnt]);
    },
    /** download counters of the running client */
    async downloads(): Promise<{ bytes: number; requests: number }> {
      const out = await sh('cvmfs_talk', ['-p', socket, 'internal', 'affairs']);
      const get = (k: string) => Number(new RegExp(`^download\\.${k}\\|(\\d+)\\|`, 'm').exec(out)?.[1] ?? NaN);
      return { bytes: get('sz_transferred_bytes'), requests: get('n_requests') };
    },
  };
}

async function startSnapshotter(dir: string, repo: string, mnt: string): Promise<{ socket: string; stop: () => Promise<void> }> {
  const socket = path.join(dir, 'sn.sock');
  const proc: ChildProcess = spawn(process.execPath, [CLI, 'snapshotter', '--root', path.join(dir, 'sn'), '--address', socket, '--repository', repo, '--absolute-mountpoint', mnt, '--log-level', 'info'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let out = '';
  proc.stderr!.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-64_000)));
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  const stop = async () => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
    await exited;
  };
  cleanups.push(stop);
  const t0 = Date.now();
  while (!fs.existsSync(socket) || !out.includes('snapshotter serving')) {
    if (proc.exitCode !== null) throw new Error(`snapshotter exited with ${proc.exitCode}:\n${out}`);
    if (Date.now() - t0 > 30_000) throw new Error(`snapshotter did not start:\n${out}`);
    await sleep(50);
  }
  return { socket, stop };
}

/** Unmount whatever is still mounted below `dir` (containerd's overlays), deepest first. */
async function unmountBelow(dir: string): Promise<void> {
  const ms = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4] ?? '').filter((m) => m.startsWith(`${dir}/`));
  for (const m of ms.sort().reverse()) await sh('umount', ['-l', m]).catch(() => undefined);
}

// ---- one pull+run ---------------------------------------------------------------------------

interface Sample {
  import: number;
  run: number;
  total: number;
  bytes?: number;
  requests?: number;
}

async function pullRun(ctd: Containerd, archive: string, image: string, id: string, snapshotter?: string): Promise<{ s: Sample; out: string }> {
  const sn = snapshotter ? ['--snapshotter', snapshotter] : [];
  await sh('sync', []);
  const [imp] = await timed(() => ctd.ctr(['image', 'import', ...sn, archive], { timeoutMs: 600_000 }));
  const [run, out] = await timed(() => ctd.ctr(['run', '--rm', ...sn, image, id, ...CMD], { timeoutMs: 600_000 }));
  return { s: { import: imp, run, total: imp + run }, out };
}

// ---- main -----------------------------------------------------------------------------------

async function main(): Promise<void> {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'cvmfs-thin-bench-start-'));
  cleanups.push(async () => {
    await unmountBelow(work);
    if (!process.env['BENCH_KEEP']) fs.rmSync(work, { recursive: true, force: true });
  });
  process.stdout.write(`cvmfs-thin thin-start benchmark (${os.availableParallelism()} CPUs, Node ${process.version}, median of ${RUNS} runs)\n`);

  log('building the image...');
  const fullTar = path.join(work, 'full.tar');
  const img = await buildBenchImage(fullTar);
  process.stdout.write(`image: 4 layers, ${img.entries} tar entries, ${(img.raw / 1e6).toFixed(1)} MB of layer tars, ${(img.gz / 1e6).toFixed(1)} MB compressed (gzip); OCI archive ${(fs.statSync(fullTar).size / 1e6).toFixed(1)} MB\n`);

  const port = await serveStratum0();
  const repo = `thinstart${process.pid}.example.org`;
  log(`cvmfs_server mkfs ${repo}...`);
  cleanups.push(() => sh('cvmfs_server', ['rmfs', '-f', repo]));
  await sh('cvmfs_server', ['mkfs', '-o', 'root', '-p', '-w', `http://127.0.0.1:${port}/cvmfs/${repo}`, repo]);
  const thinTar = path.join(work, 'thin.tar');
  log('cvmfs-thin convert --cvmfs-server...');
  const [convertS] = await timed(() =>
    sh(process.execPath, [CLI, 'convert', `oci-archive:${fullTar}`, '--repository-dir', `/cvmfs/${repo}`, '--repository', repo, '--cvmfs-server', '--thin', `oci-archive:${thinTar}`, '--lock-file', path.join(work, 'convert.lock'), '--quiet']),
  );
  const thinName = (JSON.parse(execFileSync('tar', ['-xOf', thinTar, 'index.json'], { encoding: 'utf8' })) as { manifests: { annotations: Record<string, string> }[] }).manifests[0]!.annotations['io.containerd.image.name']!;
  process.stdout.write(`convert + publish (cvmfs-thin convert --cvmfs-server, transaction path, real Stratum-0): ${convertS.toFixed(1)} s, once, not in the figures below; thin archive ${fs.statSync(thinTar).size} bytes\n`);
  const cl = client(work, repo, port);

  const rows: Record<'full' | 'fullOurs' | 'cold' | 'warm', Sample[]> = { full: [], fullOurs: [], cold: [], warm: [] };
  let mountBytes = 0;
  for (let i = 0; i < RUNS; i++) {
    log(`run ${i + 1}/${RUNS}`);
    const dir = path.join(work, `run-${i}`);
    fs.mkdirSync(dir);
    await cl.mountFresh(); // before the snapshotter starts: it is a node's /cvmfs mount
    const mountDl = await cl.downloads();
    mountBytes = mountDl.bytes;
    const sn = await startSnapshotter(dir, repo, cl.mnt);
    const ctd = await startContainerd(path.join(dir, 'ctd'), sn.socket, SN);
    cleanups.push(() => (ctd.proc.exitCode === null && ctd.proc.signalCode === null ? ctd.stop() : undefined));
    try {
      const outs: string[] = [];
      const full = async () => {
        for (const [key, snap] of [['full', undefined], ['fullOurs', SN]] as const) {
          const r = await pullRun(ctd, fullTar, img.name, `ts-${process.pid}-${i}-${key}`, snap);
          rows[key].push(r.s);
          outs.push(r.out);
          await ctd.ctr(['image', 'rm', '--sync', img.name]);
        }
      };
      const thin = async () => {
        let before = await cl.downloads();
        for (const key of ['cold', 'warm'] as const) {
          const r = await pullRun(ctd, thinTar, thinName, `ts-${process.pid}-${i}-${key}`, SN);
          const after = await cl.downloads();
          rows[key].push({ ...r.s, bytes: after.bytes - before.bytes, requests: after.requests - before.requests });
          outs.push(r.out);
          before = after;
          await ctd.ctr(['image', 'rm', '--sync', thinName]);
        }
      };
      if (i % 2 === 0) {
        await full();
        await thin();
      } else {
        await thin();
        await full();
      }
      if (new Set(outs).size !== 1 || !outs[0]!.includes('deleted-ok')) throw new Error(`the containers disagree:\n${outs.join('---\n')}`);
      if (i === 0) process.stdout.write(`the command (${CMD.join(' ')}) printed, the same in every container:\n  ${outs[0]!.trim().split('\n').join('\n  ')}\n`);
    } finally {
      await ctd.stop();
      await sn.stop();
      await unmountBelow(dir);
    }
  }

  const f = (x: number) => `${x.toFixed(2)} s`.padStart(9);
  const base = median(rows.full.map((s) => s.total));
  const names: [keyof typeof rows, string][] = [
    ['full', 'full pull+run, containerd overlayfs (baseline)'],
    ['fullOurs', 'full pull+run, through cvmfs-snapshotter'],
    ['cold', 'thin pull+run, cold CVMFS client cache'],
    ['warm', 'thin pull+run, warm CVMFS client cache'],
  ];
  process.stdout.write(`\n${''.padEnd(48)}   import       run     total   total/baseline   (medians of ${RUNS}; ctr image import, ctr run --rm)\n`);
  for (const [k, label] of names) {
    const m = (g: (s: Sample) => number) => median(rows[k].map(g));
    process.stdout.write(`  ${label.padEnd(48)}${f(m((s) => s.import))} ${f(m((s) => s.run))} ${f(m((s) => s.total))}   ${(m((s) => s.total) / base).toFixed(2).padStart(6)}\n`);
  }
  const mb = (x: number) => `${(x / 1e6).toFixed(2)} MB`;
  const cold = median(rows.cold.map((s) => s.bytes!));
  process.stdout.write(
    `\nCVMFS client downloads (cvmfs_talk internal affairs, download.sz_transferred_bytes): at mount ${(mountBytes / 1e3).toFixed(1)} kB (manifest, root catalog);\n` +
      `  cold pull+run ${mb(cold)} in ${median(rows.cold.map((s) => s.requests!))} requests = ${((100 * cold) / img.gz).toFixed(1)} % of the compressed image (${mb(img.gz)}); ` +
      `warm pull+run ${mb(median(rows.warm.map((s) => s.bytes!)))} in ${median(rows.warm.map((s) => s.requests!))} requests\n`,
  );
  process.stdout.write(`(Stratum-0 over HTTP on 127.0.0.1 from the page cache, ${LATENCY ? `+${LATENCY} ms per answer, no bandwidth limit` : 'no network latency or bandwidth limit'}; the full image comes from a local archive, no registry download either)\n`);
}

try {
  await main();
} catch (e) {
  process.stderr.write(`bench/thin-start.ts failed: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exitCode = 1;
} finally {
  await cleanup();
}

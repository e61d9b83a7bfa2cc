/**
 * Thin start against layer count and image size (issue 18, item 1), with the floor measured
 * in the same run, on private containerd 1.6 (+ runc) nodes.
 *
 *   npm run build && npx tsx bench/layer-count.ts
 *
 * Setup (not timed): the same ~64 MB image (busybox-static as /bin/sh, 6 000 small files,
 * 300 × 64 kB libraries, 7 × 4 MB data files; 40 files deleted by whiteouts spread over the
 * upper layers, an opaque directory, a replaced file) built as 5 layers and as 100 layers
 * (bench/lib/images.ts), written as OCI archives and converted (`cvmfs-thin convert`) into a
 * stand-in CVMFS tree, a plain directory, which gives the thin archives.
 *
 * Each run, in alternating order 5/100, starts a fresh node (containerd + `cvmfs-thin
 * snapshotter --absolute-mountpoint <tree>`, empty roots) per image and times, for one command
 * that reads 6 files from bottom to top layers and checks the deletions:
 *   - thin pull+run: `ctr image import <thin archive>` + `ctr run --rm --snapshotter
 *     cvmfs-snapshotter` (the figure the target is about: 100/5 ≤ 1.15);
 *   - thin run only: a second `ctr run --rm` of that image (imported, snapshot committed);
 *   - floor: the full image imported onto containerd's own overlayfs snapshotter (untimed),
 *     then `ctr run --rm` only: what 100 layers cost containerd + runc + overlayfs anyway.
 * Medians per row; ratios 100/5 of the medians; per layer = (t100 − t5) / 95.
 *
 * Real CVMFS (BENCH_REAL=1, default: when cvmfs_server, cvmfs2 and cvmfs_talk are installed):
 * both images published into a Stratum-0 made for the run and read through a separate cvmfs2
 * client (bench/lib/cvmfs-real.ts, as bench/thin-start.ts); per image: client unmounted, cache
 * wiped, mounted, fresh node, thin pull+run (cold); then another fresh node on the kept mount,
 * thin pull+run (warm). Stratum-0 over loopback HTTP: cold figures are a lower bound.
 *
 * Top chain (BENCH_CHAINS=1, default on): the same two images converted again with
 * `--top-chain` (the image's own `.chains/<xx>/<id>`, layers merged) into a second stand-in
 * tree and a second Stratum-0: a start then mounts one CVMFS directory whatever the layer
 * count, and a cold client loads the chain's catalogs instead of one per layer and bucket.
 * Rows marked "top chain" are those nodes, in the same runs.
 *
 * Size (BENCH_SIZE=1, default on; needs ≥ 30 GB free in the work dir, else skipped with the
 * reason): 1 GB and 10 GB images of 5 plain-tar layers with the same files (200 small and 4
 * large per layer, only the large ones grow), converted into the stand-in tree; thin pull+run
 * of each on fresh nodes, reading a small file and the first MB of a large one (10G/1G ≤ 1.05).
 *
 * Trace (BENCH_TRACE=1, default on): BENCH_RUNS more nodes per image (and per cold real
 * client) with the snapshotter at --log-level debug; its `rpc` lines (method, ms) during a
 * thin pull+run and a run-only give the count and total time of each Snapshots call per
 * start, containerd's log the shim's timeline, beside the wall time of each ctr command
 * (bench/lib/start-trace.ts; medians).
 *
 * Env: BENCH_RUNS (default 5), BENCH_REAL (1/0, default auto), BENCH_CHAINS (1/0, default 1), BENCH_SIZE (1/0, default 1),
 * BENCH_TRACE (1/0, default 1), BENCH_LATENCY_MS (delay per Stratum-0 answer, default 0),
 * BENCH_KEEP=1 (keep the work dir). Needs root, containerd, ctr, runc, busybox-static.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { buildImage, writeOciArchive } from '../test/helpers/oci-image.js';
import { CVMFS_BINARIES, cvmfsClient, makeStratum0, publishArgs, serveStratum0 } from './lib/cvmfs-real.js';
import { LARGE_CMD, SPREAD_CMD, spreadLayers, writeLargeImage } from './lib/images.js';
import {
  cleanup,
  cleanupOnSignals,
  convert,
  have,
  median,
  missingOf,
  type Node,
  onCleanup,
  pullRun,
  requireBuild,
  SN,
  sh,
  startNode,
  unmountBelow,
} from './lib/start.js';
import { medianPhases, type Phase, printTrace, traceOf } from './lib/start-trace.js';

const RUNS = Number(process.env['BENCH_RUNS'] ?? 5);
const flag = (k: string) => (process.env[k] === undefined ? undefined : process.env[k] !== '0');
const SIZE = flag('BENCH_SIZE') ?? true;
const CHAINS = flag('BENCH_CHAINS') ?? true;
const TRACE = flag('BENCH_TRACE') ?? true;
const LATENCY = Number(process.env['BENCH_LATENCY_MS'] ?? 0);
const log = (s: string) => process.stderr.write(`[layer-count] ${s}\n`);
const out = (s: string): void => void process.stdout.write(`${s}\n`);

const missing = missingOf(['containerd', 'ctr', 'runc']);
if (missing.length) {
  out(`bench/layer-count.ts: skipped, needs ${missing.join(', ')}`);
  process.exit(0);
}
requireBuild('bench/layer-count.ts');
const realMissing = CVMFS_BINARIES.filter((b) => !have(b));
const REAL = (flag('BENCH_REAL') ?? true) && realMissing.length === 0;

const NS = [5, 100] as const;
type N = (typeof NS)[number];
/** seconds per row, per image */
type Rows = Record<string, Record<N, number[]>>;
const add = (rows: Rows, key: string, n: N, x: number) => ((rows[key] ??= { 5: [], 100: [] })[n].push(x), undefined);

/** Every container must print the same; the first output is kept to be shown. */
let expected: string | undefined;
function check(o: string, what: string): void {
  if (!o.includes('deleted-ok') || !/^new\.conf$/m.test(o) || /old\d\.conf/.test(o))
    throw new Error(`${what}: a deletion or the opaque directory is wrong:\n${o}`);
  if (expected !== undefined && o !== expected) throw new Error(`${what}: the containers disagree:\n${expected}---\n${o}`);
  expected = o;
}

interface Image {
  full: string;
  fullName: string;
  thin: string;
  thinName: string;
}

async function withNode<T>(dir: string, repository: string, mountpoint: string, f: (node: Node) => Promise<T>, logLevel?: string): Promise<T> {
  const node = await startNode(dir, { repository, mountpoint, ...(logLevel ? { logLevel, keepLog: true } : {}) });
  try {
    return await f(node);
  } finally {
    await node.stop();
  }
}

async function main(): Promise<void> {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'cvmfs-thin-bench-layers-'));
  onExit(work);
  out(
    `cvmfs-thin layer-count benchmark (${os.availableParallelism()} CPUs, Node ${process.version}, containerd ${(await sh('containerd', ['--version'])).split(' ')[2] ?? '?'}, median of ${RUNS} runs; load average ${os.loadavg()[0]!.toFixed(1)})`,
  );

  // ---- images, converted into the stand-in tree (not timed) ----
  const repository = 'unpacked.example.org';
  const tree = path.join(work, 'standin', repository);
  fs.mkdirSync(tree, { recursive: true });
  const convertTo = (source: string, thin: string, o: { repositoryDir: string; repository: string; extra?: string[] }) =>
    convert(source, { ...o, thinTar: path.join(work, thin), lockFile: path.join(work, 'convert.lock') });
  const images = {} as Record<N, Image>;
  const chainTree = path.join(work, 'standin-chain', repository);
  const cimages = {} as Record<N, Image>;
  for (const n of NS) {
    log(`building and converting the ${n}-layer image...`);
    const layers = spreadLayers(n);
    const img = await buildImage(`bench.example.org/layer-count/l${n}:1`, layers, { config: { Cmd: SPREAD_CMD } });
    const full = path.join(work, `full-${n}.tar`);
    await writeOciArchive(full, img);
    // the layers stacked one by one (the converter's default gives a 100-layer image its own chain: the "top chain" rows)
    const c = await convertTo(`oci-archive:${full}`, `thin-${n}.tar`, { repositoryDir: tree, repository, extra: ['--no-top-chain'] });
    images[n] = { full, fullName: img.name, thin: path.join(work, `thin-${n}.tar`), thinName: c.thinName };
    const raw = img.layers.reduce((a, l) => a + l.raw.length, 0);
    const gz = img.layers.reduce((a, l) => a + l.blob.length, 0);
    out(
      `image ${n} layers: ${layers.reduce((a, l) => a + l.length, 0)} tar entries, ${(raw / 1e6).toFixed(1)} MB of layer tars, ${(gz / 1e6).toFixed(1)} MB gzip; convert into the stand-in tree ${c.seconds.toFixed(1)} s (not timed below)`,
    );
    if (CHAINS) {
      fs.mkdirSync(chainTree, { recursive: true });
      const cc = await convertTo(`oci-archive:${full}`, `thin-chain-${n}.tar`, { repositoryDir: chainTree, repository, extra: ['--top-chain'] });
      cimages[n] = { ...images[n], thin: path.join(work, `thin-chain-${n}.tar`), thinName: cc.thinName };
      out(`  with --top-chain into a second stand-in tree: ${cc.seconds.toFixed(1)} s`);
    }
  }

  // ---- stand-in tree: thin pull+run, run only, floor ----
  const rows: Rows = {};
  for (let i = 0; i < RUNS; i++) {
    for (const n of i % 2 ? [...NS].reverse() : NS) {
      log(`run ${i + 1}/${RUNS}: stand-in tree, ${n} layers`);
      const img = images[n];
      await withNode(path.join(work, `run-${i}-${n}`), repository, tree, async ({ ctd }) => {
        const id = `lc-${process.pid}-${i}-${n}`;
        const pr = await pullRun(ctd, img.thin, img.thinName, `${id}-thin`, SPREAD_CMD, SN);
        check(pr.out, `thin ${n}`);
        const ro = await pullRun(ctd, undefined, img.thinName, `${id}-again`, SPREAD_CMD, SN);
        check(ro.out, `thin ${n} again`);
        await ctd.ctr(['image', 'import', img.full], { timeoutMs: 600_000 });
        const fl = await pullRun(ctd, undefined, img.fullName, `${id}-full`, SPREAD_CMD);
        check(fl.out, `full ${n}`);
        add(rows, 'pull', n, pr.s.total);
        add(rows, 'pull.import', n, pr.s.import);
        add(rows, 'pull.run', n, pr.s.run);
        add(rows, 'again', n, ro.s.run);
        add(rows, 'floor', n, fl.s.run);
      });
      if (CHAINS) {
        await withNode(path.join(work, `run-${i}-${n}-chain`), repository, chainTree, async ({ ctd }) => {
          const pr = await pullRun(ctd, cimages[n].thin, cimages[n].thinName, `lc-${process.pid}-${i}-${n}-chain`, SPREAD_CMD, SN);
          check(pr.out, `thin ${n}, top chain`);
          add(rows, 'pull.chain', n, pr.s.total);
        });
      }
    }
  }
  out(`the command printed, the same in every container:\n  ${expected!.trim().split('\n').join('\n  ')}`);

  // ---- real CVMFS: cold and warm client cache ----
  interface Real {
    rows: Rows;
    bytes: Rows;
    client: ReturnType<typeof cvmfsClient>;
    repo: string;
    images: Record<N, Image>;
  }
  let real: Real | undefined;
  let realChain: Real | undefined;
  if (REAL) {
    const port = await serveStratum0(LATENCY);
    const repo = `layercount${process.pid}.example.org`;
    log(`cvmfs_server mkfs ${repo}...`);
    await makeStratum0(repo, port);
    const rimages = {} as Record<N, Image>;
    for (const n of NS) {
      log(`convert --cvmfs-server, ${n} layers...`);
      const pa = publishArgs(repo);
      const c = await convertTo(`oci-archive:${images[n].full}`, `thin-real-${n}.tar`, { ...pa, extra: [...pa.extra, '--no-top-chain'] });
      rimages[n] = { ...images[n], thin: path.join(work, `thin-real-${n}.tar`), thinName: c.thinName };
      out(`convert + publish into a real Stratum-0, ${n} layers: ${c.seconds.toFixed(1)} s (not timed below)`);
    }
    real = { rows: {}, bytes: {}, client: cvmfsClient(work, repo, port), repo, images: rimages };
    if (CHAINS) {
      const crepo = `layerchain${process.pid}.example.org`;
      log(`cvmfs_server mkfs ${crepo}...`);
      await makeStratum0(crepo, port);
      const cimgs = {} as Record<N, Image>;
      for (const n of NS) {
        log(`convert --cvmfs-server --top-chain, ${n} layers...`);
        const a = publishArgs(crepo);
        const c = await convertTo(`oci-archive:${images[n].full}`, `thin-realchain-${n}.tar`, { ...a, extra: [...a.extra, '--top-chain'] });
        cimgs[n] = { ...images[n], thin: path.join(work, `thin-realchain-${n}.tar`), thinName: c.thinName };
        out(`convert + publish with --top-chain, ${n} layers: ${c.seconds.toFixed(1)} s (not timed below)`);
      }
      const cwork = path.join(work, 'chain-client');
      fs.mkdirSync(cwork);
      realChain = { rows: {}, bytes: {}, client: cvmfsClient(cwork, crepo, port), repo: crepo, images: cimgs };
    }
    const coldWarm = async (x: Real, i: number, n: N, tag: string) => {
      const { client, rows: r } = x;
      const img = x.images[n];
      const id = `lcr-${process.pid}-${i}-${n}${tag}`;
      await client.mountFresh();
      const before = await client.downloads();
      await withNode(path.join(work, `real-${i}-${n}${tag}-cold`), x.repo, client.mnt, async ({ ctd }) => {
        const pr = await pullRun(ctd, img.thin, img.thinName, `${id}-cold`, SPREAD_CMD, SN);
        check(pr.out, `real cold ${n}${tag}`);
        add(r, 'cold', n, pr.s.total);
      });
      const after = await client.downloads();
      add(x.bytes, 'bytes', n, after.bytes - before.bytes);
      add(x.bytes, 'requests', n, after.requests - before.requests);
      await withNode(path.join(work, `real-${i}-${n}${tag}-warm`), x.repo, client.mnt, async ({ ctd }) => {
        const pr = await pullRun(ctd, img.thin, img.thinName, `${id}-warm`, SPREAD_CMD, SN);
        check(pr.out, `real warm ${n}${tag}`);
        const ro = await pullRun(ctd, undefined, img.thinName, `${id}-again`, SPREAD_CMD, SN);
        check(ro.out, `real again ${n}${tag}`);
        add(r, 'warm', n, pr.s.total);
        add(r, 'again', n, ro.s.run);
      });
    };
    for (let i = 0; i < RUNS; i++) {
      for (const n of i % 2 ? [...NS].reverse() : NS) {
        log(`run ${i + 1}/${RUNS}: real CVMFS client, ${n} layers`);
        await coldWarm(real, i, n, '');
        if (realChain) await coldWarm(realChain, i, n, '-chain');
      }
    }
  }

  // ---- the figures ----
  const ms = (x: number) => `${(x * 1000).toFixed(0)} ms`.padStart(8);
  const head = (title: string) => out(`\n${title.padEnd(52)}   5 layers  100 layers   100/5   target   per layer`);
  const row = (r: Rows, key: string, label: string, target = '') => {
    const [a, b] = [median(r[key]![5]), median(r[key]![100])];
    out(
      `  ${label.padEnd(50)} ${ms(a)}    ${ms(b)}   ${(b / a).toFixed(2).padStart(5)}   ${target.padEnd(6)}  ${(((b - a) / 95) * 1000).toFixed(2).padStart(6)} ms`,
    );
  };
  head(`stand-in tree (medians of ${RUNS})`);
  row(rows, 'pull', 'thin pull+run (ctr image import + ctr run --rm)', '≤ 1.15');
  row(rows, 'pull.import', '  of which import');
  row(rows, 'pull.run', '  of which run');
  row(rows, 'again', 'thin run only (2nd ctr run, snapshot committed)');
  row(rows, 'floor', 'floor: ctr run --rm, full image on overlayfs');
  if (CHAINS) row(rows, 'pull.chain', 'thin pull+run, top chain (--top-chain)', '≤ 1.15');
  if (real) {
    head(`real CVMFS client, Stratum-0 on 127.0.0.1${LATENCY ? ` +${LATENCY} ms` : ''} (medians of ${RUNS})`);
    row(real.rows, 'cold', 'thin pull+run, cold client cache', '≤ 1.15');
    row(real.rows, 'warm', 'thin pull+run, warm client cache', '≤ 1.15');
    row(real.rows, 'again', 'thin run only, warm');
    const dl = (x: Real, n: N) => `${(median(x.bytes['bytes']![n]) / 1e6).toFixed(2)} MB in ${median(x.bytes['requests']![n])} requests`;
    out(`  client downloads during a cold pull+run: ${dl(real, 5)} (5 layers), ${dl(real, 100)} (100 layers)`);
    if (realChain) {
      row(realChain.rows, 'cold', 'top chain: thin pull+run, cold client cache', '≤ 1.15');
      row(realChain.rows, 'warm', 'top chain: thin pull+run, warm client cache', '≤ 1.15');
      row(realChain.rows, 'again', 'top chain: thin run only, warm');
      out(`  top chain, client downloads during a cold pull+run: ${dl(realChain, 5)} (5 layers), ${dl(realChain, 100)} (100 layers)`);
    }
  } else out(`\nreal CVMFS client: skipped (${realMissing.length ? `needs ${realMissing.join(', ')}` : 'BENCH_REAL=0'})`);

  // ---- where the time goes ----
  if (TRACE) {
    const cases: [string, string, string, Record<N, Image>, (() => Promise<void>) | undefined][] = [['stand-in tree', repository, tree, images, undefined]];
    if (real) cases.push(['real CVMFS, cold cache', real.repo, real.client.mnt, real.images, () => real.client.mountFresh()]);
    if (realChain) {
      const rc = realChain;
      cases.push(['real CVMFS, top chain, cold cache', rc.repo, rc.client.mnt, rc.images, () => rc.client.mountFresh()]);
      cases.push(['real CVMFS, top chain, warm cache', rc.repo, rc.client.mnt, rc.images, undefined]);
    }
    for (const [label, repo, mnt, imgs, before] of cases) {
      const traces: Record<N, Phase[][]> = { 5: [], 100: [] };
      for (let i = 0; i < RUNS; i++) {
        for (const n of i % 2 ? [...NS].reverse() : NS) {
          log(`trace ${i + 1}/${RUNS}: ${label}, ${n} layers`);
          await before?.();
          traces[n].push(
            await withNode(path.join(work, `trace-${i}-${n}`), repo, mnt, (node) => traceOf(node, imgs[n].thin, imgs[n].thinName, SPREAD_CMD), 'debug'),
          );
        }
      }
      for (const n of NS) printTrace(`${label}, ${n} layers`, medianPhases(traces[n]), out);
    }
  }

  // ---- size: 1 GB vs 10 GB ----
  if (!SIZE) return out('\nsize case: skipped (BENCH_SIZE=0)');
  const st = fs.statfsSync(work);
  const free = st.bavail * st.bsize;
  if (free < 30e9)
    return out(`\nsize case: skipped, ${(free / 1e9).toFixed(1)} GB free in ${os.tmpdir()} (needs 30 GB for the 10 GB image, its layout and its tree)`);
  const sizes = [
    ['1 GB', 1e9],
    ['10 GB', 10e9],
  ] as const;
  const big: { thin: string; name: string; bytes: number }[] = [];
  for (const [label, bytes] of sizes) {
    log(`size case: building and converting the ${label} image...`);
    const layout = path.join(work, `large-${bytes}`);
    const img = await writeLargeImage(layout, path.join(work, 'large-stage'), bytes);
    const c = await convertTo(`oci:${layout}`, `thin-large-${bytes}.tar`, { repositoryDir: tree, repository });
    fs.rmSync(layout, { recursive: true, force: true });
    big.push({ thin: path.join(work, `thin-large-${bytes}.tar`), name: c.thinName, bytes: img.bytes });
    out(`image ${label}: 5 plain-tar layers, ${(img.bytes / 1e9).toFixed(2)} GB in large files; convert ${c.seconds.toFixed(0)} s (not timed)`);
  }
  await sh('sync', []);
  const bs: number[][] = [[], []];
  for (let i = 0; i < RUNS; i++) {
    for (const k of i % 2 ? [1, 0] : [0, 1]) {
      log(`size run ${i + 1}/${RUNS}: ${sizes[k]![0]}`);
      await withNode(path.join(work, `size-${i}-${k}`), repository, tree, async ({ ctd }) => {
        const pr = await pullRun(ctd, big[k]!.thin, big[k]!.name, `lcs-${process.pid}-${i}-${k}`, LARGE_CMD, SN);
        bs[k]!.push(pr.s.total);
      });
    }
  }
  const [a, b] = [median(bs[0]!), median(bs[1]!)];
  out(`\nsize, 5 layers, stand-in tree (medians of ${RUNS})              1 GB       10 GB  10G/1G   target`);
  out(`  ${'thin pull+run'.padEnd(50)} ${ms(a)}    ${ms(b)}   ${(b / a).toFixed(2).padStart(5)}   ≤ 1.05`);
}

/** Registered first, so it runs last, after the nodes and the client are stopped. */
function onExit(work: string): void {
  cleanupOnSignals(log);
  onCleanup(async () => {
    await unmountBelow(work);
    if (!process.env['BENCH_KEEP']) fs.rmSync(work, { recursive: true, force: true });
  });
}

try {
  await main();
  out(`(load average at the end: ${os.loadavg()[0]!.toFixed(1)}; other work on the machine skews single figures, medians and same-run ratios less)`);
} catch (e) {
  process.stderr.write(`bench/layer-count.ts failed: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exitCode = 1;
} finally {
  await cleanup(log);
}

/**
 * Podman store benchmark.
 *
 * 1. Time to add one more image (2 new layers on a shared base) to a store
 *    already holding 1, 100 and 1 000 images, in the same run: what grows
 *    with the store is the rewrite of layers.json / images.json (containers/
 *    storage reads each as one file), everything else is per image. Also
 *    the size of both JSON files, which is what a CVMFS publish re-uploads.
 * 2. As root with podman: `podman run` of an image from the store vs the
 *    same image pulled into podman's own storage (kernel overlay both), and
 *    the pull itself (what the store saves).
 *
 *   npm run build && npx tsx bench/podman.ts
 *
 * Env: BENCH_SIZES (default "1,100,1000"), BENCH_RUNS (adds / starts measured
 * per point, median reported; default 5), BENCH_DIR, BENCH_KEEP=1.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { addImageToPodmanStore, addTreeImageToPodmanStore } from '../src/convert/podman/index.js';
import { fakeImage } from '../test/podman/tree.js';
import { buildLayer, writeLayout } from '../test/convert/images.js';
import { makePodman } from '../test/podman/podman.js';
import { systemHost } from '../src/core/host/host.js';

const SIZES = (process.env['BENCH_SIZES'] ?? '1,100,1000').split(',').map(Number);
const RUNS = Number(process.env['BENCH_RUNS'] ?? 5);
// lower case: podman names an image pulled from an OCI layout after its path
const work = process.env['BENCH_DIR'] ?? path.join(os.tmpdir(), `cvmfs-thin-bench-podman-${process.pid}`);
const CLI = path.resolve(import.meta.dirname, '../bin/cvmfs-thin.js');
fs.mkdirSync(work, { recursive: true });

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const ms = (x: number) => `${x.toFixed(1)} ms`;

async function addTimes(): Promise<void> {
  const repo = path.join(work, 'repo-add');
  fs.mkdirSync(repo, { recursive: true });
  let count = 0;
  const add = async () => {
    const img = fakeImage(repo, `registry.example.org/app${count % 50}:${count}`, [{ seed: 'base' }, { seed: `mid${count}` }, { seed: `top${count}` }]);
    count++;
    const t0 = process.hrtime.bigint();
    await addImageToPodmanStore(repo, img.input, { host: systemHost });
    return Number(process.hrtime.bigint() - t0) / 1e6;
  };
  console.log('\n## Adding one image to a store of N images (3 layers: 1 shared, 2 new)\n');
  console.log('| images in store | add (median) | layers.json | images.json |');
  console.log('| ---: | ---: | ---: | ---: |');
  const rows: { n: number; t: number }[] = [];
  for (const n of SIZES) {
    while (count < n) await add();
    const times: number[] = [];
    for (let i = 0; i < RUNS; i++) times.push(await add());
    const s = (f: string) => `${(fs.statSync(path.join(repo, 'podmanStore', f)).size / 1024).toFixed(0)} KiB`;
    rows.push({ n, t: median(times) });
    console.log(`| ${n} | ${ms(median(times))} | ${s('overlay-layers/layers.json')} | ${s('overlay-images/images.json')} |`);
  }
  const first = rows[0]!;
  for (const r of rows.slice(1)) console.log(`\nadd at ${r.n} images / add at ${first.n}: ${(r.t / first.t).toFixed(2)}x`);
  // re-adding an image that is there: nothing written
  const again = fakeImage(repo, 'registry.example.org/app0:0', [{ seed: 'base' }, { seed: 'mid0' }, { seed: 'top0' }]);
  const t0 = process.hrtime.bigint();
  const r = await addImageToPodmanStore(repo, again.input, { host: systemHost });
  console.log(`re-adding an image already in the store (${r.status}): ${ms(Number(process.hrtime.bigint() - t0) / 1e6)}`);
}

async function startTimes(): Promise<void> {
  if (process.getuid?.() !== 0) {
    console.log('\n(podman start: needs root; skipped)');
    return;
  }
  try {
    execFileSync('sh', ['-c', 'command -v podman']);
  } catch {
    console.log('\n(podman start: podman not installed; skipped)');
    return;
  }
  const st = path.join(work, 'st');
  fs.mkdirSync(path.join(st, 'bin'), { recursive: true });
  fs.copyFileSync('/bin/busybox', path.join(st, 'bin', 'busybox'));
  fs.chmodSync(path.join(st, 'bin', 'busybox'), 0o755);
  fs.symlinkSync('busybox', path.join(st, 'bin', 'sh'));
  fs.mkdirSync(path.join(st, 'data'));
  for (let i = 0; i < 200; i++) fs.writeFileSync(path.join(st, 'data', `f${i}`), Buffer.alloc(64 * 1024, i));
  const layer = buildLayer(st, 'gzip', path.join(work, 'blobs'), 'l');
  const layout = path.join(work, 'layout');
  writeLayout(layout, 'v1', [{ layers: [layer], config: { Env: ['PATH=/bin'], Cmd: ['/bin/sh'] } }]);
  const repo = path.join(work, 'repo-run');
  fs.mkdirSync(repo, { recursive: true });
  execFileSync(process.execPath, [CLI, 'convert', `oci:${layout}:v1`, '--repository-dir', repo, '--no-thin', '--name', 'localhost/bench/podman:v1', '--quiet']);
  await addTreeImageToPodmanStore(repo, 'localhost/bench/podman:v1', { host: systemHost });
  const fromStore = makePodman(path.join(work, 'podman-store'), { stores: [path.join(repo, 'podmanStore')] });
  const pulled = makePodman(path.join(work, 'podman-pulled'));
  try {
    const pulls: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      await pulled.run(['rmi', '--all', '--force'], { allowFail: true });
      const t0 = Date.now();
      await pulled.run(['pull', '-q', `oci:${layout}:v1`]);
      pulls.push(Date.now() - t0);
    }
    const id = (await pulled.run(['images', '-q'])).stdout.trim().split('\n')[0]!;
    const runs = async (p: typeof pulled, image: string) => {
      const ts: number[] = [];
      for (let i = 0; i < RUNS; i++) {
        // start latency: `run -d` returns once the container runs (create, mount, runc start); the
        // container reads a file of the image first. (Waiting for its exit is not measured: podman 4.3
        // on the CI VM often waits out conmon's 20 s exit timeout, for pulled and store images alike.)
        const t0 = Date.now();
        const id = (await p.run(['run', '-d', '--pull', 'never', '--network', 'none', image, 'sh', '-c', 'cat /data/f1 > /dev/null; sleep 30'])).stdout.trim();
        ts.push(Date.now() - t0);
        await p.run(['rm', '-f', '-t', '0', id]);
      }
      return median(ts);
    };
    const s = await runs(fromStore, 'localhost/bench/podman:v1');
    const p = await runs(pulled, id);
    console.log('\n## podman run -d until the container runs (busybox image, 13 MiB layer), kernel overlay\n');
    console.log('| | median |');
    console.log('| --- | ---: |');
    console.log(`| run from the CVMFS store (no pull) | ${ms(s)} |`);
    console.log(`| run of the pulled image | ${ms(p)} |`);
    console.log(`| pull (what the store saves, local OCI layout) | ${ms(median(pulls))} |`);
    console.log(`\nstore run / pulled run: ${(s / p).toFixed(2)}x; store run / (pull + run): ${(s / (median(pulls) + p)).toFixed(2)}x`);
  } finally {
    await fromStore.destroy();
    await pulled.destroy();
  }
}

try {
  await addTimes();
  await startTimes();
} finally {
  if (process.env['BENCH_KEEP'] !== '1' && !process.env['BENCH_DIR']) fs.rmSync(work, { recursive: true, force: true });
}

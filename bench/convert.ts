/**
 * Conversion benchmark: `cvmfs-thin convert` (OCI layout source, layers in
 * parallel, overlay whiteouts, markers, rename into place; no thin image)
 * against GNU `tar -xzf` of the same layers one after the other, in the
 * same run. Usage:
 *
 *   npm run build && npx tsx bench/convert.ts
 *
 * Env: BENCH_BYTES (byte-heavy image size, default 1 GiB, in 4 layers of 2
 * files each), BENCH_FILES (file-heavy image file count, default 50000, in 2
 * layers), BENCH_RUNS (default 1; the median is reported), BENCH_JOBS
 * (--jobs, default the converter's own), BENCH_DIR (work dir, default a new
 * dir in os.tmpdir()), BENCH_KEEP=1 keeps it.
 *
 * Each measured run starts after `sync`; it ends when the command exits
 * (writeback not included, for either side). Ours includes Node's start-up.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { content } from './lib/content.js';
import { type Layer, makeLayer, writeLayout } from './lib/oci.js';

const BYTES = Number(process.env['BENCH_BYTES'] ?? 1024 ** 3);
const FILES = Number(process.env['BENCH_FILES'] ?? 50_000);
const RUNS = Number(process.env['BENCH_RUNS'] ?? 1);
const JOBS = process.env['BENCH_JOBS'];
const work = process.env['BENCH_DIR'] ?? fs.mkdtempSync(path.join(os.tmpdir(), 'cvmfs-thin-bench-convert-'));
const CLI = path.resolve(import.meta.dirname, '../bin/cvmfs-thin.js');
fs.mkdirSync(work, { recursive: true });

if (!fs.existsSync(path.resolve(import.meta.dirname, '../dist/cli/main.js'))) {
  process.stderr.write('bench/convert.ts: dist/ is missing; run `npm run build` first\n');
  process.exit(1);
}

function buildByteHeavy(): { layout: string; layers: Layer[]; bytes: number } {
  const layers: Layer[] = [];
  const nLayers = 4;
  const filesPerLayer = 2;
  const per = Math.floor(BYTES / (nLayers * filesPerLayer));
  const block = content(4 << 20, 1);
  for (let l = 0; l < nLayers; l++) {
    const stage = path.join(work, `bytes-stage-${l}`);
    fs.mkdirSync(path.join(stage, 'opt', `l${l}`), { recursive: true });
    for (let f = 0; f < filesPerLayer; f++) {
      const fd = fs.openSync(path.join(stage, 'opt', `l${l}`, `blob${f}.bin`), 'w');
      for (let off = 0; off < per; off += block.length) fs.writeSync(fd, block, 0, Math.min(block.length, per - off));
      fs.closeSync(fd);
    }
    layers.push(makeLayer(stage, path.join(work, `bytes-l${l}`)));
    fs.rmSync(stage, { recursive: true, force: true });
  }
  const layout = path.join(work, 'bytes-layout');
  writeLayout(layout, 'v1', layers);
  return { layout, layers, bytes: per * nLayers * filesPerLayer };
}

function buildFileHeavy(): { layout: string; layers: Layer[]; bytes: number } {
  const layers: Layer[] = [];
  const nLayers = 2;
  let bytes = 0;
  for (let l = 0; l < nLayers; l++) {
    const stage = path.join(work, `files-stage-${l}`);
    const n = Math.floor(FILES / nLayers);
    for (let i = 0; i < n; i++) {
      const dir = path.join(stage, 'usr', 'share', `l${l}`, `d${Math.floor(i / 100)}`);
      if (i % 100 === 0) fs.mkdirSync(dir, { recursive: true });
      const size = 512 + ((i * 7919) % 3584);
      fs.writeFileSync(path.join(dir, `f${i}.txt`), content(size, i));
      bytes += size;
    }
    layers.push(makeLayer(stage, path.join(work, `files-l${l}`)));
    fs.rmSync(stage, { recursive: true, force: true });
  }
  const layout = path.join(work, 'files-layout');
  writeLayout(layout, 'v1', layers);
  return { layout, layers, bytes };
}

function timed(fn: () => void): number {
  spawnSync('sync');
  const t0 = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

function gnuTar(layers: Layer[], run: number): number {
  const dirs = layers.map((_, i) => path.join(work, `tar-${run}-${i}`));
  for (const d of dirs) fs.mkdirSync(d, { recursive: true });
  const t = timed(() => {
    layers.forEach((l, i) => execFileSync('tar', ['--xattrs', '--xattrs-include=*', '-xpzf', l.file, '-C', dirs[i]!]));
  });
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
  return t;
}

function ours(layout: string, run: number): number {
  const repo = path.join(work, `repo-${run}`);
  fs.mkdirSync(repo, { recursive: true });
  const args = [CLI, 'convert', `oci:${layout}:v1`, '--repository-dir', repo, '--no-thin', '--quiet', '--force'];
  if (JOBS) args.push('--jobs', JOBS);
  const t = timed(() => {
    const r = spawnSync(process.execPath, args, { stdio: ['ignore', 'ignore', 'inherit'] });
    if (r.status !== 0) throw new Error(`convert failed with status ${r.status}`);
  });
  fs.rmSync(repo, { recursive: true, force: true });
  return t;
}

function bench(name: string, img: { layout: string; layers: Layer[]; bytes: number }, files: number): { name: string; tar: number; ours: number } {
  const tarT: number[] = [];
  const ourT: number[] = [];
  for (let r = 0; r < RUNS; r++) {
    tarT.push(gnuTar(img.layers, r));
    ourT.push(ours(img.layout, r));
  }
  const t = median(tarT);
  const o = median(ourT);
  const gz = img.layers.reduce((a, l) => a + l.size, 0);
  const mb = (x: number) => (x / 1e6).toFixed(0);
  process.stdout.write(
    `${name}: ${img.layers.length} layers, ${mb(img.bytes)} MB in ${files} files (${mb(gz)} MB gzip)\n` +
      `  GNU tar -xzf (layers in sequence): ${t.toFixed(2)} s (${mb(img.bytes / t)} MB/s, ${Math.round(files / t)} files/s)\n` +
      `  cvmfs-thin convert:                ${o.toFixed(2)} s (${mb(img.bytes / o)} MB/s, ${Math.round(files / o)} files/s)\n` +
      `  ratio ours/tar: ${(o / t).toFixed(2)}\n`,
  );
  return { name, tar: t, ours: o };
}

try {
  process.stdout.write(`cvmfs-thin convert benchmark (${os.availableParallelism()} CPUs, Node ${process.version}, work dir ${work})\n`);
  const byteHeavy = buildByteHeavy();
  const a = bench('byte-heavy', byteHeavy, 8);
  for (const l of byteHeavy.layers) fs.rmSync(l.file, { force: true });
  fs.rmSync(byteHeavy.layout, { recursive: true, force: true });
  const fileHeavy = buildFileHeavy();
  const b = bench('file-heavy', fileHeavy, FILES);
  process.stdout.write(`summary: byte-heavy ${(a.ours / a.tar).toFixed(2)} (target <= 1.0), file-heavy ${(b.ours / b.tar).toFixed(2)} (target <= 1.5)\n`);
} finally {
  if (!process.env['BENCH_KEEP']) fs.rmSync(work, { recursive: true, force: true });
}

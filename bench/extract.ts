/**
 * Extraction benchmark: our extractLayer against GNU tar on the same layers,
 * in the same run. Usage:
 *
 *   npx tsx bench/extract.ts
 *
 * Env: BENCH_BYTES (byte-heavy layer size, default 1 GiB), BENCH_FILES
 * (file-heavy layer file count, default 50000), BENCH_RUNS (default 3,
 * median reported), BENCH_DIR (work dir, default a new dir in os.tmpdir()),
 * BENCH_KEEP=1 keeps it.
 *
 * Prints one line per case with median seconds and the ratio ours/tar.
 * Every run starts after `sync`, so dirty pages of the previous run are not
 * charged to the next one; a run ends when the extractor returns (writeback
 * is not included, for either side).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tarStream from 'tar-stream';
import { decompress, extractLayer, extractLayerFile } from '../src/core/tar/index.js';
import { TarParser } from '../src/core/tar/parser.js';
import { content } from './lib/content.js';

const BYTES = Number(process.env.BENCH_BYTES ?? 1024 ** 3);
const FILES = Number(process.env.BENCH_FILES ?? 50_000);
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const work = process.env.BENCH_DIR ?? fs.mkdtempSync(path.join(os.tmpdir(), 'cvmfs-thin-bench-'));
fs.mkdirSync(work, { recursive: true });

function sh(cmd: string, args: string[], opts: { cwd?: string } = {}): void {
  execFileSync(cmd, args, { stdio: ['ignore', 'ignore', 'inherit'], ...opts });
}

function buildByteHeavy(dir: string): void {
  fs.mkdirSync(dir, { recursive: true });
  const nfiles = 8;
  const per = Math.floor(BYTES / nfiles);
  const block = content(4 << 20, 1);
  for (let f = 0; f < nfiles; f++) {
    const fd = fs.openSync(path.join(dir, `blob${f}.bin`), 'w');
    let left = per;
    let k = 0;
    while (left > 0) {
      const n = Math.min(block.length, left);
      block[k++ % block.length]! ^= f + 1; // vary blocks a little
      fs.writeSync(fd, block, 0, n);
      left -= n;
    }
    fs.closeSync(fd);
  }
  fs.writeFileSync(path.join(dir, 'small.txt'), 'x');
}

function buildFileHeavy(dir: string): void {
  const dirs = Math.max(1, Math.round(FILES / 100));
  for (let d = 0; d < dirs; d++) fs.mkdirSync(path.join(dir, `d${d % 20}`, `sub${d}`), { recursive: true });
  for (let i = 0; i < FILES; i++) {
    const d = i % dirs;
    const size = (i * 7919) % 8192;
    const p = path.join(dir, `d${d % 20}`, `sub${d}`, `file-${i}.dat`);
    fs.writeFileSync(p, content(size, i));
    if (i % 3 === 0) fs.chmodSync(p, 0o755);
    if (i % 50 === 0) fs.symlinkSync(`file-${i}.dat`, p + '.lnk');
  }
}

function makeTars(name: string, tree: string): { tar: string; tgz: string; tzst: string } {
  const tar = path.join(work, `${name}.tar`);
  if (!fs.existsSync(tar)) {
    console.error(`building ${name} layer…`);
    sh('tar', ['--format=pax', '--numeric-owner', '-cf', tar, '-C', tree, '.']);
  }
  const tgz = tar + '.gz';
  if (!fs.existsSync(tgz)) sh('sh', ['-c', `gzip -1 -c ${tar} > ${tgz}`]);
  const tzst = tar + '.zst';
  if (!fs.existsSync(tzst)) sh('zstd', ['-3', '-q', '-T0', tar, '-o', tzst]);
  return { tar, tgz, tzst };
}

function freshDir(): string {
  const d = path.join(work, 'out');
  fs.rmSync(d, { recursive: true, force: true });
  fs.mkdirSync(d);
  return d;
}

async function time(fn: (dest: string) => Promise<void> | void): Promise<number> {
  const dest = freshDir();
  sh('sync', []);
  const t0 = process.hrtime.bigint();
  await fn(dest);
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

async function compare(label: string, tarArgs: (dest: string) => string[], ours: (dest: string) => Promise<unknown>): Promise<void> {
  const a: number[] = [];
  const b: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    // alternate who goes first
    const runTar = async (): Promise<void> => {
      a.push(await time((d) => sh('tar', tarArgs(d))));
    };
    const runOurs = async (): Promise<void> => {
      b.push(await time(async (d) => void (await ours(d))));
    };
    if (i % 2 === 0) {
      await runTar();
      await runOurs();
    } else {
      await runOurs();
      await runTar();
    }
  }
  const ta = median(a);
  const tb = median(b);
  console.log(
    `${label.padEnd(34)} tar ${ta.toFixed(2)}s  ours ${tb.toFixed(2)}s  ratio ${(tb / ta).toFixed(2)}  (runs tar ${a.map((x) => x.toFixed(2)).join('/')}, ours ${b.map((x) => x.toFixed(2)).join('/')})`,
  );
}

/** Parse-only throughput of our parser vs tar-stream (no fs), MB/s. */
async function parseOnly(file: string): Promise<void> {
  const size = fs.statSync(file).size;
  let t0 = process.hrtime.bigint();
  let n = 0;
  const p = new TarParser({ entry: () => void n++, data: () => undefined, entryEnd: () => undefined });
  await pipeline(
    fs.createReadStream(file, { highWaterMark: 1 << 20 }),
    new Writable({
      write(c: Buffer, _e, cb) {
        p.push(c);
        cb();
      },
    }),
  );
  p.end();
  const ours = Number(process.hrtime.bigint() - t0) / 1e9;
  t0 = process.hrtime.bigint();
  let m = 0;
  const ex = tarStream.extract();
  ex.on('entry', (_h, stream, next) => {
    m++;
    stream.on('end', next);
    stream.resume();
  });
  await pipeline(fs.createReadStream(file, { highWaterMark: 1 << 20 }), ex);
  const ts = Number(process.hrtime.bigint() - t0) / 1e9;
  console.log(
    `${`parse only ${path.basename(file)}`.padEnd(34)} ours ${(size / ours / 1e6).toFixed(0)} MB/s (${n} entries)  tar-stream ${(size / ts / 1e6).toFixed(0)} MB/s (${m} entries)`,
  );
}

async function main(): Promise<void> {
  console.log(
    `bench: ${os.cpus().length} cpus, node ${process.version}, work dir ${work}, byte-heavy ${(BYTES / 2 ** 20).toFixed(0)} MiB, file-heavy ${FILES} files, ${RUNS} runs (median)`,
  );
  if (spawnSync('tar', ['--version']).status !== 0) throw new Error('GNU tar is needed');
  const bytesTree = path.join(work, 'tree-bytes');
  const filesTree = path.join(work, 'tree-files');
  if (!fs.existsSync(path.join(work, 'bytes.tar'))) {
    fs.rmSync(bytesTree, { recursive: true, force: true });
    buildByteHeavy(bytesTree);
  }
  if (!fs.existsSync(path.join(work, 'files.tar'))) {
    fs.rmSync(filesTree, { recursive: true, force: true });
    buildFileHeavy(filesTree);
  }
  const layers = { bytes: makeTars('bytes', bytesTree), files: makeTars('files', filesTree) };
  fs.rmSync(bytesTree, { recursive: true, force: true });
  fs.rmSync(filesTree, { recursive: true, force: true });

  // warm up (worker start, page cache)
  await extractLayer(fs.createReadStream(layers.files.tar), { dest: freshDir(), whiteouts: 'overlay' });

  const rs = (f: string): fs.ReadStream => fs.createReadStream(f, { highWaterMark: 1 << 20 });
  for (const [name, l] of Object.entries(layers)) {
    await parseOnly(l.tar);
    await compare(
      `${name}: tar -xf (ours from stream)`,
      (d) => ['--numeric-owner', '-xpf', l.tar, '-C', d],
      (d) => extractLayer(rs(l.tar), { dest: d, whiteouts: 'overlay' }),
    );
    await compare(
      `${name}: tar -xf (ours from file)`,
      (d) => ['--numeric-owner', '-xpf', l.tar, '-C', d],
      (d) => extractLayerFile(l.tar, { dest: d, whiteouts: 'overlay' }),
    );
    await compare(
      `${name}: tar -xf (ours inline)`,
      (d) => ['--numeric-owner', '-xpf', l.tar, '-C', d],
      (d) => extractLayer(rs(l.tar), { dest: d, whiteouts: 'overlay', thread: 'inline' }),
    );
    await compare(
      `${name}: tar -xzf`,
      (d) => ['--numeric-owner', '-xpzf', l.tgz, '-C', d],
      (d) => extractLayer(decompress(rs(l.tgz), 'gzip'), { dest: d, whiteouts: 'overlay' }),
    );
    await compare(
      `${name}: tar --zstd -xf (ours: zstd process)`,
      (d) => ['--numeric-owner', '--zstd', '-xpf', l.tzst, '-C', d],
      (d) => extractLayer(decompress(rs(l.tzst), 'zstd', { zstd: 'process' }), { dest: d, whiteouts: 'overlay' }),
    );
    await compare(
      `${name}: tar --zstd -xf (ours: fzstd)`,
      (d) => ['--numeric-owner', '--zstd', '-xpf', l.tzst, '-C', d],
      (d) => extractLayer(decompress(rs(l.tzst), 'zstd', { zstd: 'js' }), { dest: d, whiteouts: 'overlay' }),
    );
  }
  // decompression alone, MB/s of output
  for (const [label, f, kind, how] of [
    ['gunzip zlib', layers.bytes.tgz, 'gzip', undefined],
    ['zstd process', layers.bytes.tzst, 'zstd', 'process'],
    ['zstd fzstd', layers.bytes.tzst, 'zstd', 'js'],
  ] as const) {
    const t0 = process.hrtime.bigint();
    const h = createHash('sha256');
    let n = 0;
    for await (const c of decompress(rs(f), kind, how ? { zstd: how } : {})) {
      n += (c as Buffer).length;
      h.update(c as Buffer);
    }
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    console.log(`${`decompress+hash ${label}`.padEnd(34)} ${(n / s / 1e6).toFixed(0)} MB/s`);
  }
  fs.rmSync(path.join(work, 'out'), { recursive: true, force: true });
  if (!process.env.BENCH_KEEP && !process.env.BENCH_DIR) fs.rmSync(work, { recursive: true, force: true });
}

await main();

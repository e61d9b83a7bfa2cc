/**
 * Publishing benchmark: a 4-layer image (a file-heavy base, layers that
 * change, delete and make directories opaque) converted and published by
 * `cvmfs-thin convert`
 *
 *   - into a plain tree (no publish),
 *   - through the transaction path (one transaction for the image),
 *   - through the ingest path (each layer streamed to an ingest, then one
 *     transaction for the metadata),
 *
 * against GNU `tar -xzf` of the same layers in sequence (the baseline), in
 * the same run. The publisher is test/helpers/cvmfs-sim (a real overlayfs
 * union, the publish rules of a real Stratum-0, GNU tar for the ingest);
 * where a real CernVM-FS server is installed (`cvmfs_server` on PATH) the two
 * publish paths also run against a real Stratum-0 made for the run (its
 * default URL, http://localhost/cvmfs/<repo>: the publisher's web server must
 * serve /srv/cvmfs). DUCC's
 * figures (the note cvmfs-real.md: 14 s and 31 transaction/publish pairs for a
 * 2-layer image) are printed beside ours for reference — not measured here.
 *
 * Then the first use of a chain by the snapshotter's CvmfsLayers: a chain over
 * our layers (nothing walked) vs a chain over layers without our marker
 * (DUCC's: every entry of every layer lstat'ed once to restore special bits).
 *
 *   npm run build && npx tsx bench/publish.ts
 *
 * Env: BENCH_FILES (files in the base layer, default 20000), BENCH_RUNS
 * (default 3, median reported), BENCH_DIR, BENCH_KEEP=1. Root only.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { cvmfsLocation } from '../src/core/cvmfs/location.js';
import { CvmfsLayers, type LayerFacts } from '../src/core/stack/layers.js';
import { chainDir, duccChainIds } from '../src/core/cvmfs/layout.js';
import { simCommand } from '../test/helpers/cvmfs-sim/command.js';
import { init, rmfs, simPaths } from '../test/helpers/cvmfs-sim/sim.js';
import { content } from './lib/content.js';
import { type Layer, makeLayer, writeLayout } from './lib/oci.js';
import { systemHost } from '../src/core/host/host.js';

const FILES = Number(process.env['BENCH_FILES'] ?? 20_000);
const RUNS = Number(process.env['BENCH_RUNS'] ?? 3);
const REPO = 'bench.example.org';
const work = process.env['BENCH_DIR'] ?? fs.mkdtempSync(path.join(os.tmpdir(), 'cvmfs-thin-bench-publish-'));
const CLI = path.resolve(import.meta.dirname, '../bin/cvmfs-thin.js');
fs.mkdirSync(work, { recursive: true });
if (process.getuid?.() !== 0) {
  process.stderr.write('bench/publish.ts: needs root (overlay union mounts)\n');
  process.exit(1);
}
if (!fs.existsSync(path.resolve(import.meta.dirname, '../dist/cli/main.js'))) {
  process.stderr.write('bench/publish.ts: dist/ is missing; run `npm run build` first\n');
  process.exit(1);
}
const hasRealServer = spawnSync('sh', ['-c', 'command -v cvmfs_server'], { stdio: 'ignore' }).status === 0;

function buildImage(): { layout: string; layers: Layer[]; entries: number } {
  const stages: ((s: string) => void)[] = [
    (s) => {
      for (let i = 0; i < FILES; i++) {
        const dir = path.join(s, 'usr', 'share', `d${Math.floor(i / 200)}`);
        if (i % 200 === 0) fs.mkdirSync(dir, { recursive: true });
        fs.writeFileSync(path.join(dir, `f${i}`), content(256 + ((i * 7919) % 2048), i));
      }
      fs.mkdirSync(path.join(s, 'opt', 'tree'), { recursive: true });
      for (let i = 0; i < 100; i++) fs.writeFileSync(path.join(s, 'opt', 'tree', `old${i}`), 'old');
      fs.mkdirSync(path.join(s, 'tmp'), { mode: 0o1777 });
      fs.chmodSync(path.join(s, 'tmp'), 0o1777);
    },
    (s) => {
      // deletes 1 % of the base, makes /opt/tree opaque
      for (let i = 0; i < FILES; i += 100) {
        const dir = path.join(s, 'usr', 'share', `d${Math.floor(i / 200)}`);
        fs.mkdirSync(dir, { recursive: true });
        fs.writeFileSync(path.join(dir, `.wh.f${i}`), '');
      }
      fs.mkdirSync(path.join(s, 'opt', 'tree'), { recursive: true });
      fs.writeFileSync(path.join(s, 'opt', 'tree', '.wh..wh..opq'), '');
      fs.writeFileSync(path.join(s, 'opt', 'tree', 'new'), 'new');
    },
    (s) => {
      fs.mkdirSync(path.join(s, 'etc'), { recursive: true });
      for (let i = 0; i < 500; i++) fs.writeFileSync(path.join(s, 'etc', `conf${i}`), content(1024, i));
    },
    (s) => {
      fs.mkdirSync(path.join(s, 'app'), { recursive: true });
      fs.writeFileSync(path.join(s, 'app', 'big.bin'), content(32 << 20, 7));
    },
  ];
  const layers = stages.map((fill, i) => {
    const stage = path.join(work, `stage-${i}`);
    fs.mkdirSync(stage, { recursive: true });
    fill(stage);
    const l = makeLayer(stage, path.join(work, `layer-${i}`));
    fs.rmSync(stage, { recursive: true, force: true });
    return l;
  });
  const layout = path.join(work, 'layout');
  writeLayout(layout, 'v1', layers);
  return { layout, layers, entries: FILES + 100 + 500 + FILES / 100 + 10 };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

function timed(fn: () => void): number {
  spawnSync('sync');
  const t0 = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

function gnuTar(layers: Layer[]): number {
  const dirs = layers.map((_, i) => path.join(work, `tar-${i}`));
  for (const d of dirs) fs.mkdirSync(d, { recursive: true });
  const t = timed(() => layers.forEach((l, i) => execFileSync('tar', ['--xattrs', '--xattrs-include=*', '-xpzf', l.file, '-C', dirs[i]!])));
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
  return t;
}

/** One conversion; returns its time and how many publish steps (transactions, publishes, ingests) it ran. */
function convert(layout: string, repoDir: string, hooks: string[], repository = REPO): { seconds: number; steps: number } {
  let out = '';
  const seconds = timed(() => {
    const r = spawnSync(
      process.execPath,
      [
        CLI,
        'convert',
        `oci:${layout}:v1`,
        '--repository-dir',
        repoDir,
        '--repository',
        repository,
        '--no-thin',
        '--json',
        '--lock-file',
        path.join(work, 'lock'),
        ...hooks,
      ],
      {
        encoding: 'utf8',
        maxBuffer: 64 << 20,
      },
    );
    if (r.status !== 0) throw new Error(`convert failed (${r.status}): ${r.stderr}`);
    out = r.stdout;
  });
  const steps = (JSON.parse(out) as { publish_steps: { step: string }[] }).publish_steps.length;
  return { seconds, steps };
}

function simHooks(S: string, ingest: boolean): string[] {
  return [
    '--transaction-command',
    simCommand('transaction', S),
    '--publish-command',
    simCommand('publish', S),
    '--abort-command',
    simCommand('abort', '-f', S),
    ...(ingest ? ['--ingest-command', simCommand('ingest', S, '--catalog', '-k', '-t', '-', '-b', '{base}')] : []),
  ];
}

function realServer(name: string): { name: string; repoDir: string; hooks: (ingest: boolean) => string[]; remove: () => void } {
  execFileSync('cvmfs_server', ['mkfs', '-o', 'root', '-p', name], { stdio: 'ignore' });
  return {
    name,
    repoDir: `/cvmfs/${name}`,
    hooks: (ingest) => ['--cvmfs-server', ...(ingest ? ['--ingest'] : [])],
    remove: () => execFileSync('cvmfs_server', ['rmfs', '-f', name], { stdio: 'ignore' }),
  };
}

async function chainFirstUse(img: { layout: string; layers: Layer[] }): Promise<{ ours: number; ducc: number }> {
  const res: Record<string, number> = {};
  for (const kind of ['ours', 'ducc'] as const) {
    const repo = path.join(work, `chains-${kind}`, REPO);
    fs.mkdirSync(repo, { recursive: true });
    const args = [
      CLI,
      'convert',
      `oci:${img.layout}:v1`,
      '--repository-dir',
      repo,
      '--no-thin',
      '--quiet',
      '--chains',
      ...(kind === 'ducc' ? ['--whiteouts', 'keep'] : []),
    ];
    const r = spawnSync(process.execPath, args, { stdio: ['ignore', 'ignore', 'inherit'] });
    if (r.status !== 0) throw new Error('convert --chains failed');
    const hexes = img.layers.map((l) => l.digest.slice(7));
    const ids = duccChainIds(hexes);
    const facts = new Map<string, LayerFacts>();
    const layers = new CvmfsLayers(
      cvmfsLocation({ repository: REPO, absoluteMountpoint: repo }),
      path.join(work, `masks-${kind}`),
      {
        get: (k) => facts.get(k),
        put: async (k, f) => void facts.set(k, f),
      },
      systemHost,
    );
    const t0 = process.hrtime.bigint();
    await layers.chainDirs(chainDir(repo, ids[ids.length - 1]!), repo, hexes);
    res[kind] = Number(process.hrtime.bigint() - t0) / 1e6;
  }
  return { ours: res['ours']!, ducc: res['ducc']! };
}

try {
  process.stdout.write(
    `cvmfs-thin publish benchmark (${os.availableParallelism()} CPUs, Node ${process.version}, ${FILES} files in the base layer, median of ${RUNS})\n`,
  );
  const img = buildImage();
  const gz = img.layers.reduce((a, l) => a + l.size, 0);
  process.stdout.write(`image: ${img.layers.length} layers, ~${img.entries} entries, ${(gz / 1e6).toFixed(1)} MB gzip\n`);
  const rows: { name: string; seconds: number; steps: number }[] = [];
  const run = (name: string, fn: (i: number) => { seconds: number; steps: number }) => {
    const xs: { seconds: number; steps: number }[] = [];
    for (let i = 0; i < RUNS; i++) xs.push(fn(i));
    rows.push({ name, seconds: median(xs.map((x) => x.seconds)), steps: xs[0]!.steps });
  };
  run('GNU tar -xzf, layers in sequence (baseline)', () => ({ seconds: gnuTar(img.layers), steps: 0 }));
  run('convert into a plain tree (no publish)', (i) => {
    const dir = path.join(work, `plain-${i}`, REPO);
    fs.mkdirSync(dir, { recursive: true });
    const r = convert(img.layout, dir, []);
    fs.rmSync(path.dirname(dir), { recursive: true, force: true });
    return r;
  });
  for (const ingest of [false, true]) {
    run(`convert + publish, ${ingest ? 'ingest' : 'transaction'} path (simulated Stratum-0)`, (i) => {
      const S = path.join(work, `sim-${ingest ? 'i' : 't'}-${i}`);
      init(S, { includeXattrs: true });
      try {
        return convert(img.layout, simPaths(S).repo, simHooks(S, ingest));
      } finally {
        rmfs(S);
      }
    });
  }
  if (hasRealServer) {
    for (const ingest of [false, true]) {
      run(`convert + publish, ${ingest ? 'ingest' : 'transaction'} path (real cvmfs_server)`, (i) => {
        const s = realServer(`bench${ingest ? 'i' : 't'}${i}-${process.pid}.example.org`);
        try {
          return convert(img.layout, s.repoDir, s.hooks(ingest), s.name);
        } finally {
          s.remove();
        }
      });
    }
  } else {
    process.stdout.write('(no cvmfs_server on PATH: the real Stratum-0 rows are not measured)\n');
  }
  const base = rows[0]!.seconds;
  for (const r of rows)
    process.stdout.write(
      `  ${r.name.padEnd(66)} ${r.seconds.toFixed(2)} s  ratio ${(r.seconds / base).toFixed(2)}${r.steps ? `  (${r.steps} publish steps)` : ''}\n`,
    );
  process.stdout.write('  DUCC (cvmfs-real.md, a 2-layer image on a real Stratum-0): 14 s, 31 transaction/publish pairs — for reference, not measured here\n');
  const c = await chainFirstUse(img);
  process.stdout.write(
    `chain first use (CvmfsLayers.chainDirs): over our layers ${c.ours.toFixed(1)} ms; over layers without our marker (DUCC's: walk of every layer) ${c.ducc.toFixed(1)} ms, ratio ${(c.ducc / c.ours).toFixed(1)}\n`,
  );
} finally {
  if (!process.env['BENCH_KEEP']) fs.rmSync(work, { recursive: true, force: true });
}

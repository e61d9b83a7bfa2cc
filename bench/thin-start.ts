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
 * The Stratum-0, the client and the nodes are bench/lib/cvmfs-real.ts and bench/lib/start.ts
 * (shared with bench/layer-count.ts).
 *
 * Env: BENCH_RUNS (default 3), BENCH_FILES (small files in the base layer,
 * default 10000), BENCH_LATENCY_MS (default 0), BENCH_KEEP=1 (keep the work dir).
 * Needs root, cvmfs_server, cvmfs2, cvmfs_talk, containerd, ctr, runc, busybox-static.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startContainerd } from '../test/helpers/containerd.js';
import { buildImage, busyboxEntries, type TarEntry, writeOciArchive } from '../test/helpers/oci-image.js';
import { CVMFS_BINARIES, cvmfsClient, makeStratum0, publishArgs, serveStratum0 } from './lib/cvmfs-real.js';
import { files, range } from './lib/images.js';
import {
  cleanup,
  cleanupOnSignals,
  convert,
  median,
  missingOf,
  onCleanup,
  pullRun as ctrPullRun,
  requireBuild,
  type Sample,
  SN,
  startSnapshotter,
  unmountBelow,
} from './lib/start.js';

const RUNS = Number(process.env['BENCH_RUNS'] ?? 3);
const FILES = Number(process.env['BENCH_FILES'] ?? 10_000);
const LATENCY = Number(process.env['BENCH_LATENCY_MS'] ?? 0);
const log = (s: string) => process.stderr.write(`[thin-start] ${s}\n`);

const missing = missingOf([...CVMFS_BINARIES, 'containerd', 'ctr', 'runc']);
if (missing.length) {
  process.stdout.write(`bench/thin-start.ts: skipped, needs ${missing.join(', ')}\n`);
  process.exit(0);
}
requireBuild('bench/thin-start.ts');

// ---- the image -------------------------------------------------------------------------------

/** What the container does: read 5 files (+ busybox itself), check a file deleted by layer 2. */
const CMD = [
  '/bin/sh',
  '-c',
  'cat /app/app.conf /etc/conf/c7 /usr/share/d12/f2413 /usr/lib/lib17.so /opt/data/part3.bin | md5sum; wc -c < /opt/data/part3.bin; test -e /usr/share/d0/f100 || echo deleted-ok',
];

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
  return {
    name,
    gz: img.layers.reduce((a, l) => a + l.blob.length, 0),
    raw: img.layers.reduce((a, l) => a + l.raw.length, 0),
    entries: layers.reduce((a, l) => a + l.length, 0),
  };
}

const pullRun = (ctd: Parameters<typeof ctrPullRun>[0], archive: string, image: string, id: string, snapshotter?: string) =>
  ctrPullRun(ctd, archive, image, id, CMD, snapshotter);

// ---- main -----------------------------------------------------------------------------------

async function main(): Promise<void> {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'cvmfs-thin-bench-start-'));
  cleanupOnSignals(log);
  onCleanup(async () => {
    await unmountBelow(work);
    if (!process.env['BENCH_KEEP']) fs.rmSync(work, { recursive: true, force: true });
  });
  process.stdout.write(`cvmfs-thin thin-start benchmark (${os.availableParallelism()} CPUs, Node ${process.version}, median of ${RUNS} runs)\n`);

  log('building the image...');
  const fullTar = path.join(work, 'full.tar');
  const img = await buildBenchImage(fullTar);
  process.stdout.write(
    `image: 4 layers, ${img.entries} tar entries, ${(img.raw / 1e6).toFixed(1)} MB of layer tars, ${(img.gz / 1e6).toFixed(1)} MB compressed (gzip); OCI archive ${(fs.statSync(fullTar).size / 1e6).toFixed(1)} MB\n`,
  );

  const port = await serveStratum0(LATENCY);
  const repo = `thinstart${process.pid}.example.org`;
  log(`cvmfs_server mkfs ${repo}...`);
  await makeStratum0(repo, port);
  const thinTar = path.join(work, 'thin.tar');
  log('cvmfs-thin convert --cvmfs-server...');
  const { seconds: convertS, thinName } = await convert(`oci-archive:${fullTar}`, { ...publishArgs(repo), thinTar, lockFile: path.join(work, 'convert.lock') });
  process.stdout.write(
    `convert + publish (cvmfs-thin convert --cvmfs-server, transaction path, real Stratum-0): ${convertS.toFixed(1)} s, once, not in the figures below; thin archive ${fs.statSync(thinTar).size} bytes\n`,
  );
  const cl = cvmfsClient(work, repo, port);

  const rows: Record<'full' | 'fullOurs' | 'cold' | 'warm', Sample[]> = { full: [], fullOurs: [], cold: [], warm: [] };
  let mountBytes = 0;
  for (let i = 0; i < RUNS; i++) {
    log(`run ${i + 1}/${RUNS}`);
    const dir = path.join(work, `run-${i}`);
    fs.mkdirSync(dir);
    await cl.mountFresh(); // before the snapshotter starts: it is a node's /cvmfs mount
    const mountDl = await cl.downloads();
    mountBytes = mountDl.bytes;
    const sn = await startSnapshotter(dir, { repository: repo, mountpoint: cl.mnt });
    const ctd = await startContainerd(path.join(dir, 'ctd'), sn.socket, SN);
    onCleanup(() => (ctd.proc.exitCode === null && ctd.proc.signalCode === null ? ctd.stop() : undefined));
    try {
      const outs: string[] = [];
      const full = async () => {
        for (const [key, snap] of [
          ['full', undefined],
          ['fullOurs', SN],
        ] as const) {
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
      if (i === 0)
        process.stdout.write(`the command (${CMD.join(' ')}) printed, the same in every container:\n  ${outs[0]!.trim().split('\n').join('\n  ')}\n`);
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
    process.stdout.write(
      `  ${label.padEnd(48)}${f(m((s) => s.import))} ${f(m((s) => s.run))} ${f(m((s) => s.total))}   ${(m((s) => s.total) / base).toFixed(2).padStart(6)}\n`,
    );
  }
  const mb = (x: number) => `${(x / 1e6).toFixed(2)} MB`;
  const cold = median(rows.cold.map((s) => s.bytes!));
  process.stdout.write(
    `\nCVMFS client downloads (cvmfs_talk internal affairs, download.sz_transferred_bytes): at mount ${(mountBytes / 1e3).toFixed(1)} kB (manifest, root catalog);\n` +
      `  cold pull+run ${mb(cold)} in ${median(rows.cold.map((s) => s.requests!))} requests = ${((100 * cold) / img.gz).toFixed(1)} % of the compressed image (${mb(img.gz)}); ` +
      `warm pull+run ${mb(median(rows.warm.map((s) => s.bytes!)))} in ${median(rows.warm.map((s) => s.requests!))} requests\n`,
  );
  process.stdout.write(
    `(Stratum-0 over HTTP on 127.0.0.1 from the page cache, ${LATENCY ? `+${LATENCY} ms per answer, no bandwidth limit` : 'no network latency or bandwidth limit'}; the full image comes from a local archive, no registry download either)\n`,
  );
}

try {
  await main();
} catch (e) {
  process.stderr.write(`bench/thin-start.ts failed: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exitCode = 1;
} finally {
  await cleanup(log);
}

/**
 * Graph driver benchmark: `docker run` of a CVMFS thin image on our plugin vs
 * the same image as a normal image on the in-tree overlay2 driver of the same
 * dockerd (two dockerd 20.10 instances side by side), interleaved.
 *
 *   npx tsx bench/graphdriver.ts          (needs root, dockerd/containerd/runc, npm run build)
 *   BENCH_RUNS=9 BENCH_LOADS=3 BENCH_FILES=3000 BENCH_MB=128 npx tsx bench/graphdriver.ts
 *
 * The image: busybox, a filler layer of BENCH_FILES files (BENCH_MB MiB in
 * all), and a small top layer that deletes a file. The CVMFS side is a plain
 * directory tree in the DUCC layout (what the page cache serves; a real CVMFS
 * client adds its own fetch costs on first access).
 *
 * Prints medians of:
 *  - warm `docker run --rm IMAGE true`, images already loaded: thin on ours,
 *    normal on overlay2, and normal on ours (plugin overhead for ordinary images);
 *  - `docker load` + `docker run` from nothing: thin image (a few hundred
 *    bytes) on ours vs the whole image on overlay2;
 * and the ratios ours/overlay2.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { buildImage, buildThinImage, busyboxEntries, type TarEntry, unpackDuccStyle, writeDockerArchive } from '../test/helpers/oci-image.js';
import { type Dockerd, type Plugin, removeTestDir, shortTempDir, startDockerd, startPlugin } from '../test/graphdriver/harness.js';

const RUNS = Number(process.env['BENCH_RUNS'] ?? 9);
const LOADS = Number(process.env['BENCH_LOADS'] ?? 3);
const FILES = Number(process.env['BENCH_FILES'] ?? 2000);
const MB = Number(process.env['BENCH_MB'] ?? 64);
const REPO = 'unpacked.cern.ch';

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const fmt = (ms: number) => `${ms.toFixed(0).padStart(6)} ms`;

async function timed(f: () => Promise<unknown>): Promise<number> {
  const t0 = process.hrtime.bigint();
  await f();
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

function fillerEntries(): TarEntry[] {
  const per = Math.max(1, Math.floor((MB * 1024 * 1024) / FILES));
  const out: TarEntry[] = [
    { path: 'usr/', type: 'dir' },
    { path: 'usr/share/', type: 'dir' },
    { path: 'usr/share/filler/', type: 'dir' },
  ];
  const dirs = Math.ceil(FILES / 100);
  for (let d = 0; d < dirs; d++) out.push({ path: `usr/share/filler/d${d}/`, type: 'dir' });
  for (let i = 0; i < FILES; i++) out.push({ path: `usr/share/filler/d${Math.floor(i / 100)}/f${i}`, content: randomBytes(per) });
  return out;
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('needs root (dockerd, mounts)');
  const dir = shortTempDir('gdb-');
  const name = `cvmfs-gd-bench-${process.pid}`;
  let plugin: Plugin | undefined;
  let ours: Dockerd | undefined;
  let ref: Dockerd | undefined;
  try {
    process.stderr.write(`building a ${FILES}-file, ${MB} MiB image...\n`);
    const repo = path.join(dir, 'cvmfs', REPO);
    mkdirSync(repo, { recursive: true });
    const img = await buildImage('bench/app:1', [
      busyboxEntries('bench'),
      fillerEntries(),
      [
        { path: 'etc/', type: 'dir' },
        { path: 'etc/.wh.salt', content: '' },
        { path: 'etc/app.conf', content: 'x=1\n' },
      ],
    ]);
    for (const l of img.layers) unpackDuccStyle(repo, l);
    const thinText = JSON.stringify({ version: '1.0', origin: 'bench/app:1', layers: img.layers.map((l) => ({ digest: l.digest.slice(7) })) });
    const normalTar = path.join(dir, 'normal.tar');
    const thinTar = path.join(dir, 'thin.tar');
    await writeDockerArchive(normalTar, img);
    await writeDockerArchive(thinTar, await buildThinImage('bench/thin:1', thinText));
    process.stderr.write(`normal archive ${(statSync(normalTar).size / 1048576).toFixed(1)} MiB, thin archive ${statSync(thinTar).size} bytes\n`);

    plugin = await startPlugin(name, ['--state-dir', path.join(dir, 'state'), '--absolute-mountpoint', repo, '--log-level', 'warn']);
    ours = await startDockerd(path.join(dir, 'a'), name, ['--log-level', 'warn']);
    ref = await startDockerd(path.join(dir, 'b'), 'overlay2', ['--log-level', 'warn']);
    const o = ours;
    const r = ref;
    const version = (await o.docker(['version', '--format', '{{.Server.Version}}'])).stdout.trim();
    const cliTimes: number[] = [];
    for (let i = 0; i < 3; i++) cliTimes.push(await timed(() => o.docker(['version'])));
    const cli = median(cliTimes);

    // ---- warm start: images loaded
    await o.docker(['load', '-i', thinTar]);
    await o.docker(['load', '-i', normalTar]);
    await r.docker(['load', '-i', normalTar]);
    const run = (d: Dockerd, image: string) => d.docker(['run', '--rm', '--network', 'none', image, 'true']);
    // one untimed run each (page cache, dockerd caches)
    await run(o, 'bench/thin:1');
    await run(r, 'bench/app:1');
    await run(o, 'bench/app:1');
    const tThin: number[] = [];
    const tRef: number[] = [];
    const tOursNormal: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      tThin.push(await timed(() => run(o, 'bench/thin:1')));
      tRef.push(await timed(() => run(r, 'bench/app:1')));
      tOursNormal.push(await timed(() => run(o, 'bench/app:1')));
    }
    // the thin container really sees the CVMFS files
    const check = (
      await o.docker([
        'run',
        '--rm',
        '--network',
        'none',
        'bench/thin:1',
        'sh',
        '-c',
        'cat /etc/app.conf; ls /usr/share/filler | wc -l; test -e /etc/salt || echo deleted',
      ])
    ).stdout;
    if (check !== `x=1\n${Math.ceil(FILES / 100)}\ndeleted\n`) throw new Error(`thin container sees the wrong tree: ${JSON.stringify(check)}`);

    // ---- load and run from nothing
    await o.docker(['rmi', 'bench/app:1']);
    const lThin: number[] = [];
    const lRef: number[] = [];
    for (let i = 0; i < LOADS; i++) {
      await o.docker(['rmi', 'bench/thin:1']);
      await r.docker(['rmi', 'bench/app:1']);
      lThin.push(
        await timed(async () => {
          await o.docker(['load', '-i', thinTar]);
          await run(o, 'bench/thin:1');
        }),
      );
      lRef.push(
        await timed(async () => {
          await r.docker(['load', '-i', normalTar]);
          await run(r, 'bench/app:1');
        }),
      );
    }

    const w = { thin: median(tThin), ref: median(tRef), oursNormal: median(tOursNormal) };
    const l = { thin: median(lThin), ref: median(lRef) };
    const out = [
      `dockerd ${version}, image: busybox + ${FILES} files / ${MB} MiB + 1 small layer (3 layers), ${RUNS} warm runs, ${LOADS} load+run rounds (medians)`,
      `docker CLI round trip (docker version): ${fmt(cli)}`,
      '',
      'warm `docker run --rm IMAGE true` (image already loaded)',
      `  thin image, cvmfs plugin        ${fmt(w.thin)}`,
      `  normal image, overlay2          ${fmt(w.ref)}`,
      `  normal image, cvmfs plugin      ${fmt(w.oursNormal)}`,
      `  ratio thin/overlay2             ${(w.thin / w.ref).toFixed(2)}`,
      `  ratio plugin/overlay2 (normal)  ${(w.oursNormal / w.ref).toFixed(2)}`,
      '',
      '`docker load` + `docker run` from nothing',
      `  thin image, cvmfs plugin        ${fmt(l.thin)}`,
      `  normal image, overlay2          ${fmt(l.ref)}`,
      `  ratio thin/overlay2             ${(l.thin / l.ref).toFixed(2)}`,
    ];
    process.stdout.write(`${out.join('\n')}\n`);
  } finally {
    await ours?.stop();
    await ref?.stop();
    await plugin?.stop();
    removeTestDir(dir);
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});

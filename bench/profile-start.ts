/**
 * Cold CVMFS caches and access profiles (issue 18, item 2): the first start of an image on a
 * node whose CVMFS cache is cold, with and without the image's access profile, against a warm
 * start, on a real CernVM-FS client, in one run.
 *
 *   npm run build && npx tsx bench/profile-start.ts
 *
 * Setup (not timed): an image whose start reads hundreds of files (busybox-static as /bin/sh,
 * BENCH_FILES files of 8–120 kB under /app/lib in one layer, a few more layers of other
 * files), published into a Stratum-0 made for the run (`cvmfs-thin convert --cvmfs-server`),
 * its storage served over HTTP by this process with BENCH_LATENCY_MS added to every answer (a
 * network), read through a separate cvmfs2 client (bench/lib/cvmfs-real.ts). The profile is
 * learnt as a node would: a start on a node running `cvmfs-thin snapshotter --record-profiles`
 * (--record-window max(5, BENCH_LATENCY_MS / 2) s: a slow cold start is recorded whole),
 * then `cvmfs-thin profile publish --cvmfs-server` of what it recorded (one more transaction).
 *
 * `profile publish` also writes the profile's pack (its files in one tar) and the same files as
 * an EROFS image: a pulling node mounts the image from CVMFS as the image's hot layer
 * (core/stack/hot-image.ts), or unpacks the pack (--no-hot-image; core/stack/hot.ts).
 *
 * Each run starts fresh nodes (containerd + snapshotter, empty roots) and times `ctr image
 * import` + `ctr run --rm` of the thin image, running a command that reads every file once:
 *   - cold, no profile: client unmounted, cache wiped, mounted; snapshotter --no-prefetch;
 *   - cold, profile (hot layer): the same, with the snapshotter's defaults (the pull mounts the
 *     image and waits for that up to --hot-wait; the rest read ahead from the pull on);
 *   - cold, profile, pack unpacked: --no-hot-image (the pull fetches the pack and waits for it
 *     to be unpacked);
 *   - cold, profile, files one by one: --hot-wait 0 (no hot layer: the profile's files are read
 *     ahead one by one from the pull on);
 *   - cold, profile, run BENCH_GAP_MS after the pull (a kubelet pulls, then creates): the
 *     gap itself is not counted;
 *   - warm: a second node on the kept client once its cache holds the files the start reads
 *     (a node that ran the image before; after a cold start with a hot layer, one untimed
 *     start with --hot-wait 0 reads them through the client): the node sees that the cache
 *     holds the profile's files and makes no hot layer; once per run also with --hot-wait 0;
 *   - cold, profile, node running: the same on a node whose daemons have run a while (it pulled
 *     the image before, made its hot layer, and the image was removed: `ctr images rm --sync`,
 *     then Cleanup removed the hot layer), the client remounted with a wiped cache; the other
 *     cold rows start fresh daemons, whose first pack also pays for loading and compiling the
 *     unpacking code;
 *   - warm, only the pack in the cache: right after a cold start with a hot layer mounted from
 *     the image (its containers read the files from the hot layer, so the client holds the image
 *     only).
 * The order of the cold rows alternates. Medians; ratios against warm; the client's
 * download counters per row; one cold start's `cvmfs-thin why-slow`.
 *
 * Env: BENCH_RUNS (default 3), BENCH_FILES (default 400), BENCH_LATENCY_MS (default 5), BENCH_GAP_MS (default 1500),
 * BENCH_KEEP=1. Needs root, containerd, ctr, runc, busybox-static, cvmfs_server, cvmfs2, cvmfs_talk.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { buildImage, busyboxEntries, writeOciArchive } from '../test/helpers/oci-image.js';
import { CVMFS_BINARIES, cvmfsClient, makeStratum0, publishArgs, serveStratum0 } from './lib/cvmfs-real.js';
import { files, range } from './lib/images.js';
import { CLI, cleanup, cleanupOnSignals, convert, median, missingOf, type Node, onCleanup, pullRun, requireBuild, SN, sh, startNode } from './lib/start.js';

const RUNS = Number(process.env['BENCH_RUNS'] ?? 3);
const FILES = Number(process.env['BENCH_FILES'] ?? 400);
const LATENCY = Number(process.env['BENCH_LATENCY_MS'] ?? 5);
const GAP = Number(process.env['BENCH_GAP_MS'] ?? 1500);
const REPO = 'profile.bench.org';
const log = (s: string) => process.stderr.write(`[profile-start] ${s}\n`);
const out = (s: string): void => void process.stdout.write(`${s}\n`);

const missing = missingOf(['containerd', 'ctr', 'runc', ...CVMFS_BINARIES]);
if (missing.length) {
  out(`bench/profile-start.ts: skipped, needs ${missing.join(', ')}`);
  process.exit(0);
}
requireBuild('bench/profile-start.ts');

const CMD = ['/bin/sh', '-c', 'cat /app/lib/* | md5sum; cat /etc/app.conf'];

async function main(): Promise<void> {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'cvmfs-thin-bench-profile-'));
  cleanupOnSignals(log);
  onCleanup(() => (process.env['BENCH_KEEP'] ? undefined : fs.rmSync(work, { recursive: true, force: true })));
  out(
    `cvmfs-thin profile-start benchmark (${os.availableParallelism()} CPUs, Node ${process.version}, ${FILES} files read at start, +${LATENCY} ms per Stratum-0 answer, median of ${RUNS} runs)`,
  );

  // ---- the image and the Stratum-0 (not timed) ----
  const libs = range(FILES).map((i): [string, number] => [`app/lib/m${String(i).padStart(4, '0')}.py`, 8192 + ((i * 7919) % 114_688)]);
  const other = range(3).map((k) =>
    files(
      range(300).map((i): [string, number] => [`usr/share/d${k}/f${i}`, 2048 + i]),
      [],
      10_000 * (k + 1),
    ),
  );
  const img = await buildImage('bench.org/profile/app:1', [
    busyboxEntries('profile'),
    ...other,
    files(libs, [{ path: 'etc/app.conf', content: 'app=1\n' }], 1 << 20),
  ]);
  const archive = path.join(work, 'app.tar');
  await writeOciArchive(archive, img);
  const port = await serveStratum0(LATENCY);
  await makeStratum0(REPO, port);
  const pub = publishArgs(REPO);
  const thinTar = path.join(work, 'thin.tar');
  const conv = await convert(`oci-archive:${archive}`, { ...pub, thinTar, lockFile: path.join(work, 'convert.lock') });
  log(`converted and published in ${conv.seconds.toFixed(1)} s`);
  const client = cvmfsClient(work, REPO, port);
  let n = 0;
  const node = (args: string[] = []) => startNode(path.join(work, `node${n++}`), { repository: REPO, mountpoint: client.mnt, args });
  const start = async (nd: Node, id: string, gapMs = 0) => {
    const before = await client.downloads();
    let imp = 0;
    if (gapMs > 0) {
      // the pull, then the container a moment later (a kubelet pulls before it creates)
      const t = performance.now();
      await nd.ctd.ctr(['image', 'import', '--snapshotter', SN, thinTar], { timeoutMs: 600_000 });
      imp = (performance.now() - t) / 1000;
      await new Promise((r) => setTimeout(r, gapMs));
    }
    const { s: s0, out: o } = await pullRun(nd.ctd, gapMs > 0 ? undefined : thinTar, conv.thinName, id, CMD, SN);
    const s = gapMs > 0 ? { ...s0, import: imp, total: imp + s0.run } : s0;
    if (!o.includes('app=1')) throw new Error(`unexpected output: ${o}`);
    const after = await client.downloads();
    return { ...s, bytes: after.bytes - before.bytes, requests: after.requests - before.requests };
  };

  // ---- learn the profile: one cold start on a recording node, then publish it ----
  await client.mountFresh();
  const rec = await node(['--record-profiles', '--record-window', String(Math.max(5, Math.ceil(LATENCY / 2)))]);
  await start(rec, 'record');
  const profiles = path.join(rec.sn.root, 'profiles');
  const t0 = Date.now();
  while (!(fs.existsSync(profiles) && fs.readdirSync(profiles).some((f) => f.endsWith('.json')))) {
    if (Date.now() - t0 > 30_000) throw new Error(`no profile recorded:\n${rec.sn.log()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  const recorded = fs.readdirSync(profiles).map((f) => path.join(profiles, f));
  log(await sh(process.execPath, [CLI, 'profile', 'show', recorded[0]!]).then((s) => s.split('\n').slice(0, 2).join('; ')));
  await sh(process.execPath, [
    CLI,
    'profile',
    'publish',
    '--repository-dir',
    pub.repositoryDir,
    '--repository',
    REPO,
    '--cvmfs-server',
    '--lock-file',
    path.join(work, 'convert.lock'),
    ...recorded,
  ]);
  await rec.stop();

  // ---- the runs ----
  const rows: Record<string, { total: number[]; run: number[]; bytes: number[]; requests: number[] }> = {};
  const add = (k: string, s: Awaited<ReturnType<typeof start>>) => {
    const r = (rows[k] ??= { total: [], run: [], bytes: [], requests: [] });
    r.total.push(s.total);
    r.run.push(s.run);
    r.bytes.push(s.bytes);
    r.requests.push(s.requests);
  };
  let whySlow = '';
  /** the snapshotter's own account of a hot layer it made (hot.ts), per row */
  const hot: Record<string, string[]> = {};
  /** what the snapshotter logged since the node's last hotOf (a running node logs several starts) */
  const seen = new Map<Node, number>();
  const hotOf = (k: string, nd: Node) => {
    const log = nd.sn.log();
    const lines = log.slice(seen.get(nd) ?? 0).split('\n');
    seen.set(nd, log.length);
    const mounted = lines.findLast((l) => l.includes('"hot layer mounted (its image)"'));
    if (mounted) {
      const h = JSON.parse(mounted) as Record<string, number>;
      const ahead = lines.findLast((l) => l.includes('"hot layer image read ahead"'));
      const aheadMs = ahead ? `, whole image read ahead in ${(JSON.parse(ahead) as Record<string, number>)['ms']} ms` : '';
      (hot[k] ??= []).push(`image ${h['ms']} ms (profile ${h['profileMs']}, cache check ${h['checkMs']}, head + mount ${h['mountMs']}${aheadMs})`);
      return;
    }
    const ready = lines.findLast((l) => l.includes('"hot layer ready"'));
    if (ready) {
      const h = JSON.parse(ready) as Record<string, number>;
      (hot[k] ??= []).push(`${h['ms']} ms (profile ${h['profileMs']}, cache check ${h['checkMs']}, copy ${h['copyMs']}, unpack after it ${h['unpackMs']})`);
      return;
    }
    // none made: why not (the pull's account)
    const pull = lines.findLast((l) => l.includes('"hot":'));
    if (pull) (hot[k] ??= []).push(`none: ${String((JSON.parse(pull) as Record<string, unknown>)['hot'])}`);
  };
  // a node that has been running (it made a hot layer before: its code is warm), pulling the image
  // again after it was removed (ctr images rm --sync: containerd's GC removes the snapshots, Cleanup
  // the hot layer no snapshot uses), on a cold client
  const running = await node();
  const forget = async () => {
    await running.ctd.ctr(['image', 'rm', '--sync', conv.thinName]);
    const masks = path.join(running.sn.root, 'masks');
    const t = Date.now();
    while (fs.readdirSync(masks).some((f) => f.startsWith('hot-'))) {
      if (Date.now() - t > 20_000) throw new Error(`the removed image's hot layer is still in ${masks}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  await client.mountFresh();
  await start(running, 'warmup');
  hotOf('warm-up', running);
  await forget();
  for (let i = 0; i < RUNS; i++) {
    const order = i % 2 === 0 ? (['none', 'profile', 'pack', 'files', 'gap'] as const) : (['gap', 'files', 'pack', 'profile', 'none'] as const);
    for (const which of order) {
      await client.mountFresh();
      const args = { none: ['--no-prefetch'], files: ['--hot-wait', '0'], pack: ['--no-hot-image'], profile: [], gap: [] }[which];
      const cold = await node(args);
      const label = {
        none: 'cold, no profile',
        profile: 'cold, profile (hot layer)',
        pack: 'cold, profile, pack unpacked',
        files: 'cold, profile, files one by one',
        gap: `cold, profile, run ${GAP} ms after pull`,
      }[which];
      add(label, await start(cold, `c${i}`, which === 'gap' ? GAP : 0));
      hotOf(label, cold);
      if (which === 'profile' && !whySlow) {
        await new Promise((r) => setTimeout(r, 1500)); // the trace is finished after the prefetch
        whySlow = await sh(process.execPath, [CLI, 'why-slow', '--root', cold.sn.root, `c${i}`]);
      }
      await cold.stop();
      if (which === 'profile') {
        await client.mountFresh();
        add('cold, profile, node running', await start(running, `r${i}`));
        hotOf('cold, profile, node running', running);
        await forget();
      }
      if (which === 'profile' || which === 'gap') {
        // the client holds the image, not the files (the container read them from the hot layer)
        const packOnly = await node();
        add('warm, only the pack in the cache', await start(packOnly, `wk${i}`));
        hotOf('warm, only the pack in the cache', packOnly);
        await packOnly.stop();
      }
      if (which === 'profile' || which === 'gap' || which === 'pack') {
        // a start that reads the files from the client (untimed): now its cache holds them
        const warming = await node(['--hot-wait', '0']);
        await start(warming, `ww${i}`);
        await warming.stop();
      }
      const warm = await node();
      add('warm', await start(warm, `w${i}`));
      hotOf('warm', warm);
      await warm.stop();
      if (which === 'files') {
        const plain = await node(['--hot-wait', '0']);
        add('warm, no hot layer (--hot-wait 0)', await start(plain, `wp${i}`));
        await plain.stop();
      }
    }
  }

  const warm = median(rows['warm']!.total);
  out(
    `${'row'.padEnd(36)} ${'pull+run s'.padStart(10)} ${'run s'.padStart(7)} ${'x warm'.padStart(7)} ${'downloads'.padStart(10)} ${'MB fetched'.padStart(10)}`,
  );
  for (const [k, r] of Object.entries(rows)) {
    out(
      `${k.padEnd(36)} ${median(r.total).toFixed(3).padStart(10)} ${median(r.run).toFixed(3).padStart(7)} ${(median(r.total) / warm).toFixed(2).padStart(7)} ${String(median(r.requests)).padStart(10)} ${(median(r.bytes) / 1e6).toFixed(1).padStart(10)}`,
    );
  }
  const ratio = (k: string) => (median(rows[k]!.total) / warm).toFixed(2);
  out(
    `cold with profile / warm: ${ratio('cold, profile (hot layer)')}, on a running node ${ratio('cold, profile, node running')} (target <= 1.3); its pack unpacked (--no-hot-image): ${ratio('cold, profile, pack unpacked')}; its files read one by one (--hot-wait 0): ${ratio('cold, profile, files one by one')}; run ${GAP} ms after the pull: ${ratio(`cold, profile, run ${GAP} ms after pull`)}; cold without / warm: ${ratio('cold, no profile')}`,
  );
  for (const [k, v] of Object.entries(hot)) out(`hot layer (snapshotter's log), ${k}: ${v.join('; ')}`);
  out(`one cold start with its profile (cvmfs-thin why-slow):\n${whySlow}`);
}

main()
  .then(() => cleanup(log))
  .catch(async (e: unknown) => {
    process.stderr.write(`${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    await cleanup(log);
    process.exit(1);
  });

/**
 * Docker volume plugin benchmark: the cost of a CVMFS volume (our plugin,
 * Mount + Unmount through dockerd 20.10) against a `local`-driver volume on
 * the same dockerd, interleaved, in the same run.
 *
 *   npx tsx bench/dockervolume.ts        (needs root, dockerd/containerd/runc, npm run build)
 *   BENCH_RUNS=31 BENCH_RAW=500 npx tsx bench/dockervolume.ts
 *
 * The repository is a stand-in directory tree (what the page cache serves; a
 * real CVMFS client adds its own first-access costs). Prints medians (p50)
 * and p90 of:
 *  - `docker run --rm -v VOL:/x IMAGE cat /x/README` (create, Mount, start, exit, Unmount, remove);
 *  - `docker start` + `docker stop` of an existing container using the volume (Mount + Unmount only);
 *  - the plugin alone: Mount + Unmount over its socket (no dockerd), and Get;
 * with the ratios cvmfs/local.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { type Dockerd, pluginCall, removeTestDir, shortTempDir, startDockerd } from '../test/graphdriver/harness.js';
import { loadBusybox, mountsBelow, startVolumePlugin, type VolumePlugin } from '../test/dockervolume/harness.js';

const RUNS = Math.min(Number(process.env['BENCH_RUNS'] ?? 15), 200);
const RAW = Math.min(Number(process.env['BENCH_RAW'] ?? 300), 10_000);

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const fmt = (ms: number) => `${ms.toFixed(ms < 10 ? 2 : 0).padStart(7)} ms`;

async function timed(f: () => Promise<unknown>): Promise<number> {
  const t0 = process.hrtime.bigint();
  await f();
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('needs root (dockerd, mounts)');
  const dir = shortTempDir('dvb-');
  const name = `cvmfsvolbench${process.pid}`;
  let plugin: VolumePlugin | undefined;
  let dockerd: Dockerd | undefined;
  try {
    const cvmfs = path.join(dir, 'cvmfs');
    mkdirSync(path.join(cvmfs, 'cms.cern.ch'), { recursive: true });
    writeFileSync(path.join(cvmfs, 'cms.cern.ch', 'README'), 'cms\n');
    const mounts = path.join(dir, 'state', 'mounts');
    plugin = await startVolumePlugin(name, [
      '--state-dir',
      path.join(dir, 'state'),
      '--cvmfs-root',
      cvmfs,
      '--allowed-repository',
      'cms.cern.ch',
      '--log-level',
      'warn',
    ]);
    dockerd = await startDockerd(path.join(dir, 'd'), 'overlay2', ['--log-level', 'warn']);
    const d = dockerd;
    const version = (await d.docker(['version', '--format', '{{.Server.Version}}'])).stdout.trim();
    const image = await loadBusybox(d, dir);
    await d.docker(['volume', 'create', '-d', name, 'cms.cern.ch']);
    await d.docker(['volume', 'create', 'benchlocal']);
    await d.docker(['run', '--rm', '--network', 'none', '-v', 'benchlocal:/x', image, 'sh', '-c', 'echo cms > /x/README']);
    const vols = { cvmfs: 'cms.cern.ch', local: 'benchlocal' } as const;

    // ---- docker run --rm with the volume
    const runOnce = async (vol: string) => {
      const out = (await d.docker(['run', '--rm', '--network', 'none', '-v', `${vol}:/x:ro`, image, 'cat', '/x/README'])).stdout;
      if (out !== 'cms\n') throw new Error(`container read ${JSON.stringify(out)} from ${vol}`);
    };
    await runOnce(vols.cvmfs);
    await runOnce(vols.local);
    const run = { cvmfs: [] as number[], local: [] as number[] };
    for (let i = 0; i < RUNS; i++) {
      run.cvmfs.push(await timed(() => runOnce(vols.cvmfs)));
      run.local.push(await timed(() => runOnce(vols.local)));
    }
    if (mountsBelow(mounts).length !== 0) throw new Error('a mount was left after run --rm');

    // ---- start + stop of an existing container (Mount + Unmount, no create/remove)
    await d.docker(['create', '--name', 'bc', '--network', 'none', '-v', `${vols.cvmfs}:/x:ro`, image, 'sleep', '1000']);
    await d.docker(['create', '--name', 'bl', '--network', 'none', '-v', `${vols.local}:/x:ro`, image, 'sleep', '1000']);
    const cycle = async (c: string) => {
      await d.docker(['start', c]);
      await d.docker(['stop', '-t', '0', c]);
    };
    await cycle('bc');
    await cycle('bl');
    const ss = { cvmfs: [] as number[], local: [] as number[] };
    for (let i = 0; i < RUNS; i++) {
      ss.cvmfs.push(await timed(() => cycle('bc')));
      ss.local.push(await timed(() => cycle('bl')));
    }
    await d.docker(['rm', 'bc', 'bl']);
    if (mountsBelow(mounts).length !== 0) throw new Error('a mount was left after stop');

    // ---- the plugin alone (what dockerd waits for per Mount/Unmount and per Get)
    const sock = plugin.socket;
    const raw: number[] = [];
    const get: number[] = [];
    for (let i = 0; i < RAW; i++) {
      const id = `${i.toString(16).padStart(8, '0')}${'b'.repeat(56)}`;
      raw.push(
        await timed(async () => {
          const m = await pluginCall(sock, 'VolumeDriver.Mount', { Name: 'cms.cern.ch', ID: id });
          const u = await pluginCall(sock, 'VolumeDriver.Unmount', { Name: 'cms.cern.ch', ID: id });
          if (m.status !== 200 || u.status !== 200) throw new Error(`plugin answered ${m.status}/${u.status}: ${m.body.toString()} ${u.body.toString()}`);
        }),
      );
      get.push(await timed(() => pluginCall(sock, 'VolumeDriver.Get', { Name: 'cms.cern.ch' })));
    }

    const line = (label: string, c: number[], l: number[]) =>
      `  ${label.padEnd(36)} cvmfs p50 ${fmt(median(c))} p90 ${fmt(pct(c, 90))} | local p50 ${fmt(median(l))} p90 ${fmt(pct(l, 90))} | ratio p50 ${(median(c) / median(l)).toFixed(2)}`;
    const out = [
      `dockerd ${version} (overlay2), busybox image, ${RUNS} interleaved rounds per dockerd measure, ${RAW} raw plugin rounds`,
      '',
      "through dockerd (cvmfs = our plugin, local = dockerd's local driver)",
      line('docker run --rm -v VOL:/x:ro cat', run.cvmfs, run.local),
      line('docker start + stop (Mount+Unmount)', ss.cvmfs, ss.local),
      '',
      'the plugin alone, over its socket (first Mount binds, last Unmount unmounts)',
      `  Mount + Unmount                      p50 ${fmt(median(raw))} p90 ${fmt(pct(raw, 90))}`,
      `  Get                                  p50 ${fmt(median(get))} p90 ${fmt(pct(get, 90))}`,
    ];
    process.stdout.write(`${out.join('\n')}\n`);
  } finally {
    if (dockerd) {
      await dockerd.docker(['rm', '-f', 'bc', 'bl'], { allowFail: true });
      await dockerd.stop();
    }
    await plugin?.stop();
    removeTestDir(dir);
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});

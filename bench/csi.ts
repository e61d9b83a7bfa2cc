/**
 * CSI node plugin benchmark (root): NodePublishVolume + NodeUnpublishVolume
 * over the plugin's gRPC socket against doing the same mounts by hand, in the
 * same run, interleaved.
 *
 *   npx tsx bench/csi.ts                  (needs root)
 *   BENCH_RUNS=300 BENCH_CONCURRENT=50 npx tsx bench/csi.ts
 *
 * - ours: publish of a repository (host backend: bind of <cvmfs>/<repo> on
 *   the plugin's mount point, then a read-only bind on the target, journal
 *   fsync) and unpublish (both unmounted, target removed), one gRPC call each;
 * - baseline "syscalls": bind + remount ro + umount of the same directory on
 *   the same target from this process (the floor: no IPC, no state);
 * - baseline "mount(8)": `mount --bind` + `mount -o remount,bind,ro` +
 *   `umount` executed as programs, which is what Go CSI drivers such as
 *   cvmfs-csi do through k8s.io/mount-utils.
 * Then BENCH_CONCURRENT publishes of one repository to as many targets at once:
 * all must succeed with exactly one backend mount, and all unpublish cleanly.
 * The plugin runs in this process (the client's gRPC CPU is counted too).
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { readMountinfo } from '../src/core/fs/fsutil.js';
import { silentLogger } from '../src/core/telemetry/log.js';
import { MNT_DETACH, MS_BIND, MS_RDONLY, MS_REMOUNT, mount, umount } from '../src/core/host/sys.js';
import { startCsi } from '../src/csi/server.js';
import { CsiClient, mountCap } from '../test/csi/kubelet.js';

const RUNS = Math.min(Number(process.env['BENCH_RUNS'] ?? 200), 5000);
const CONCURRENT = Math.min(Number(process.env['BENCH_CONCURRENT'] ?? 50), 1000);
const REPO = 'bench.cern.ch';

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};
const ms = (x: number) => `${x.toFixed(3).padStart(8)} ms`;

async function timed(f: () => unknown): Promise<number> {
  const t0 = process.hrtime.bigint();
  await f();
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('needs root (bind mounts)');
  const dir = mkdtempSync(path.join(os.tmpdir(), 'cvmfs-thin-csi-bench-'));
  const cvmfs = path.join(dir, 'cvmfs');
  const repo = path.join(cvmfs, REPO);
  mkdirSync(repo, { recursive: true });
  writeFileSync(path.join(repo, 'README'), 'bench\n');
  const socket = path.join(dir, 'csi.sock');
  const state = path.join(dir, 'state');
  const csi = await startCsi({
    endpoint: `unix://${socket}`,
    driverName: 'cvmfs.csi.cern.ch',
    nodeId: 'bench',
    stateDir: state,
    cvmfsRoot: cvmfs,
    allow: ['*'],
    backend: 'host',
    checkIntervalMs: 0,
    log: silentLogger(),
  });
  const c = new CsiClient(socket);
  const pods = path.join(dir, 'pods');
  const target = (i: number) => path.join(pods, `p${i}`, 'mount');
  const req = (t: string) => ({ volumeId: 'pv-bench', targetPath: t, volumeCapability: mountCap(), readonly: true, volumeContext: { repository: REPO } });
  const ourMounts = () => readMountinfo().filter((m) => m.mountPoint.startsWith(`${dir}/`)).length;
  try {
    mkdirSync(path.join(pods, 'p0'), { recursive: true });
    const t = target(0);
    const ours: number[] = [];
    const sysBase: number[] = [];
    const execBase: number[] = [];
    // warm-up: module loading, first journal write, page cache
    for (let i = 0; i < 5; i++) {
      await c.publish(req(t));
      await c.unpublish('pv-bench', t);
    }
    for (let i = 0; i < RUNS; i++) {
      ours.push(
        await timed(async () => {
          await c.publish(req(t));
          await c.unpublish('pv-bench', t);
        }),
      );
      mkdirSync(t);
      sysBase.push(
        await timed(() => {
          mount(repo, t, null, MS_BIND, null);
          mount('', t, null, MS_BIND | MS_REMOUNT | MS_RDONLY, null);
          umount(t);
        }),
      );
      if (i % 4 === 0) {
        execBase.push(
          await timed(() => {
            execFileSync('mount', ['--bind', repo, t]);
            execFileSync('mount', ['-o', 'remount,bind,ro', t]);
            execFileSync('umount', [t]);
          }),
        );
      }
      rmdirSync(t);
    }
    if (ourMounts() !== 0) throw new Error(`${ourMounts()} mounts left after the latency loop`);
    const p50 = pct(ours, 50);
    console.log(`CSI publish+unpublish, ${RUNS} runs (p50 / p90):`);
    console.log(`  ours (gRPC, 2 binds, journal)   ${ms(p50)} / ${ms(pct(ours, 90))}`);
    console.log(`  bind+ro+umount syscalls        ${ms(pct(sysBase, 50))} / ${ms(pct(sysBase, 90))}   ratio ours/this ${(p50 / pct(sysBase, 50)).toFixed(1)}x`);
    console.log(
      `  mount(8)+umount(8) execs (${execBase.length})  ${ms(pct(execBase, 50))} / ${ms(pct(execBase, 90))}   ratio ours/this ${(p50 / pct(execBase, 50)).toFixed(2)}x`,
    );

    // concurrent publishes of one repository
    for (let i = 1; i <= CONCURRENT; i++) mkdirSync(path.join(pods, `p${i}`), { recursive: true });
    const targets = Array.from({ length: CONCURRENT }, (_, i) => target(i + 1));
    let failures = 0;
    const wall = await timed(() => Promise.all(targets.map((x) => c.publish(req(x)).catch(() => failures++))));
    const backend = readMountinfo().filter((m) => m.mountPoint.startsWith(`${state}/mounts/`)).length;
    const bound = targets.filter((x) => readMountinfo().some((m) => m.mountPoint === x)).length;
    const down = await timed(() => Promise.all(targets.map((x) => c.unpublish('pv-bench', x))));
    console.log(
      `${CONCURRENT} concurrent publishes of ${REPO}: ${CONCURRENT - failures} succeeded, ${bound} targets bound, ${backend} backend mount(s); ${wall.toFixed(1)} ms for all, unpublish of all ${down.toFixed(1)} ms; ${ourMounts()} mounts left`,
    );
    if (failures || backend !== 1 || bound !== CONCURRENT || ourMounts() !== 0) process.exitCode = 1;
  } finally {
    c.close();
    await csi.stop();
    for (const m of readMountinfo()
      .filter((x) => x.mountPoint.startsWith(`${dir}/`))
      .reverse()) {
      try {
        umount(m.mountPoint, MNT_DETACH);
      } catch {
        /* gone */
      }
    }
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();

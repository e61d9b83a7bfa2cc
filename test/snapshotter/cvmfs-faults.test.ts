/**
 * `cvmfs-thin snapshotter` as a process over a real FUSE client that dies or
 * stalls: a fuse-overlayfs mount stands in for /cvmfs/unpacked.cern.ch
 * (test/helpers/fuse-standin.ts), containers are real overlays mounted the
 * way containerd mounts them. `kill -9` of the client: Prepare fails at once
 * with Unavailable, the running container is reported (metric, log, readyz),
 * a client mounted again serves new containers. `kill -STOP`: Prepare and
 * Mounts fail within --cvmfs-timeout while other requests are answered, and
 * SIGTERM still stops the daemon. Needs root and fuse-overlayfs.
 */
import { status } from '@grpc/grpc-js';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { addLayer, thinJson } from '../helpers/cvmfs-tree.js';
import { type Daemon, startDaemon } from '../helpers/daemon.js';
import { needs, tempDir } from '../helpers/env.js';
import { errnoOf, failureOf, FuseStandin } from '../helpers/fuse-standin.js';
import type { Mount } from '../helpers/grpc.js';
import { mountAll, unmountAll } from '../helpers/mount.js';
import { httpGet, scrape } from '../e2e/metrics-scrape.js';

const TIMEOUT_S = 2;

async function failure(p: Promise<unknown>): Promise<{ code: number; details: string; ms: number }> {
  const { error, ms } = await failureOf(p);
  const err = error as { code: number; details: string };
  return { code: err.code, details: err.details, ms };
}

describe.skipIf(needs({ root: true, binaries: ['fuse-overlayfs'] }))('snapshotter daemon over a CVMFS client that dies or stalls (real FUSE)', () => {
  const base = tempDir('sn-cvmfs-faults-');
  let n = 0;
  let dir: string;
  let tree: string;
  let mp: string;
  let msock: string;
  let d: Daemon;
  const fuses: FuseStandin[] = [];
  const rootfs: string[] = [];

  beforeEach(async () => {
    dir = path.join(base, String(n++));
    tree = path.join(dir, 'tree');
    mp = path.join(dir, 'cvmfs', 'unpacked.cern.ch');
    msock = path.join(dir, 'metrics.sock');
    mkdirSync(tree, { recursive: true });
    mkdirSync(mp, { recursive: true });
    addLayer(tree, 'base', { 'etc/hello': 'hello\n', 'bin/x': 'x' }, { converter: true });
    fuses.push(await FuseStandin.mount(tree, mp));
    d = await startDaemon(
      [
        '--root',
        path.join(dir, 'root'),
        '--cvmfs-root',
        path.join(dir, 'cvmfs'),
        '--cvmfs-timeout',
        String(TIMEOUT_S),
        '--check-interval',
        '1',
        '--metrics-address',
        msock,
        '--log-level',
        'info',
      ],
      path.join(dir, 'sn.sock'),
    );
  });
  afterEach(async () => {
    while (rootfs.length) unmountAll(rootfs.pop()!);
    while (fuses.length) await fuses.pop()!.cleanup();
    if (d.proc.exitCode === null) await d.stop('SIGKILL');
  });

  /** Commit a thin image `name` over the tree's layer (the manifest names paths under the FUSE mount). */
  async function thinImage(name: string): Promise<void> {
    const [m] = await d.client.prepare(`${name}-extract`);
    const layer = addLayer(tree, 'base', { 'etc/hello': 'hello\n', 'bin/x': 'x' }, { converter: true });
    writeFileSync(path.join(m!.source, 'thin.json'), thinJson('unpacked.cern.ch', [layer]));
    await d.client.commit(name, `${name}-extract`);
  }

  /** Mount a container's snapshot as containerd does. */
  function run(ms: Mount[], name: string): string {
    const t = path.join(dir, 'containers', name);
    mkdirSync(t, { recursive: true });
    mountAll(
      ms.map((m) => ({ type: m.type, source: m.source, options: m.options })),
      t,
    );
    rootfs.push(t);
    return t;
  }

  async function until<T>(f: () => Promise<T>, ok: (v: T) => boolean, ms = 5000): Promise<T> {
    const t0 = Date.now();
    for (;;) {
      const v = await f();
      if (ok(v) || Date.now() - t0 > ms) return v;
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  it('a killed client: Prepare fails at once; the running container is reported; after a new client is mounted new containers work', async () => {
    await thinImage('img');
    const c1 = run(await d.client.prepare('ctr1', 'img'), 'ctr1');
    expect(readFileSync(path.join(c1, 'etc/hello'), 'utf8')).toBe('hello\n');

    await fuses[0]!.kill9();
    // what a dead cvmfs2 does to a running container
    expect(errnoOf(() => readFileSync(path.join(c1, 'etc/hello')))).toBe('ENOTCONN');
    const f = await failure(d.client.prepare('ctr2', 'img'));
    expect(f.code).toBe(status.UNAVAILABLE);
    expect(f.details).toContain('of snapshot ctr2 is not available (its CVMFS client is not connected)');
    expect(f.ms).toBeLessThan(1000);
    expect((await failure(d.client.view('v', 'img'))).code).toBe(status.UNAVAILABLE);
    expect((await failure(d.client.mounts('ctr1'))).code).toBe(status.UNAVAILABLE);
    expect((await d.client.stat('ctr1')).name).toBe('ctr1');

    // the check (every second here) finds ctr1's overlay; the daemon stays healthy, not ready
    const v = await until(
      () => scrape(msock),
      (s) => s('cvmfs_thin_broken_mounts', { daemon: 'snapshotter', reason: 'not-connected' }) === 1,
    );
    expect(v('cvmfs_thin_broken_mounts', { daemon: 'snapshotter', reason: 'not-connected' })).toBe(1);
    expect(v('cvmfs_thin_cvmfs_unavailable_total', { daemon: 'snapshotter' })).toBe(3);
    expect(d.output()).toMatch(new RegExp(`"mountPoint":"${c1}","snapshot":"ctr1","reason":"not-connected".*restart the container`));
    expect((await httpGet(msock, '/healthz')).status).toBe(200);
    const r = await httpGet(msock, '/readyz');
    expect(r.status).toBe(503);
    expect(JSON.parse(r.body).checks.cvmfs).toContain('ENOTCONN');

    // CVMFS 2.12's watchdog unmounts a killed client's mount (lazily) about 2 s later: the path is an
    // empty directory until autofs or the admin mounts a new client; ctr1 keeps the dead mount
    fuses[0]!.detach();
    const gone = await failure(d.client.prepare('ctr2', 'img'));
    expect(gone.code).toBe(status.UNAVAILABLE);
    expect(gone.details).toContain('of snapshot ctr2 is not available (is CVMFS mounted?)');
    expect(errnoOf(() => readdirSync(c1))).toBe('ENOTCONN');
    await new Promise((r2) => setTimeout(r2, 1500));
    expect((await scrape(msock))('cvmfs_thin_broken_mounts', { daemon: 'snapshotter', reason: 'not-connected' })).toBe(1);
    // a new client: new containers get it through the same short links
    fuses.push(await FuseStandin.mount(tree, mp));
    const c2 = run(await d.client.prepare('ctr2', 'img'), 'ctr2');
    expect(readFileSync(path.join(c2, 'etc/hello'), 'utf8')).toBe('hello\n');
    expect(readdirSync(path.join(c2, 'bin'))).toEqual(['x']);
    // ctr1 keeps the dead mount for good and is still reported; ctr2 is not
    expect(errnoOf(() => readFileSync(path.join(c1, 'etc/hello')))).toBe('ENOTCONN');
    await new Promise((r2) => setTimeout(r2, 1500));
    expect((await scrape(msock))('cvmfs_thin_broken_mounts', { daemon: 'snapshotter', reason: 'not-connected' })).toBe(1);
    expect((await httpGet(msock, '/readyz')).status).toBe(200);
    // restarting the container (a new mount of its snapshot) heals it
    unmountAll(rootfs.shift()!);
    const again = run(await d.client.mounts('ctr1'), 'ctr1-again');
    expect(readFileSync(path.join(again, 'etc/hello'), 'utf8')).toBe('hello\n');
    await until(
      () => scrape(msock),
      (s) => s('cvmfs_thin_broken_mounts', { daemon: 'snapshotter', reason: 'not-connected' }) === 0,
    );
    expect((await scrape(msock))('cvmfs_thin_broken_mounts', { daemon: 'snapshotter', reason: 'not-connected' })).toBe(0);
  });

  it('a stalled client: Prepare and Mounts fail within --cvmfs-timeout, other requests are answered meanwhile, SIGTERM still stops the daemon', async () => {
    await thinImage('img');
    await d.client.prepare('ctr1', 'img');
    await d.client.prepare('local');

    fuses[0]!.stop();
    const t0 = Date.now();
    const stalled = [
      failure(d.client.prepare('ctr2', 'img')),
      ...Array.from({ length: 8 }, (_, i) => failure(d.client.prepare(`many${i}`, 'img'))),
      failure(d.client.mounts('ctr1')),
    ];
    // meanwhile: reads, and writes through the journal (a local Prepare, Commit, Remove)
    await new Promise((r) => setTimeout(r, 200));
    const t1 = Date.now();
    expect((await d.client.stat('ctr1')).name).toBe('ctr1');
    expect((await d.client.list()).map((i) => i.name)).toContain('img');
    await d.client.commit('local-c', 'local');
    await d.client.prepare('local2', 'local-c');
    await d.client.remove('local2');
    expect(Date.now() - t1).toBeLessThan(1000);
    const fs = await Promise.all(stalled);
    for (const f of fs) {
      expect(f.code).toBe(status.UNAVAILABLE);
      expect(f.details).toContain(`CVMFS at ${mp} did not answer within ${TIMEOUT_S} s (cvmfs-timeout)`);
    }
    const slowest = Math.max(...fs.map((f) => f.ms));
    expect(slowest).toBeGreaterThanOrEqual(TIMEOUT_S * 1000 - 50);
    expect(slowest).toBeLessThan(TIMEOUT_S * 1000 + 1000);
    // known to stall: at once
    const fast = await failure(d.client.prepare('ctr3', 'img'));
    expect(fast.code).toBe(status.UNAVAILABLE);
    expect(fast.details).toMatch(/has not answered for \d/);
    expect(fast.ms).toBeLessThan(200);
    const v = await scrape(msock);
    expect(v('cvmfs_thin_cvmfs_stalls_total', { daemon: 'snapshotter' })).toBeGreaterThanOrEqual(1);
    expect(v('cvmfs_thin_cvmfs_unavailable_total', { daemon: 'snapshotter' })).toBe(11);
    const r = await httpGet(msock, '/readyz');
    expect(r.status).toBe(503);
    expect(JSON.parse(r.body).checks.cvmfs).toContain(`does not answer within ${TIMEOUT_S} s`);
    expect(Date.now() - t0).toBeLessThan(15_000);

    // it answers again: so does the snapshotter
    fuses[0]!.cont();
    await new Promise((r2) => setTimeout(r2, 200));
    const c2 = run(await d.client.prepare('ctr2', 'img'), 'ctr2');
    expect(readFileSync(path.join(c2, 'etc/hello'), 'utf8')).toBe('hello\n');

    // stalled again, with a probe stuck in the helper: SIGTERM stops the daemon all the same
    fuses[0]!.stop();
    const stuck = failure(d.client.prepare('ctr4', 'img'));
    await new Promise((r2) => setTimeout(r2, 300));
    const t2 = Date.now();
    expect(await d.stop('SIGTERM')).toBe(0);
    expect(Date.now() - t2).toBeLessThan(5000);
    expect((await stuck).code).toBe(status.UNAVAILABLE);
  });
});

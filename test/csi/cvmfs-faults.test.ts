/**
 * `cvmfs-thin csi` as a process (the built CLI) over a real FUSE client that
 * stalls or dies: a fuse-overlayfs mount stands in for /cvmfs/cms.cern.ch
 * (test/helpers/fuse-standin.ts), /cvmfs/atlas.cern.ch is a plain directory.
 * `kill -STOP`: NodeStage and NodePublish fail with UNAVAILABLE within
 * --cvmfs-timeout, naming the repository and the deadline, while the other
 * RPCs are answered, and NodeGetVolumeStats says the volume is stalled;
 * after `kill -CONT` it works again. `kill -9`, then a new client on the
 * host: the check mounts our mount again and binds the staging path and the
 * pod's target (bound from the staging path) again. Needs root and
 * fuse-overlayfs. The test never touches a stopped mount itself.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { status } from '@grpc/grpc-js';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CLI, needs, tempDir } from '../helpers/env.js';
import { errnoOf, FuseStandin } from '../helpers/fuse-standin.js';
import { unmountBelow } from '../graphdriver/harness.js';
import { code, CsiClient, KubeletPaths, message, mountCap, mountInline, mountPv } from './kubelet.js';

const TIMEOUT_S = 1;

interface Plugin {
  proc: ChildProcess;
  client: CsiClient;
  output: () => string;
  stop(signal: NodeJS.Signals): Promise<number | null>;
}

async function startPlugin(args: string[], socket: string): Promise<Plugin> {
  const proc = spawn(process.execPath, [CLI, 'csi', '--endpoint', `unix://${socket}`, '--node-id', 'node-faults', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => proc.once('exit', (c) => r(c)));
  const t0 = Date.now();
  while (!out.includes('csi plugin serving')) {
    if (proc.exitCode !== null) throw new Error(`csi plugin exited with ${proc.exitCode}:\n${out}`);
    if (Date.now() - t0 > 30_000) {
      proc.kill('SIGKILL');
      throw new Error(`csi plugin did not start:\n${out}`);
    }
    await sleep(50);
  }
  const client = new CsiClient(socket);
  return {
    proc,
    client,
    output: () => out,
    async stop(signal) {
      client.close();
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      return exited;
    },
  };
}

async function timed(p: Promise<unknown>): Promise<{ code: number; message: string; ms: number }> {
  const t0 = Date.now();
  const [c, m] = await Promise.all([code(p), message(p)]);
  return { code: c, message: m, ms: Date.now() - t0 };
}

async function until(f: () => boolean, ms = 8000): Promise<boolean> {
  const t0 = Date.now();
  while (!f()) {
    if (Date.now() - t0 > ms) return false;
    await sleep(100);
  }
  return true;
}

describe.skipIf(needs({ root: true, binaries: ['fuse-overlayfs'] }))('CSI plugin over a CVMFS client that stalls or dies (real FUSE)', () => {
  const base = tempDir('csi-cvmfs-faults-');
  let n = 0;
  let dir: string;
  let tree: string;
  let cvmfs: string;
  let k: KubeletPaths;
  let plugin: Plugin | undefined;
  const fuses: FuseStandin[] = [];

  beforeEach(async () => {
    dir = path.join(base, String(n++));
    tree = path.join(dir, 'tree');
    cvmfs = path.join(dir, 'cvmfs');
    k = new KubeletPaths(path.join(dir, 'kubelet'));
    mkdirSync(path.join(tree, 'etc'), { recursive: true });
    writeFileSync(path.join(tree, 'etc', 'hello'), 'hello from cms\n');
    mkdirSync(path.join(cvmfs, 'cms.cern.ch'), { recursive: true });
    mkdirSync(path.join(cvmfs, 'atlas.cern.ch'), { recursive: true });
    writeFileSync(path.join(cvmfs, 'atlas.cern.ch', 'README'), 'atlas\n');
    fuses.push(await FuseStandin.mount(tree, path.join(cvmfs, 'cms.cern.ch')));
    plugin = await startPlugin(
      ['--state-dir', path.join(dir, 'state'), '--cvmfs-root', cvmfs, '--allowed-repository', '*.cern.ch', '--cvmfs-timeout', String(TIMEOUT_S), '--check-interval', '1', '--log-level', 'debug'],
      path.join(dir, 'csi.sock'),
    );
  });

  afterEach(async () => {
    if (plugin) await plugin.stop('SIGKILL');
    plugin = undefined;
    while (fuses.length) await fuses.pop()!.cleanup();
    unmountBelow(dir);
  });

  it('a stalled client: NodeStage and NodePublish fail with UNAVAILABLE within --cvmfs-timeout, other RPCs are answered, stats say stalled; it works again after kill -CONT', async () => {
    const c = plugin!.client;
    const cms = await mountPv(c, k, { handle: 'pv-cms', attrs: { repository: 'cms.cern.ch' } }, { name: 'p1', uid: 'uid-1' });
    expect(readFileSync(path.join(cms.target, 'etc', 'hello'), 'utf8')).toBe('hello from cms\n');
    const atlas = await mountPv(c, k, { handle: 'pv-atlas', attrs: { repository: 'atlas.cern.ch' } }, { name: 'p2', uid: 'uid-2' });

    fuses[0]!.stop();
    const stalled = [
      timed(c.stage({ volumeId: 'pv-cms-2', stagingTargetPath: k.staging('pv-cms-2'), volumeCapability: mountCap(), volumeContext: { repository: 'cms.cern.ch' } })),
      timed(mountInline(c, k, { repository: 'cms.cern.ch' }, { name: 'p3', uid: 'uid-3' })),
    ];
    await sleep(100);
    const t1 = Date.now();
    expect((await c.nodeCapabilities()).capabilities).toHaveLength(3);
    expect((await c.nodeInfo()).nodeId).toBe('node-faults');
    expect((await c.probe()).ready).toBe(true);
    expect(await code(c.unpublish('pv-atlas', atlas.target))).toBe(status.OK);
    expect(await code(c.unstage('pv-atlas', atlas.staging))).toBe(status.OK);
    expect(Date.now() - t1).toBeLessThan(500);
    const fs = await Promise.all(stalled);
    for (const f of fs) {
      expect(f.code).toBe(status.UNAVAILABLE);
      expect(f.message).toMatch(/^repository cms\.cern\.ch: CVMFS at \S+ (did not answer within 1 s \(cvmfs-timeout\)|has not answered for [\d.]+ s \(deadline 1 s, cvmfs-timeout\)): the CVMFS client is stalled \(server or proxy unreachable\?\)$/);
    }
    const slowest = Math.max(...fs.map((f) => f.ms));
    expect(slowest).toBeGreaterThanOrEqual(TIMEOUT_S * 1000 - 50);
    expect(slowest).toBeLessThan(TIMEOUT_S * 1000 + 1000);
    process.stderr.write(`[figure] CSI NodeStage/NodePublish on a stalled repository failed after ${slowest} ms (cvmfs-timeout ${TIMEOUT_S} s)\n`);
    const st = await timed(c.stats('pv-cms', cms.target));
    expect(st.ms).toBeLessThan(TIMEOUT_S * 1000 + 1000);
    const cond = (await c.stats('pv-cms', cms.target)).volumeCondition;
    expect(cond?.abnormal).toBe(true);
    expect(cond?.message).toBe(`${cms.target} does not answer within 1 s (cvmfs-timeout): the CVMFS client serving cms.cern.ch is stalled (server or proxy unreachable?)`);

    fuses[0]!.cont();
    let again = await timed(c.stage({ volumeId: 'pv-cms-2', stagingTargetPath: k.staging('pv-cms-2'), volumeCapability: mountCap(), volumeContext: { repository: 'cms.cern.ch' } }));
    for (let i = 0; i < 30 && again.code !== status.OK; i++) {
      await sleep(100);
      again = await timed(c.stage({ volumeId: 'pv-cms-2', stagingTargetPath: k.staging('pv-cms-2'), volumeCapability: mountCap(), volumeContext: { repository: 'cms.cern.ch' } }));
    }
    expect(again.code).toBe(status.OK);
    expect(readFileSync(path.join(k.staging('pv-cms-2'), 'etc', 'hello'), 'utf8')).toBe('hello from cms\n');
    expect((await c.stats('pv-cms', cms.target)).volumeCondition?.abnormal).toBe(false);
    // a stall is not a dead client: nothing was mounted again
    expect(plugin!.output()).not.toContain('mounting it again');

    // stalled again: taking volumes away needs no answer from CVMFS
    fuses[0]!.stop();
    const t2 = Date.now();
    expect(await code(c.unpublish('pv-cms', cms.target))).toBe(status.OK);
    expect(await code(c.unstage('pv-cms', cms.staging))).toBe(status.OK);
    expect(await code(c.unstage('pv-cms-2', k.staging('pv-cms-2')))).toBe(status.OK);
    expect(Date.now() - t2).toBeLessThan(1000);
    expect(await plugin!.stop('SIGTERM')).toBe(0);
  });

  it('a killed client, then a new one on the host: the check mounts our mount again and binds the staging path and the target again', async () => {
    const c = plugin!.client;
    const cms = await mountPv(c, k, { handle: 'pv-cms', attrs: { repository: 'cms.cern.ch' } }, { name: 'p1', uid: 'uid-1' });
    const hello = path.join(cms.target, 'etc', 'hello');
    expect(readFileSync(hello, 'utf8')).toBe('hello from cms\n');

    await fuses[0]!.kill9();
    expect(errnoOf(() => readFileSync(hello))).toBe('ENOTCONN');
    const st = await c.stats('pv-cms', cms.target);
    expect(st.volumeCondition?.abnormal).toBe(true);
    expect(st.volumeCondition?.message).toMatch(/transport endpoint is not connected/);
    const dead = await timed(c.stage({ volumeId: 'pv-cms-2', stagingTargetPath: k.staging('pv-cms-2'), volumeCapability: mountCap(), volumeContext: { repository: 'cms.cern.ch' } }));
    expect(dead.code).toBe(status.UNAVAILABLE);
    expect(dead.message).toMatch(/repository cms\.cern\.ch: \S+ is broken on the host \(Transport endpoint is not connected/);
    expect(dead.ms).toBeLessThan(500);

    fuses[0]!.detach();
    fuses.push(await FuseStandin.mount(tree, path.join(cvmfs, 'cms.cern.ch')));
    expect(await until(() => errnoOf(() => readFileSync(hello)) === 'ok')).toBe(true);
    expect(readFileSync(hello, 'utf8')).toBe('hello from cms\n');
    expect(readFileSync(path.join(cms.staging, 'etc', 'hello'), 'utf8')).toBe('hello from cms\n');
    const rebound = plugin!.output().split('\n').filter((l) => l.includes('target on a broken mount bound again'));
    expect(rebound.some((l) => l.includes(`"target":"${cms.staging}"`))).toBe(true);
    expect(rebound.some((l) => l.includes(`"target":"${cms.target}"`))).toBe(true);
    expect(plugin!.output()).toContain('broken repository mount repaired');
    expect((await c.stats('pv-cms', cms.target)).volumeCondition?.abnormal).toBe(false);
    expect(await code(c.unpublish('pv-cms', cms.target))).toBe(status.OK);
    expect(await code(c.unstage('pv-cms', cms.staging))).toBe(status.OK);
  });
});

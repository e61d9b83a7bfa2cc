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
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { status } from '@grpc/grpc-js';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { needs } from '../helpers/env.js';
import { errnoOf, StandinCvmfs, until } from '../helpers/fuse-standin.js';
import { code, type CsiPlugin, KubeletPaths, message, mountCap, mountInline, mountPv, startCsiPlugin } from './kubelet.js';

const TIMEOUT_S = 1;

async function timed(p: Promise<unknown>): Promise<{ code: number; message: string; ms: number }> {
  const t0 = Date.now();
  const [c, m] = await Promise.all([code(p), message(p)]);
  return { code: c, message: m, ms: Date.now() - t0 };
}

describe.skipIf(needs({ root: true, binaries: ['fuse-overlayfs'] }))('CSI plugin over a CVMFS client that stalls or dies (real FUSE)', () => {
  const host = new StandinCvmfs('csi-cvmfs-faults-');
  let k: KubeletPaths;
  let plugin: CsiPlugin | undefined;

  beforeEach(async () => {
    await host.setUp();
    k = new KubeletPaths(path.join(host.dir, 'kubelet'));
    plugin = await startCsiPlugin(
      [
        '--state-dir',
        path.join(host.dir, 'state'),
        '--cvmfs-root',
        host.cvmfs,
        '--allowed-repository',
        '*.cern.ch',
        '--cvmfs-timeout',
        String(TIMEOUT_S),
        '--check-interval',
        '1',
        '--log-level',
        'debug',
      ],
      path.join(host.dir, 'csi.sock'),
      'node-faults',
    );
  });

  afterEach(async () => {
    if (plugin) await plugin.stop('SIGKILL');
    plugin = undefined;
    await host.tearDown();
  });

  it('a stalled client: NodeStage and NodePublish fail with UNAVAILABLE within --cvmfs-timeout, other RPCs are answered, stats say stalled; it works again after kill -CONT', async () => {
    const c = plugin!.client;
    const cms = await mountPv(c, k, { handle: 'pv-cms', attrs: { repository: 'cms.cern.ch' } }, { name: 'p1', uid: 'uid-1' });
    expect(readFileSync(path.join(cms.target, 'etc', 'hello'), 'utf8')).toBe('hello from cms\n');
    const atlas = await mountPv(c, k, { handle: 'pv-atlas', attrs: { repository: 'atlas.cern.ch' } }, { name: 'p2', uid: 'uid-2' });

    host.cms.stop();
    const stalled = [
      timed(
        c.stage({ volumeId: 'pv-cms-2', stagingTargetPath: k.staging('pv-cms-2'), volumeCapability: mountCap(), volumeContext: { repository: 'cms.cern.ch' } }),
      ),
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
      expect(f.message).toMatch(
        /^repository cms\.cern\.ch: CVMFS at \S+ (did not answer within 1 s \(cvmfs-timeout\)|has not answered for [\d.]+ s \(deadline 1 s, cvmfs-timeout\)): the CVMFS client is stalled \(server or proxy unreachable\?\)$/,
      );
    }
    const slowest = Math.max(...fs.map((f) => f.ms));
    expect(slowest).toBeGreaterThanOrEqual(TIMEOUT_S * 1000 - 50);
    expect(slowest).toBeLessThan(TIMEOUT_S * 1000 + 1000);
    process.stderr.write(`[figure] CSI NodeStage/NodePublish on a stalled repository failed after ${slowest} ms (cvmfs-timeout ${TIMEOUT_S} s)\n`);
    const st = await timed(c.stats('pv-cms', cms.target));
    expect(st.ms).toBeLessThan(TIMEOUT_S * 1000 + 1000);
    const cond = (await c.stats('pv-cms', cms.target)).volumeCondition;
    expect(cond?.abnormal).toBe(true);
    expect(cond?.message).toBe(
      `${cms.target} does not answer within 1 s (cvmfs-timeout): the CVMFS client serving cms.cern.ch is stalled (server or proxy unreachable?)`,
    );

    host.cms.cont();
    let again = await timed(
      c.stage({ volumeId: 'pv-cms-2', stagingTargetPath: k.staging('pv-cms-2'), volumeCapability: mountCap(), volumeContext: { repository: 'cms.cern.ch' } }),
    );
    for (let i = 0; i < 30 && again.code !== status.OK; i++) {
      await sleep(100);
      again = await timed(
        c.stage({ volumeId: 'pv-cms-2', stagingTargetPath: k.staging('pv-cms-2'), volumeCapability: mountCap(), volumeContext: { repository: 'cms.cern.ch' } }),
      );
    }
    expect(again.code).toBe(status.OK);
    expect(readFileSync(path.join(k.staging('pv-cms-2'), 'etc', 'hello'), 'utf8')).toBe('hello from cms\n');
    expect((await c.stats('pv-cms', cms.target)).volumeCondition?.abnormal).toBe(false);
    // a stall is not a dead client: nothing was mounted again
    expect(plugin!.output()).not.toContain('mounting it again');

    // stalled again: taking volumes away needs no answer from CVMFS
    host.cms.stop();
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

    await host.cms.kill9();
    expect(errnoOf(() => readFileSync(hello))).toBe('ENOTCONN');
    const st = await c.stats('pv-cms', cms.target);
    expect(st.volumeCondition?.abnormal).toBe(true);
    expect(st.volumeCondition?.message).toMatch(/transport endpoint is not connected/);
    const dead = await timed(
      c.stage({ volumeId: 'pv-cms-2', stagingTargetPath: k.staging('pv-cms-2'), volumeCapability: mountCap(), volumeContext: { repository: 'cms.cern.ch' } }),
    );
    expect(dead.code).toBe(status.UNAVAILABLE);
    expect(dead.message).toMatch(/repository cms\.cern\.ch: \S+ is broken on the host \(Transport endpoint is not connected/);
    expect(dead.ms).toBeLessThan(500);

    await host.newClient();
    expect(await until(() => errnoOf(() => readFileSync(hello)) === 'ok')).toBe(true);
    expect(readFileSync(hello, 'utf8')).toBe('hello from cms\n');
    expect(readFileSync(path.join(cms.staging, 'etc', 'hello'), 'utf8')).toBe('hello from cms\n');
    const rebound = plugin!
      .output()
      .split('\n')
      .filter((l) => l.includes('target on a broken mount bound again'));
    expect(rebound.some((l) => l.includes(`"target":"${cms.staging}"`))).toBe(true);
    expect(rebound.some((l) => l.includes(`"target":"${cms.target}"`))).toBe(true);
    expect(plugin!.output()).toContain('broken repository mount repaired');
    expect((await c.stats('pv-cms', cms.target)).volumeCondition?.abnormal).toBe(false);
    expect(await code(c.unpublish('pv-cms', cms.target))).toBe(status.OK);
    expect(await code(c.unstage('pv-cms', cms.staging))).toBe(status.OK);
  });
});

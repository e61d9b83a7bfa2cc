/**
 * The repository's Dockerfile, built for real with Debian's docker 20.10 (a
 * private dockerd): the base comes from this machine's Node and busybox
 * (test/ops/node-base.ts, through the NODE_IMAGE build argument: no Docker
 * Hub), the build stage runs `npm ci` against the npm registry. The image
 * answers --help and serves the containerd Snapshots API from a container
 * (unprivileged: serving needs no privilege, and runc cannot apply
 * --privileged's capabilities inside some nested VMs; nodes run it privileged).
 * About 4 minutes on 2 CPUs, mostly npm ci and tsc inside the build.
 */
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { needs } from '../helpers/env.js';
import { SnapClient } from '../helpers/grpc.js';
import { DOCKER, DOCKERD, type Dockerd, removeTestDir, shortTempDir, startDockerd } from '../graphdriver/harness.js';
import { nodeBaseTar } from './node-base.js';

const REPO = path.resolve(import.meta.dirname, '../..');
const BASE = 'cvmfs-thin-ops-base:node20';
const IMAGE = 'cvmfs-thin:ops-test';

describe.skipIf(needs({ root: true, binaries: [DOCKERD, DOCKER, 'ldd', '/bin/busybox'] }))('Dockerfile', () => {
  const dir = shortTempDir('opsi-');
  let dockerd: Dockerd;
  const docker = (args: string[], o: { input?: Buffer; timeoutMs?: number; allowFail?: boolean } = {}) => dockerd.docker(args, o);

  beforeAll(async () => {
    dockerd = await startDockerd(path.join(dir, 'd'), 'overlay2');
    // docker import of this machine's Node + busybox (a few seconds)
    const tar = nodeBaseTar(path.join(dir, 'rootfs'));
    // this machine's trust store goes along (it may sit behind a TLS-inspecting proxy)
    const ca = process.env['NODE_EXTRA_CA_CERTS'] ? ['--change', 'ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt'] : [];
    await docker(
      ['import', '--change', 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', ...ca, '--change', 'CMD ["node"]', '-', BASE],
      { input: tar, timeoutMs: 120_000 },
    );
  }, 300_000);

  afterAll(async () => {
    await dockerd?.stop();
    removeTestDir(dir);
  });

  it('builds with the base as NODE_IMAGE (npm ci in the build stage)', async () => {
    const r = await docker(['build', '--network', 'host', '--build-arg', `NODE_IMAGE=${BASE}`, '-t', IMAGE, REPO], { timeoutMs: 600_000, allowFail: true });
    const log = `${r.stdout}\n${r.stderr}`;
    const firstError = log.split('\n').findIndex((l) => /error|ERR!/i.test(l));
    expect(
      r.code,
      log
        .split('\n')
        .slice(Math.max(0, firstError - 20), firstError + 20)
        .join('\n') || log.slice(-4000),
    ).toBe(0);
    expect(r.stdout).toMatch(/Successfully tagged cvmfs-thin:ops-test/);
  }, 620_000);

  it('runs --help', async () => {
    const r = await docker(['run', '--rm', '--network', 'none', IMAGE, '--help']);
    for (const c of ['snapshotter', 'graphdriver', 'convert', 'volume-plugin', 'csi']) expect(r.stdout).toMatch(new RegExp(`^\\s+${c}\\b`, 'm'));
    expect(
      (
        await docker(['run', '--rm', '--network', 'none', '--entrypoint', 'sh', IMAGE, '-c', 'for t in unshare nsenter cvmfs-thin; do command -v $t; done'])
      ).stdout
        .split('\n')
        .filter(Boolean),
    ).toHaveLength(3);
  });

  it('runs the snapshotter: containerd Snapshots API on a socket bound from the host', async () => {
    const sockDir = path.join(dir, 'sock');
    mkdirSync(sockDir, { recursive: true });
    const socket = path.join(sockDir, 'sn.sock');
    const id = (
      await docker([
        'run',
        '-d',
        '--rm',
        '--network',
        'none',
        '-v',
        `${sockDir}:/run/sn`,
        IMAGE,
        'snapshotter',
        '--address',
        '/run/sn/sn.sock',
        '--root',
        '/var/lib/sn',
      ])
    ).stdout.trim();
    try {
      const t0 = Date.now();
      while (!existsSync(socket)) {
        const st = await docker(['inspect', '--format', '{{.State.Running}}', id], { allowFail: true });
        if (st.stdout.trim() !== 'true' || Date.now() - t0 > 30_000)
          throw new Error(`snapshotter container: ${(await docker(['logs', id], { allowFail: true })).stderr}`);
        await sleep(100);
      }
      const client = new SnapClient(socket);
      try {
        expect(await client.list()).toEqual([]);
      } finally {
        client.close();
      }
      expect((await docker(['logs', id])).stderr).toContain('snapshotter serving');
    } finally {
      await docker(['stop', '-t', '10', id], { allowFail: true });
    }
  });
});

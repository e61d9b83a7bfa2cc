/**
 * Archive transports with real consumers: the thin image written as a
 * docker-archive loads with `docker load` (a private dockerd) and
 * `ctr image import` (a private containerd); as an oci-archive it reads back
 * with skopeo; an oci-archive source converts.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { needs, tempDir } from '../helpers/env.js';
import { json, runCli } from './cli.js';
import { buildLayer, skopeoCopy, writeLayout } from './images.js';

function run(cmd: string, args: string[], env?: NodeJS.ProcessEnv): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { env: { ...process.env, ...env }, maxBuffer: 16 << 20, timeout: 60_000 }, (e, out, err) =>
      resolve({ code: e ? ((e as unknown as { code?: number }).code ?? 1) : 0, out, err }),
    );
  });
}

async function waitFor(check: () => Promise<boolean>, what: string, child: ChildProcess, logFile: string, ms = 30_000): Promise<void> {
  const t0 = Date.now();
  while (!(await check())) {
    if (child.exitCode !== null) throw new Error(`${what} exited: ${fs.readFileSync(logFile, 'utf8').slice(-2000)}`);
    if (Date.now() - t0 > ms) throw new Error(`${what} did not start: ${fs.readFileSync(logFile, 'utf8').slice(-2000)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function stop(child: ChildProcess | undefined): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), 15_000);
  await exited;
  clearTimeout(t);
}

interface Summary {
  images: { status: string; layers: { status: string }[]; thin: { target: string; digest: string } | null }[];
}

describe.skipIf(needs({ root: 'dockerd and containerd daemons', binaries: ['dockerd', 'docker', 'containerd', 'ctr', 'skopeo', 'tar', 'gzip'] }))(
  'archive transports with docker load, ctr import and skopeo',
  () => {
    // short paths: unix sockets live in here
    const work = tempDir('ct-');
    let layout: string;
    const thinTar = () => path.join(work, 'thin-docker.tar');
    let dockerd: ChildProcess | undefined;
    let containerd: ChildProcess | undefined;
    const dsock = () => path.join(work, 'd.sock');
    const csock = () => path.join(work, 'c.sock');

    beforeAll(async () => {
      const st = path.join(work, 'st');
      fs.mkdirSync(path.join(st, 'bin'), { recursive: true });
      fs.copyFileSync('/bin/busybox', path.join(st, 'bin/busybox'));
      layout = path.join(work, 'layout');
      writeLayout(layout, 'v1', [
        {
          layers: [buildLayer(st, 'gzip', path.join(work, 'blobs'), 'l')],
          config: { Env: ['A=1'], Entrypoint: ['/bin/busybox'], Cmd: ['sh'], WorkingDir: '/bin' },
        },
      ]);
      const repo = path.join(work, 'repo');
      fs.mkdirSync(repo);
      const r = await runCli([
        'convert',
        `oci:${layout}:v1`,
        '--repository-dir',
        repo,
        '--thin',
        `docker-archive:${thinTar()}:example.org/team/app_thin:1`,
        '--json',
      ]);
      expect(r.code, r.stderr).toBe(0);

      const dlog = path.join(work, 'dockerd.log');
      dockerd = spawn(
        'dockerd',
        [
          '--data-root',
          path.join(work, 'dd'),
          '--exec-root',
          path.join(work, 'de'),
          '--pidfile',
          path.join(work, 'd.pid'),
          '-H',
          `unix://${dsock()}`,
          '--bridge',
          'none',
          '--iptables=false',
          '--ip-masq=false',
          '--storage-driver',
          'vfs',
          '--containerd-namespace',
          'cvmfsthintest',
          '--containerd-plugins-namespace',
          'cvmfsthintestp',
        ],
        { stdio: ['ignore', fs.openSync(dlog, 'a'), fs.openSync(dlog, 'a')] },
      );
      await waitFor(async () => (await run('docker', ['-H', `unix://${dsock()}`, 'version'])).code === 0, 'dockerd', dockerd, dlog, 60_000);

      const clog = path.join(work, 'containerd.log');
      const cfg = path.join(work, 'containerd.toml');
      fs.writeFileSync(
        cfg,
        [
          'version = 2',
          `root = ${JSON.stringify(path.join(work, 'cr'))}`,
          `state = ${JSON.stringify(path.join(work, 'cs'))}`,
          'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
          '[grpc]',
          `  address = ${JSON.stringify(csock())}`,
          '[ttrpc]',
          `  address = ${JSON.stringify(path.join(work, 'ct.sock'))}`,
          '',
        ].join('\n'),
      );
      containerd = spawn('containerd', ['--config', cfg], { stdio: ['ignore', fs.openSync(clog, 'a'), fs.openSync(clog, 'a')] });
      await waitFor(async () => (await run('ctr', ['-a', csock(), 'version'])).code === 0, 'containerd', containerd, clog);
    }, 180_000);

    afterAll(async () => {
      await stop(dockerd);
      await stop(containerd);
    }, 60_000);

    it('docker load takes the thin docker-archive, with its runtime config', async () => {
      const load = await run('docker', ['-H', `unix://${dsock()}`, 'load', '-i', thinTar()]);
      expect(load.code, load.err).toBe(0);
      expect(load.out).toContain('Loaded image: example.org/team/app_thin:1');
      const insp = await run('docker', ['-H', `unix://${dsock()}`, 'image', 'inspect', 'example.org/team/app_thin:1']);
      const info = JSON.parse(insp.out) as {
        Config: { Env: string[]; Entrypoint: string[]; Cmd: string[]; WorkingDir: string };
        RootFS: { Layers: string[] };
      }[];
      expect(info[0]!.Config).toMatchObject({ Env: ['A=1', 'CVMFS_IMAGE=true'], Entrypoint: ['/bin/busybox'], Cmd: ['sh'], WorkingDir: '/bin' });
      expect(info[0]!.RootFS.Layers).toHaveLength(1);
    });

    it('ctr image import takes the same archive and unpacks it', async () => {
      const imp = await run('ctr', ['-a', csock(), '-n', 'cvmfsthin', 'image', 'import', thinTar()]);
      expect(imp.code, imp.err + imp.out).toBe(0);
      const ls = await run('ctr', ['-a', csock(), '-n', 'cvmfsthin', 'image', 'ls', '-q']);
      expect(ls.out.split('\n')).toContain('example.org/team/app_thin:1');
      const check = await run('ctr', ['-a', csock(), '-n', 'cvmfsthin', 'image', 'check']);
      expect(check.out).toMatch(/example\.org\/team\/app_thin:1\s+application\/vnd\.docker\.distribution\.manifest\.v2\+json\s+\S+\s+complete/);
    });

    it('oci-archive: written as a thin target, read as a source', async () => {
      const repo = path.join(work, 'repo');
      const thinOci = path.join(work, 'thin-oci.tar');
      const r = await runCli(['convert', `oci:${layout}:v1`, '--repository-dir', repo, '--thin', `oci-archive:${thinOci}:t1`, '--force', '--json']);
      expect(r.code, r.stderr).toBe(0);
      const insp = await run('skopeo', ['inspect', '--config', `oci-archive:${thinOci}:t1`]);
      expect(insp.code, insp.err).toBe(0);
      expect((JSON.parse(insp.out) as { config: { Env: string[] } }).config.Env).toContain('CVMFS_IMAGE=true');

      const srcArchive = path.join(work, 'src-oci.tar');
      await skopeoCopy(`oci:${layout}:v1`, `oci-archive:${srcArchive}:v1`);
      const c = await runCli(['convert', `oci-archive:${srcArchive}:v1`, '--repository-dir', repo, '--no-thin', '--json']);
      expect(c.code, c.stderr).toBe(0);
      expect(json<Summary>(c).images[0]!.layers.map((l) => l.status)).toEqual(['present']);
    });
  },
);

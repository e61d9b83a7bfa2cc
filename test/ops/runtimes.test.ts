/**
 * `cvmfs-thin setup` proven with the real runtimes (root): a copy of a stock
 * containerd 1.6 config (`containerd config default`) goes through
 * `setup containerd --kubernetes`, and containerd started from the result runs
 * a thin image through our snapshotter; the same for dockerd 20.10 with
 * `setup docker` (graph driver). Then: a second run changes nothing, a
 * malformed file is refused with its line and left alone, --undo restores
 * byte for byte.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { layerMarker } from '../../src/core/cvmfs/layout.js';
import { type Daemon, runCli, startDaemon } from '../helpers/daemon.js';
import { needs } from '../helpers/env.js';
import { buildImage, buildThinImage, busyboxEntries, type BuiltImage, unpackDuccStyle, writeDockerArchive, writeOciArchive } from '../helpers/oci-image.js';
import { DOCKER, DOCKERD, type Plugin, removeTestDir, run, shortTempDir, startPlugin, unmountBelow } from '../graphdriver/harness.js';

const REPO = 'unpacked.cern.ch';

/** A thin image of a busybox layer unpacked in `repoRoot` (converter-style, so used as is). */
async function thinImage(repoRoot: string, name: string, salt: string): Promise<BuiltImage> {
  const real = await buildImage(`src/${salt}:1`, [[...busyboxEntries(salt), { path: 'only-in-cvmfs.txt', content: `served by cvmfs (${salt})\n` }]]);
  const l = real.layers[0]!;
  unpackDuccStyle(repoRoot, l);
  const marker = layerMarker(repoRoot, l.digest.slice(7));
  mkdirSync(path.dirname(marker), { recursive: true });
  writeFileSync(
    marker,
    JSON.stringify({ schema: 'cvmfs-thin/layer', version: 1, digest: l.digest, diff_id: l.diffId, whiteouts: 'overlay', created: new Date().toISOString() }),
  );
  const hex = l.digest.slice(7);
  return buildThinImage(
    name,
    JSON.stringify({ version: '1.0', origin: name, layers: [{ digest: hex, url: `cvmfs://${REPO}/.layers/${hex.slice(0, 2)}/${hex}/layerfs` }] }),
  );
}

/** Start containerd from a config file as it is (the address is the one in the file). */
async function containerdFrom(
  config: string,
  address: string,
): Promise<{ proc: ChildProcess; log: () => string; ctr: (a: string[]) => string; stop: () => Promise<void> }> {
  const proc = spawn('containerd', ['--config', config], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  const t0 = Date.now();
  while (!existsSync(address) || !out.includes('containerd successfully booted')) {
    if (proc.exitCode !== null) throw new Error(`containerd exited:\n${out}`);
    if (Date.now() - t0 > 30_000) throw new Error(`containerd did not start:\n${out}`);
    await sleep(100);
  }
  const ctr = (a: string[]) => execFileSync('ctr', ['--address', address, '--namespace', 'ops', ...a], { encoding: 'utf8', timeout: 60_000 });
  return {
    proc,
    log: () => out,
    ctr,
    async stop() {
      if (proc.exitCode === null) proc.kill('SIGTERM');
      await exited;
    },
  };
}

describe.skipIf(needs({ root: true, binaries: ['containerd', 'ctr', 'runc'] }))('setup containerd, then a real containerd 1.6 from the result', () => {
  const dir = shortTempDir('opsc-');
  const root = path.join(dir, 'node');
  const config = path.join(root, 'etc/containerd/config.toml');
  const address = path.join(dir, 'ctd.sock');
  const snSock = path.join(dir, 'sn.sock');
  const repoRoot = path.join(dir, 'cvmfs', REPO);
  let stock: string;
  let sn: Daemon | undefined;
  let ctd: Awaited<ReturnType<typeof containerdFrom>> | undefined;
  const setup = (...a: string[]) =>
    runCli([
      'setup',
      'containerd',
      '--root-prefix',
      root,
      '--kubernetes',
      '--bootstrap-runtime',
      'cvmfs-thin-bootstrap',
      '--snapshotter-address',
      snSock,
      '--exec',
      '/usr/bin/env cvmfs-thin',
      ...a,
    ]);

  beforeAll(() => {
    // a node's stock config, with containerd's own paths moved into the test directory
    stock = execFileSync('containerd', ['config', 'default'], { encoding: 'utf8' })
      .replace(/^root = ".*"$/m, `root = "${dir}/root"`)
      .replace(/^state = ".*"$/m, `state = "${dir}/state"`)
      .replace(/^(\[grpc\]\n {2}address = )".*"$/m, `$1"${address}"`);
    expect(stock).toContain(`address = "${address}"`);
    mkdirSync(path.dirname(config), { recursive: true });
    writeFileSync(config, stock);
    mkdirSync(repoRoot, { recursive: true });
  });
  afterAll(async () => {
    await ctd?.stop();
    await sn?.stop();
    removeTestDir(dir);
  });

  it('--dry-run prints the diff and changes nothing', async () => {
    const r = await setup('--dry-run');
    expect(r.code).toBe(0);
    expect(r.out).toContain('+[proxy_plugins.cvmfs-snapshotter]');
    expect(r.out).toContain('-      snapshotter = "overlayfs"\n');
    expect(r.out).toContain('+      snapshotter = "cvmfs-snapshotter"\n');
    expect(readFileSync(config, 'utf8')).toBe(stock);
    expect(existsSync(path.join(root, 'etc/systemd/system/cvmfs-thin-snapshotter.service'))).toBe(false);
  });

  it('configures; containerd started from the result runs a thin image through the snapshotter', async () => {
    const r = await setup();
    expect(r.code, r.out).toBe(0);
    expect(r.out).toContain('systemd is not running here; run:\n  systemctl daemon-reload\n');
    // the snapshotter from the config file setup wrote (its address is in it)
    const snConfig = path.join(root, 'etc/containerd-cvmfs-grpc/config.toml');
    expect(readFileSync(snConfig, 'utf8')).toContain(`\naddress = "${snSock}"\n`);
    sn = await startDaemon(['--config', snConfig, '--root', path.join(dir, 'sn-root'), '--absolute-mountpoint', repoRoot], snSock);
    ctd = await containerdFrom(config, address);
    expect(ctd.ctr(['plugins', 'ls'])).toMatch(/io\.containerd\.snapshotter\.v1\s+cvmfs-snapshotter\s+-\s+ok/);
    const img = await thinImage(repoRoot, 'docker.io/ops/thin:1', 'ctd');
    const tar = path.join(dir, 'thin.tar');
    await writeOciArchive(tar, img);
    ctd.ctr(['image', 'import', '--snapshotter', 'cvmfs-snapshotter', tar]);
    expect(ctd.ctr(['run', '--rm', '--snapshotter', 'cvmfs-snapshotter', img.name, 'ops1', 'cat', '/only-in-cvmfs.txt', '/etc/salt'])).toBe(
      'served by cvmfs (ctd)\nctd\n',
    );
    // CRI: containerd loaded the [plugins."io.containerd.grpc.v1.cri".containerd] keys setup wrote
    expect(ctd.log()).toMatch(/Snapshotter:cvmfs-snapshotter/);
    expect(ctd.log()).toMatch(/DisableSnapshotAnnotations:false/);
    // containerd 1.6 has no per-runtime snapshotter: the bootstrap handler loads (and uses the default one there)
    expect(ctd.log()).toMatch(/cvmfs-thin-bootstrap:\{Type:io\.containerd\.runc\.v2/);
  });

  it('a second run changes nothing', async () => {
    const before = readFileSync(config);
    const r = await setup();
    expect(r.code).toBe(0);
    expect(r.out).toBe('containerd: nothing to change\n');
    expect(readFileSync(config).equals(before)).toBe(true);
  });

  it('--undo restores the stock file byte for byte and removes the files setup created', async () => {
    await ctd?.stop();
    ctd = undefined;
    const r = await setup('--undo');
    expect(r.code, r.out).toBe(0);
    expect(readFileSync(config, 'utf8')).toBe(stock);
    expect(existsSync(path.join(root, 'etc/systemd/system/cvmfs-thin-snapshotter.service'))).toBe(false);
    expect(existsSync(path.join(root, 'etc/containerd-cvmfs-grpc'))).toBe(false);
  });

  it('refuses a malformed config with its line (exit 2) and leaves it untouched', async () => {
    const bad = stock.replace('[grpc]', '[grpc\n');
    writeFileSync(config, bad);
    const line = bad.split('\n').findIndex((l) => l === '[grpc') + 1;
    const r = await setup();
    expect(r.code).toBe(2);
    expect(r.out).toContain(`config.toml: line ${line}, column`);
    expect(r.out).toContain('the file was not changed');
    expect(readFileSync(config, 'utf8')).toBe(bad);
  });
});

describe.skipIf(needs({ root: true, binaries: [DOCKERD, DOCKER] }))('setup docker, then a real dockerd 20.10 on the graph driver', () => {
  const name = 'ops-setup-gd';
  const dir = shortTempDir('opsd-');
  const root = path.join(dir, 'node');
  const daemonJson = path.join(root, 'etc/docker/daemon.json');
  const original = '{\n  "debug": true,\n  "log-opts": { "max-size": "10m" }\n}\n';
  const repoRoot = path.join(dir, 'cvmfs', REPO);
  let plugin: Plugin | undefined;
  let dockerd: ChildProcess | undefined;
  const sock = path.join(dir, 'docker.sock');
  const env = { ...process.env, DOCKER_HOST: `unix://${sock}`, DOCKER_CONFIG: path.join(dir, 'cli') };
  const docker = (a: string[], allowFail = false) => run(DOCKER, a, { env, allowFail });
  const setup = (...a: string[]) => runCli(['setup', 'docker', '--root-prefix', root, '--graphdriver-name', name, '--exec', '/usr/bin/env cvmfs-thin', ...a]);

  beforeAll(() => {
    mkdirSync(path.dirname(daemonJson), { recursive: true });
    writeFileSync(daemonJson, original);
    mkdirSync(repoRoot, { recursive: true });
  });
  afterAll(async () => {
    if (dockerd && dockerd.exitCode === null) {
      dockerd.kill('SIGTERM');
      await new Promise((r) => dockerd!.once('exit', r));
    }
    await plugin?.stop();
    unmountBelow(dir);
    removeTestDir(dir);
  });

  it('configures (Docker version from dockerd --version); dockerd started from the daemon.json runs a thin image', async () => {
    const r = await setup();
    expect(r.code, r.out).toBe(0);
    expect(JSON.parse(readFileSync(daemonJson, 'utf8'))).toEqual({
      debug: true,
      'log-opts': { 'max-size': '10m' },
      experimental: true,
      'storage-driver': name,
    });
    const gdConfig = path.join(root, 'etc/cvmfs-thin/graphdriver.toml');
    expect(readFileSync(gdConfig, 'utf8')).toContain(`\nsocket = "/run/docker/plugins/${name}.sock"\n`);
    plugin = await startPlugin(name, ['--config', gdConfig, '--state-dir', path.join(dir, 'gd-state'), '--absolute-mountpoint', repoRoot]);
    // dockerd with nothing but the file setup wrote (plus its private paths)
    mkdirSync(path.join(dir, 'cli'), { recursive: true });
    dockerd = spawn(
      DOCKERD,
      [
        '--config-file',
        daemonJson,
        '--data-root',
        path.join(dir, 'data'),
        '--exec-root',
        path.join(dir, 'exec'),
        '--pidfile',
        path.join(dir, 'dockerd.pid'),
        '-H',
        `unix://${sock}`,
        '--iptables=false',
        '--ip-masq=false',
        '--bridge=none',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let log = '';
    dockerd.stdout!.on('data', (d: Buffer) => (log += d.toString()));
    dockerd.stderr!.on('data', (d: Buffer) => (log += d.toString()));
    const t0 = Date.now();
    while ((await docker(['version', '--format', '{{.Server.Version}}'], true)).code !== 0) {
      if (dockerd.exitCode !== null || Date.now() - t0 > 60_000) throw new Error(`dockerd did not start:\n${log.slice(-3000)}`);
      await sleep(200);
    }
    expect((await docker(['info', '--format', '{{.Driver}}'])).stdout.trim()).toBe(name);
    const tar = path.join(dir, 'thin.tar');
    await writeDockerArchive(tar, await thinImage(repoRoot, 'ops/thin:1', 'dkr'));
    await docker(['load', '-i', tar]);
    expect((await docker(['run', '--rm', '--network', 'none', 'ops/thin:1', 'cat', '/only-in-cvmfs.txt', '/etc/salt'])).stdout).toBe(
      'served by cvmfs (dkr)\ndkr\n',
    );
  });

  it('a second run changes nothing; --undo restores daemon.json byte for byte', async () => {
    const snap = readFileSync(daemonJson);
    const again = await setup();
    expect(again.out).toBe('docker: nothing to change\n');
    expect(readFileSync(daemonJson).equals(snap)).toBe(true);
    const r = await setup('--undo');
    expect(r.code, r.out).toBe(0);
    expect(readFileSync(daemonJson, 'utf8')).toBe(original);
    expect(existsSync(path.join(root, 'etc/cvmfs-thin'))).toBe(false);
    expect(existsSync(path.join(root, 'etc/systemd/system/cvmfs-thin-graphdriver.service'))).toBe(false);
  });
});

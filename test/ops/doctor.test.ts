/**
 * `cvmfs-thin doctor`: each check against prepared files, a recording host
 * (mount table, dockerd --version) and real sockets; then the CLI on this
 * machine, with and without a stand-in /cvmfs.
 */
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { type Check, type DoctorOptions, formatChecks, runDoctor } from '../../src/ops/doctor.js';
import { runCli } from '../helpers/daemon.js';
import { tempDir } from '../helpers/env.js';
import { RecordingHost } from '../helpers/recording-host.js';

const base = tempDir('ops-doctor-');
let n = 0;
const servers: net.Server[] = [];
afterAll(() => servers.forEach((s) => s.close()));

function put(file: string, text: string): string {
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(file, text);
  return file;
}

function listen(socket: string): Promise<void> {
  const s = net.createServer((c) => c.end());
  servers.push(s);
  return new Promise((r) => s.listen(socket, () => r()));
}

function setupNode(docker = 'Docker version 20.10.24+dfsg1, build 297e128') {
  const root = path.join(base, `n${++n}`);
  const host = new RecordingHost();
  host.execHandler = (file) =>
    file === 'dockerd' ? { code: docker ? 0 : 127, stdout: docker ? `${docker}\n` : '', stderr: '' } : { code: 0, stdout: '', stderr: '' };
  const o: DoctorOptions = {
    host,
    containerdConfig: path.join(root, 'etc/containerd/config.toml'),
    daemonJson: path.join(root, 'etc/docker/daemon.json'),
    snapshotterConfig: path.join(root, 'etc/containerd-cvmfs-grpc/config.toml'),
    graphdriverConfig: path.join(root, 'etc/cvmfs-thin/graphdriver.toml'),
    volumePluginConfig: path.join(root, 'etc/cvmfs-thin/volume-plugin.toml'),
    systemdDir: path.join(root, 'etc/systemd/system'),
    cvmfsRoot: path.join(root, 'cvmfs'),
    procFilesystems: put(path.join(root, 'proc/filesystems'), 'nodev\tsysfs\nnodev\toverlay\n'),
    overlayParameters: path.join(root, 'sys/overlay'),
    kernelRelease: '6.1.0-13-amd64',
    timeoutMs: 3000,
    cvmfsServerConfDir: path.join(root, 'etc/cvmfs/repositories.d'),
  };
  put(path.join(root, 'sys/overlay/index'), 'Y\n');
  put(path.join(root, 'sys/overlay/redirect_dir'), 'N\n');
  put(path.join(root, 'sys/overlay/metacopy'), 'N\n');
  mkdirSync(path.join(root, 'cvmfs/unpacked.cern.ch/.layers'), { recursive: true });
  return { root, host, o };
}

const byId = (cs: Check[], id: string) => cs.filter((c) => c.id === id);
const status = (cs: Check[], id: string) => byId(cs, id).map((c) => c.status);

describe('doctor checks', () => {
  it('on a publisher: a repository whose server.conf drops xattrs is a warning naming the file and the fix; none on a node', async () => {
    const { o } = setupNode('');
    expect(status(await runDoctor(o), 'cvmfs-publisher')).toEqual([]);
    put(path.join(o.cvmfsServerConfDir!, 'unpacked.cern.ch/server.conf'), 'CVMFS_REPOSITORY_NAME=unpacked.cern.ch\n');
    put(path.join(o.cvmfsServerConfDir!, 'ok.cern.ch/server.conf'), 'CVMFS_INCLUDE_XATTRS=true\n');
    const cs = byId(await runDoctor(o), 'cvmfs-publisher');
    expect(cs).toEqual([
      {
        id: 'cvmfs-publisher',
        status: 'warn',
        detail: expect.stringContaining(`${path.join(o.cvmfsServerConfDir!, 'unpacked.cern.ch/server.conf')} has no CVMFS_INCLUDE_XATTRS=true`),
        fix: `add CVMFS_INCLUDE_XATTRS=true to ${path.join(o.cvmfsServerConfDir!, 'unpacked.cern.ch/server.conf')}`,
      },
    ]);
    put(path.join(o.cvmfsServerConfDir!, 'unpacked.cern.ch/server.conf'), 'CVMFS_INCLUDE_XATTRS=true\n');
    expect(status(await runDoctor(o), 'cvmfs-publisher')).toEqual(['pass']);
  });

  it('a node set up for containerd with a live snapshotter passes; the socket going away fails', async () => {
    const { root, o, host } = setupNode('');
    const sock = path.join(root, 'sn.sock');
    put(o.snapshotterConfig, `address = "${sock}"\n`);
    put(
      o.containerdConfig,
      `version = 2\n[proxy_plugins.cvmfs-snapshotter]\n  type = "snapshot"\n  address = "${sock}"\n[plugins."io.containerd.grpc.v1.cri".containerd]\n  snapshotter = "cvmfs-snapshotter"\n  disable_snapshot_annotations = false\n`,
    );
    host.mounts.push({ mountPoint: o.cvmfsRoot!, root: '/', fsType: 'autofs', source: 'systemd-1', options: 'rw', readonly: false, propagation: 'shared' });
    await listen(sock);
    const cs = await runDoctor(o);
    expect(cs.filter((c) => c.status === 'fail')).toEqual([]);
    expect(status(cs, 'cvmfs-root')).toEqual(['pass']);
    expect(byId(cs, 'cvmfs-root')[0]!.detail).toContain('automounted (autofs)');
    expect(byId(cs, 'containerd-config')[0]!.detail).toContain('Kubernetes (CRI) pulls use it, snapshot annotations on');
    expect(status(cs, 'socket')).toEqual(['pass']);
    expect(status(cs, 'docker-version')).toEqual(['skip']);
    servers.pop()!.close();
    await new Promise((r) => setTimeout(r, 50));
    const after = await runDoctor(o);
    expect(byId(after, 'socket')[0]).toMatchObject({ status: 'fail', fix: expect.stringContaining('systemctl start cvmfs-thin-snapshotter.service') });
    expect(formatChecks(after)).toMatch(/^FAIL socket: snapshotter not answering on .*\n {7}fix: systemctl start/m);
  });

  it('overlay: missing module fails; redirect_dir/metacopy on warns', async () => {
    const { o } = setupNode();
    put(path.join(o.overlayParameters!, 'redirect_dir'), 'Y\n');
    let cs = await runDoctor(o);
    expect(byId(cs, 'overlay-parameters')[0]).toMatchObject({ status: 'warn', fix: expect.stringContaining('redirect_dir') });
    put(o.procFilesystems!, 'nodev\tsysfs\n');
    cs = await runDoctor(o);
    expect(status(cs, 'overlayfs')).toEqual(['fail']);
  });

  it('CVMFS: missing root and repository fail, a plain directory warns, a repository without .layers fails', async () => {
    const { o } = setupNode();
    let cs = await runDoctor({ ...o, cvmfsRoot: path.join(base, 'nowhere') });
    expect(status(cs, 'cvmfs-root')).toEqual(['fail']);
    expect(status(cs, 'repository')).toEqual(['fail']);
    cs = await runDoctor(o);
    expect(status(cs, 'cvmfs-root')).toEqual(['warn']);
    expect(status(cs, 'repository')).toEqual(['pass']);
    cs = await runDoctor({ ...o, repository: 'other.cern.ch' });
    expect(byId(cs, 'repository')[0]!.detail).toContain('other.cern.ch: ');
    expect(status(cs, 'repository')).toEqual(['fail']);
  });

  it('nothing configured fails with the setup commands to run; a malformed config is named', async () => {
    const { o } = setupNode();
    let cs = await runDoctor(o);
    expect(byId(cs, 'runtime')[0]).toMatchObject({ status: 'fail', fix: expect.stringContaining('cvmfs-thin setup containerd') });
    put(o.containerdConfig, 'version = 2\n[proxy_plugins\n');
    cs = await runDoctor(o);
    expect(byId(cs, 'containerd-config')[0]).toMatchObject({
      status: 'fail',
      detail: expect.stringMatching(/config\.toml: line 2, column \d+: not valid TOML/),
    });
  });

  it('Docker: graph driver versions (20.10 ok, 27 needs the drop-in, 28 fails), experimental required, plugin socket probed', async () => {
    const sock = `/run/docker/plugins/ops-doctor-${process.pid}.sock`;
    const gd = (v: string) => {
      const t = setupNode(`Docker version ${v}, build x`);
      put(t.o.graphdriverConfig, `socket = "${sock}"\n`);
      put(t.o.daemonJson, JSON.stringify({ experimental: true, 'storage-driver': path.basename(sock, '.sock') }));
      return t;
    };
    let t = gd('20.10.24');
    let cs = await runDoctor(t.o);
    expect(status(cs, 'docker-config')).toEqual(['pass']);
    expect(status(cs, 'docker-version')).toEqual(['pass']);
    expect(byId(cs, 'socket')[0]).toMatchObject({ status: 'fail', detail: expect.stringContaining('graph driver not answering') });
    t = gd('27.3.1');
    expect(status(await runDoctor(t.o), 'docker-version')).toEqual(['fail']);
    put(path.join(t.o.systemdDir, 'docker.service.d/x.conf'), '[Service]\nEnvironment=DOCKERD_DEPRECATED_GRAPHDRIVER_PLUGINS=1\n');
    expect(status(await runDoctor(t.o), 'docker-version')).toEqual(['pass']);
    t = gd('28.0.1');
    cs = await runDoctor(t.o);
    expect(byId(cs, 'docker-version')[0]).toMatchObject({ status: 'fail', fix: expect.stringContaining('--mode containerd-store') });
    t = gd('20.10.24');
    put(t.o.daemonJson, JSON.stringify({ 'storage-driver': path.basename(sock, '.sock') }));
    expect(byId(await runDoctor(t.o), 'docker-config')[0]).toMatchObject({ status: 'fail', detail: expect.stringContaining('experimental') });
  });

  it('idmapped mounts by kernel version', async () => {
    const { o } = setupNode();
    const idm = async (k: string) => byId(await runDoctor({ ...o, kernelRelease: k }), 'idmapped-mounts')[0]!;
    expect((await idm('6.12.1')).status).toBe('pass');
    expect((await idm('5.19.0')).detail).toContain('needs 6.12');
    expect((await idm('5.15.0-91-generic')).status).toBe('warn');
    expect((await idm('4.18.0-553.el8')).detail).toContain('no idmapped mounts');
  });
});

describe('cvmfs-thin doctor on this machine', () => {
  const realRepo = existsSync('/cvmfs/unpacked.cern.ch/.layers');

  it(`without a stand-in: /cvmfs is ${realRepo ? 'there' : 'missing, so it fails (exit 1)'}`, async () => {
    const prefix = path.join(base, 'empty-node');
    mkdirSync(prefix, { recursive: true });
    const r = await runCli(['doctor', '--json', '--root-prefix', prefix]);
    const rep = JSON.parse(r.out) as { ok: boolean; checks: Check[] };
    expect(status(rep.checks, 'repository')).toEqual([realRepo ? 'pass' : 'fail']);
    // a node with no runtime configured is a failure either way
    expect(status(rep.checks, 'runtime')).toEqual(['fail']);
    expect(rep.ok).toBe(false);
    expect(r.code).toBe(1);
    expect(status(rep.checks, 'overlayfs')).toEqual([existsSync('/sys/module/overlay') ? 'pass' : 'fail']);
  });

  it('with a stand-in /cvmfs and a configured, answering snapshotter: passes (exit 0), human output', async () => {
    const prefix = path.join(base, 'good-node');
    const cvmfs = path.join(base, 'standin-cvmfs');
    mkdirSync(path.join(cvmfs, 'unpacked.cern.ch/.layers/ab'), { recursive: true });
    const sock = path.join(prefix, 'sn.sock');
    put(path.join(prefix, 'etc/containerd-cvmfs-grpc/config.toml'), `address = "${sock}"\n`);
    put(path.join(prefix, 'etc/containerd/config.toml'), `version = 2\n[proxy_plugins.cvmfs-snapshotter]\n  type = "snapshot"\n  address = "${sock}"\n`);
    await listen(sock);
    const r = await runCli(['doctor', '--root-prefix', prefix, '--cvmfs-root', cvmfs]);
    expect(r.out).toMatch(/^ok {3}repository: unpacked\.cern\.ch reachable at .*standin-cvmfs\/unpacked\.cern\.ch, holding \.layers$/m);
    expect(r.out).toMatch(/^WARN cvmfs-root: .* nothing is mounted there/m);
    expect(r.out).toMatch(/^ok {3}socket: snapshotter answers on /m);
    const overlay = existsSync('/sys/module/overlay');
    expect(r.code, r.out).toBe(overlay ? 0 : 1);
    if (overlay) expect(r.out).toMatch(/all checks passed/);
  });
});

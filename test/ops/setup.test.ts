/**
 * `cvmfs-thin setup` on copies of a node's files (unprivileged): the edits,
 * what is kept, idempotence, dry-run diffs that are exactly what is written,
 * refusals that leave files untouched, and --undo byte for byte. systemctl
 * goes through a recording host.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { beforeEach, describe, expect, it } from 'vitest';
import {
  type CommonOptions,
  type ContainerdOptions,
  type DockerOptions,
  dockerMode,
  planContainerd,
  planDocker,
  planVolumes,
  runPlan,
  runUndo,
} from '../../src/ops/setup.js';
import { hasBinary, tempDir } from '../helpers/env.js';
import { RecordingHost } from '../helpers/recording-host.js';

const FIX = path.join(import.meta.dirname, 'fixtures');
const base = tempDir('ops-setup-');
let n = 0;

interface Node {
  root: string;
  o: CommonOptions;
  ctd: ContainerdOptions;
  docker: DockerOptions;
  host: RecordingHost;
  out: string[];
  io: { out: (s: string) => void };
  /** every file below root with its content */
  snapshot(): Record<string, string>;
}

function node(opts: Partial<CommonOptions> = {}): Node {
  const root = path.join(base, `node${++n}`);
  mkdirSync(root, { recursive: true });
  const host = new RecordingHost();
  host.execHandler = (file, args) =>
    file === 'dockerd'
      ? { code: 0, stdout: 'Docker version 20.10.24+dfsg1, build 297e128\n', stderr: '' }
      : file === 'containerd' && args[0] === '--version'
        ? { code: 127, stdout: '', stderr: 'not found' }
        : { code: 0, stdout: '', stderr: '' };
  const o: CommonOptions = {
    rootPrefix: root,
    stateDir: path.join(base, `state${n}`),
    systemdDir: path.join(root, 'etc/systemd/system'),
    units: true,
    exec: '/usr/bin/env cvmfs-thin',
    systemctl: ['systemctl'],
    systemdRunning: true,
    restart: true,
    ...opts,
  };
  const ctd: ContainerdOptions = {
    containerdConfig: path.join(root, 'etc/containerd/config.toml'),
    snapshotterConfig: path.join(root, 'etc/containerd-cvmfs-grpc/config.toml'),
    pluginName: 'cvmfs-snapshotter',
    kubernetes: false,
  };
  const docker: DockerOptions = {
    daemonJson: path.join(root, 'etc/docker/daemon.json'),
    mode: 'auto',
    graphdriverName: 'cvmfs',
    graphdriverConfig: path.join(root, 'etc/cvmfs-thin/graphdriver.toml'),
    containerd: ctd,
    volumePluginConfig: path.join(root, 'etc/cvmfs-thin/volume-plugin.toml'),
  };
  const out: string[] = [];
  const walk = (d: string, acc: Record<string, string>) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) {
        acc[`${path.relative(root, p)}/`] = `mode ${(statSync(p).mode & 0o7777).toString(8)}`;
        walk(p, acc);
      } else acc[path.relative(root, p)] = `${(statSync(p).mode & 0o7777).toString(8)} ${readFileSync(p, 'latin1')}`;
    }
    return acc;
  };
  return { root, o, ctd, docker, host, out, io: { out: (s) => void out.push(s) }, snapshot: () => walk(root, {}) };
}

function put(file: string, content: string | Buffer, mode = 0o644): void {
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(file, content);
  chmodSync(file, mode);
}

const stock = () => readFileSync(path.join(FIX, 'containerd-1.6-default.toml'), 'utf8');
const execs = (h: RecordingHost) =>
  h
    .ops('exec')
    .map((c) => [c.args[0], ...(c.args[1] as string[])].join(' '))
    .filter((c) => c.startsWith('systemctl'));

describe('setup containerd', () => {
  let t: Node;
  beforeEach(() => {
    t = node();
    put(t.ctd.containerdConfig, stock());
  });

  it('merges the proxy plugin and the CRI keys into a stock 1.6 config, keeping every other line', async () => {
    await runPlan(t.o, await planContainerd(t.o, { ...t.ctd, kubernetes: true }, t.host), t.host, t.io, false);
    const after = readFileSync(t.ctd.containerdConfig, 'utf8');
    const doc = parseToml(after) as any;
    expect(doc.proxy_plugins['cvmfs-snapshotter']).toEqual({ type: 'snapshot', address: '/run/containerd-cvmfs-grpc/containerd-cvmfs-grpc.sock' });
    expect(doc.plugins['io.containerd.grpc.v1.cri'].containerd.snapshotter).toBe('cvmfs-snapshotter');
    expect(doc.plugins['io.containerd.grpc.v1.cri'].containerd.disable_snapshot_annotations).toBe(false);
    // line by line: only the two CRI values changed, the rest kept in place
    const a = stock().split('\n');
    const b = after.split('\n');
    const changedLines = a.map((l, i) => [l, b[i]]).filter(([x, y]) => x !== y);
    expect(changedLines).toEqual([
      ['      disable_snapshot_annotations = true', '      disable_snapshot_annotations = false'],
      ['      snapshotter = "overlayfs"', '      snapshotter = "cvmfs-snapshotter"'],
    ]);
    expect(b.slice(a.length - 1).join('\n')).toContain('[proxy_plugins.cvmfs-snapshotter]');
    // the daemon's files
    expect(readFileSync(path.join(t.o.systemdDir, 'cvmfs-thin-snapshotter.service'), 'utf8')).toContain(
      'ExecStart=/usr/bin/env cvmfs-thin snapshotter --config=/etc/containerd-cvmfs-grpc/config.toml\n',
    );
    expect(readFileSync(t.ctd.snapshotterConfig, 'utf8')).toBe(readFileSync(path.resolve(import.meta.dirname, '../../packaging/systemd/config.toml'), 'utf8'));
    expect(execs(t.host)).toEqual([
      'systemctl daemon-reload',
      'systemctl enable cvmfs-thin-snapshotter.service',
      'systemctl restart cvmfs-thin-snapshotter.service',
      'systemctl restart containerd.service',
    ]);
  });

  it('keeps comments, quoting and order of a hand-written config', async () => {
    const hand = `# node config — managed by hand
version = 2 # keep me
root = '/var/lib/containerd'

[plugins]
  # CRI settings
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"   # the default
    default_runtime_name = "runc"

[proxy_plugins]
  # another snapshotter
  [proxy_plugins.stargz]
    type = "snapshot"
    address = "/run/stargz.sock"
  [proxy_plugins.cvmfs-snapshotter]
    type = "snapshot"
    address = "/run/old-go-daemon.sock" # containerd-cvmfs-grpc
`;
    put(t.ctd.containerdConfig, hand);
    await runPlan(t.o, await planContainerd(t.o, { ...t.ctd, kubernetes: true }, t.host), t.host, t.io, false);
    const after = readFileSync(t.ctd.containerdConfig, 'utf8');
    for (const keep of [
      '# node config — managed by hand',
      'version = 2 # keep me',
      "root = '/var/lib/containerd'",
      '  # CRI settings',
      '   # the default',
      '  # another snapshotter',
      '    address = "/run/stargz.sock"',
      '# containerd-cvmfs-grpc',
    ]) {
      expect(after).toContain(keep);
    }
    expect(after).toContain('    address = "/run/containerd-cvmfs-grpc/containerd-cvmfs-grpc.sock" # containerd-cvmfs-grpc');
    expect(after).toContain('    snapshotter = "cvmfs-snapshotter"   # the default');
    const doc = parseToml(after) as any;
    expect(doc.plugins['io.containerd.grpc.v1.cri'].containerd).toEqual({
      snapshotter: 'cvmfs-snapshotter',
      default_runtime_name: 'runc',
      disable_snapshot_annotations: false,
    });
    expect(doc.proxy_plugins.stargz).toEqual({ type: 'snapshot', address: '/run/stargz.sock' });
  });

  it.each([
    ['an inline proxy_plugins table', 'version = 2\nproxy_plugins = { other = { type = "snapshot", address = "/x" } }\n'],
    ['dotted keys', 'version = 2\n[proxy_plugins]\ncvmfs-snapshotter.type = "snapshot"\ncvmfs-snapshotter.address = "/old"\n'],
    [
      'an inline CRI table',
      'version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n  containerd = { snapshotter = "overlayfs", default_runtime_name = "runc" }\n',
    ],
    ['CRLF line endings', 'version = 2\r\n# a comment\r\n[grpc]\r\n  address = "/x"\r\n'],
  ])('edits a config written with %s, in its own style, to the same settings', async (_n, text) => {
    put(t.ctd.containerdConfig, text);
    await runPlan(t.o, await planContainerd(t.o, { ...t.ctd, kubernetes: true }, t.host), t.host, t.io, false);
    const after = readFileSync(t.ctd.containerdConfig, 'utf8');
    const doc = parseToml(after) as any;
    expect(doc.proxy_plugins['cvmfs-snapshotter']).toEqual({ type: 'snapshot', address: '/run/containerd-cvmfs-grpc/containerd-cvmfs-grpc.sock' });
    expect(doc.plugins['io.containerd.grpc.v1.cri'].containerd).toMatchObject({ snapshotter: 'cvmfs-snapshotter', disable_snapshot_annotations: false });
    if (text.includes('\r\n'))
      expect(
        after
          .split('\n')
          .slice(0, -1)
          .every((l) => l.endsWith('\r')),
      ).toBe(true);
    if (text.includes('other =')) expect(doc.proxy_plugins.other).toEqual({ type: 'snapshot', address: '/x' });
    if (text.includes('default_runtime_name'))
      expect(after).toMatch(/containerd = \{ snapshotter = "cvmfs-snapshotter", default_runtime_name = "runc", disable_snapshot_annotations = false \}/);
    expect(await runPlan(t.o, await planContainerd(t.o, { ...t.ctd, kubernetes: true }, t.host), t.host, t.io, false)).toBe(false);
  });

  it('edits a containerd 2.x (version 3) config: CRI image keys and the transfer-service export', async () => {
    const v3 = readFileSync(path.join(FIX, 'containerd-2.0-default.toml'), 'utf8');
    put(t.ctd.containerdConfig, v3);
    await runPlan(t.o, await planContainerd(t.o, { ...t.ctd, kubernetes: true }, t.host), t.host, t.io, false);
    const after = readFileSync(t.ctd.containerdConfig, 'utf8');
    const doc = parseToml(after) as any;
    expect(doc.plugins['io.containerd.cri.v1.images'].snapshotter).toBe('cvmfs-snapshotter');
    expect(doc.plugins['io.containerd.cri.v1.images'].disable_snapshot_annotations).toBe(false);
    expect(doc.proxy_plugins['cvmfs-snapshotter']).toEqual({
      type: 'snapshot',
      address: '/run/containerd-cvmfs-grpc/containerd-cvmfs-grpc.sock',
      exports: { enable_remote_snapshot_annotations: 'true' },
    });
    expect(doc.plugins['io.containerd.grpc.v1.cri']).toBeUndefined();
    expect(after).toContain('    snapshotter = "cvmfs-snapshotter"\n    disable_snapshot_annotations = false\n    discard_unpacked_layers = false\n');
    expect(after).toContain("  'io.containerd.timeout.bolt.open' = '0s'");
  });

  it("adds a bootstrap runtime handler on overlayfs with the default runtime's runc options (v2 and v3)", async () => {
    await runPlan(t.o, await planContainerd(t.o, { ...t.ctd, kubernetes: true, bootstrapRuntime: 'cvmfs-thin-bootstrap' }, t.host), t.host, t.io, false);
    const rts = (parseToml(readFileSync(t.ctd.containerdConfig, 'utf8')) as any).plugins['io.containerd.grpc.v1.cri'].containerd.runtimes;
    expect(rts['cvmfs-thin-bootstrap']).toEqual({ runtime_type: 'io.containerd.runc.v2', snapshotter: 'overlayfs', options: { ...rts.runc.options } });
    expect(Object.keys(rts.runc.options).length).toBeGreaterThan(3);
    const v3 = node();
    put(v3.ctd.containerdConfig, readFileSync(path.join(FIX, 'containerd-2.0-default.toml'), 'utf8'));
    await runPlan(v3.o, await planContainerd(v3.o, { ...v3.ctd, kubernetes: true, bootstrapRuntime: 'boot' }, v3.host), v3.host, v3.io, false);
    const doc = parseToml(readFileSync(v3.ctd.containerdConfig, 'utf8')) as any;
    expect(doc.plugins['io.containerd.cri.v1.runtime'].containerd.runtimes.boot).toEqual({ runtime_type: 'io.containerd.runc.v2', snapshotter: 'overlayfs' });
    await expect(planContainerd(v3.o, { ...v3.ctd, kubernetes: false, bootstrapRuntime: 'boot' }, v3.host)).rejects.toThrow(/needs --kubernetes/);
    await expect(planContainerd(v3.o, { ...v3.ctd, kubernetes: true, bootstrapRuntime: 'a b' }, v3.host)).rejects.toThrow(/bootstrap runtime name "a b"/);
  });

  it('creates a config when there is none (version 2 unless containerd is 2.x)', async () => {
    const fresh = node();
    await runPlan(fresh.o, await planContainerd(fresh.o, fresh.ctd, fresh.host), fresh.host, fresh.io, false);
    expect((parseToml(readFileSync(fresh.ctd.containerdConfig, 'utf8')) as any).version).toBe(2);
    const two = node();
    two.host.execHandler = () => ({ code: 0, stdout: 'containerd github.com/containerd/containerd/v2 v2.1.4 75cb2b7\n', stderr: '' });
    await runPlan(two.o, await planContainerd(two.o, two.ctd, two.host), two.host, two.io, false);
    expect((parseToml(readFileSync(two.ctd.containerdConfig, 'utf8')) as any).version).toBe(3);
  });

  it('changes nothing on a second run: no diff, no write, no systemctl', async () => {
    await runPlan(t.o, await planContainerd(t.o, { ...t.ctd, kubernetes: true }, t.host), t.host, t.io, false);
    const snap = t.snapshot();
    const second = node();
    t.out.length = 0;
    const did = await runPlan(t.o, await planContainerd(t.o, { ...t.ctd, kubernetes: true }, second.host), second.host, t.io, false);
    expect(did).toBe(false);
    expect(t.out.join('')).toBe('containerd: nothing to change\n');
    expect(t.snapshot()).toEqual(snap);
    expect(second.host.ops('exec').filter((c) => c.args[0] === 'systemctl')).toEqual([]);
  });

  it.skipIf(!hasBinary('patch'))('--dry-run prints exactly the diff that the real run writes, and changes nothing', async () => {
    const before = t.snapshot();
    await runPlan(t.o, await planContainerd(t.o, { ...t.ctd, kubernetes: true }, t.host), t.host, t.io, true);
    expect(t.snapshot()).toEqual(before);
    expect(execs(t.host)).toEqual([]);
    const printed = t.out.join('');
    expect(printed).toContain('would run:\n  systemctl daemon-reload\n');
    // apply the printed diff to a copy with patch(1): it must give the real run's result
    const copy = path.join(base, `patched${n}`);
    mkdirSync(copy);
    copyFileSync(t.ctd.containerdConfig, path.join(copy, 'config.toml'));
    const diff = printed.slice(0, printed.indexOf('--- /dev/null'));
    execFileSync('patch', ['-s', path.join(copy, 'config.toml')], { input: diff });
    await runPlan(t.o, await planContainerd(t.o, { ...t.ctd, kubernetes: true }, t.host), t.host, t.io, false);
    expect(readFileSync(path.join(copy, 'config.toml'), 'utf8')).toBe(readFileSync(t.ctd.containerdConfig, 'utf8'));
  });

  it('refuses a malformed config naming the line, and leaves it untouched', async () => {
    const lines = stock().split('\n');
    const bad = [...lines.slice(0, 20), '  oops = "unterminated', ...lines.slice(20)].join('\n');
    put(t.ctd.containerdConfig, bad);
    const line = bad.split('\n').findIndex((l) => l.includes('oops')) + 1;
    const before = t.snapshot();
    await expect(planContainerd(t.o, t.ctd, t.host)).rejects.toThrow(
      new RegExp(`config\\.toml: line ${line}, column \\d+: not valid TOML .*the file was not changed`),
    );
    expect(t.snapshot()).toEqual(before);
    expect(existsSync(t.o.stateDir)).toBe(false);
  });

  it('refuses version 1 files and tables in the way, untouched', async () => {
    put(t.ctd.containerdConfig, '[plugins.cri]\n  sandbox_image = "pause"\n');
    await expect(planContainerd(t.o, t.ctd, t.host)).rejects.toThrow(/no "version" key, so this is a version 1 configuration/);
    put(t.ctd.containerdConfig, 'version = 2\nproxy_plugins = "nope"\n');
    await expect(planContainerd(t.o, t.ctd, t.host)).rejects.toThrow(/proxy_plugins is not a table/);
    put(t.ctd.containerdConfig, 'version = 7\n');
    await expect(planContainerd(t.o, t.ctd, t.host)).rejects.toThrow(/version = 7 is not supported/);
    expect(readFileSync(t.ctd.containerdConfig, 'utf8')).toBe('version = 7\n');
  });

  it('--undo restores byte for byte (content and mode), removes what it created, and stops the unit', async () => {
    chmodSync(t.ctd.containerdConfig, 0o600);
    const before = t.snapshot();
    await runPlan(t.o, await planContainerd(t.o, { ...t.ctd, kubernetes: true }, t.host), t.host, t.io, false);
    expect(t.snapshot()).not.toEqual(before);
    t.host.calls.length = 0;
    await runUndo(t.o, 'containerd', t.host, t.io, false);
    expect(t.snapshot()).toEqual(before);
    expect(execs(t.host)).toEqual([
      'systemctl restart containerd.service',
      'systemctl disable --now cvmfs-thin-snapshotter.service',
      'systemctl daemon-reload',
    ]);
    t.out.length = 0;
    expect(await runUndo(t.o, 'containerd', t.host, t.io, false)).toBe(false);
    expect(t.out.join('')).toBe('containerd: nothing to undo\n');
  });

  it('--undo keeps a file another target still needs; the last one restores it', async () => {
    const before = t.snapshot();
    await runPlan(t.o, await planContainerd(t.o, t.ctd, t.host), t.host, t.io, false);
    await runPlan(t.o, await planDocker(t.o, { ...t.docker, mode: 'containerd-store', dockerVersion: '25.0.3' }, t.host), t.host, t.io, false);
    const daemon = JSON.parse(readFileSync(t.docker.daemonJson, 'utf8'));
    expect(daemon).toEqual({ features: { 'containerd-snapshotter': true }, 'storage-driver': 'cvmfs-snapshotter' });
    const ctdAfter = readFileSync(t.ctd.containerdConfig, 'utf8');
    await runUndo(t.o, 'docker', t.host, t.io, false);
    expect(existsSync(t.docker.daemonJson)).toBe(false);
    expect(readFileSync(t.ctd.containerdConfig, 'utf8')).toBe(ctdAfter);
    await runUndo(t.o, 'containerd', t.host, t.io, false);
    expect(t.snapshot()).toEqual(before);
  });

  it('a config that is a symbolic link stays one: its target is edited, and restored by --undo', async () => {
    const real = path.join(t.root, 'srv/shared/containerd.toml');
    put(real, stock());
    const { rmSync, symlinkSync, lstatSync } = await import('node:fs');
    rmSync(t.ctd.containerdConfig);
    symlinkSync(real, t.ctd.containerdConfig);
    await runPlan(t.o, await planContainerd(t.o, t.ctd, t.host), t.host, t.io, false);
    expect(lstatSync(t.ctd.containerdConfig).isSymbolicLink()).toBe(true);
    expect(readFileSync(real, 'utf8')).toContain('[proxy_plugins.cvmfs-snapshotter]');
    await runUndo(t.o, 'containerd', t.host, t.io, false);
    expect(lstatSync(t.ctd.containerdConfig).isSymbolicLink()).toBe(true);
    expect(readFileSync(real, 'utf8')).toBe(stock());
  });

  it('without systemd: prints the systemctl calls instead of running them', async () => {
    const o = { ...t.o, systemdRunning: false };
    await runPlan(o, await planContainerd(o, t.ctd, t.host), t.host, t.io, false);
    expect(execs(t.host)).toEqual([]);
    expect(t.out.join('')).toContain('systemd is not running here; run:\n  systemctl daemon-reload\n  systemctl enable cvmfs-thin-snapshotter.service\n');
  });

  it("--no-units: only containerd's config (the snapshotter runs elsewhere), another address from the snapshotter config", async () => {
    const o = { ...t.o, units: false };
    put(t.ctd.snapshotterConfig, 'address = "/run/elsewhere/sn.sock"\n');
    await runPlan(o, await planContainerd(o, t.ctd, t.host), t.host, t.io, false);
    expect((parseToml(readFileSync(t.ctd.containerdConfig, 'utf8')) as any).proxy_plugins['cvmfs-snapshotter'].address).toBe('/run/elsewhere/sn.sock');
    expect(existsSync(path.join(t.o.systemdDir, 'cvmfs-thin-snapshotter.service'))).toBe(false);
    expect(execs(t.host)).toEqual(['systemctl restart containerd.service']);
  });
});

describe('setup docker', () => {
  it('graph driver (20.10): experimental + storage-driver, other keys kept in order, the previous driver named', async () => {
    const t = node();
    put(
      t.docker.daemonJson,
      '{\n    "log-driver": "journald",\n    "storage-driver": "overlay2",\n    "storage-opts": ["overlay2.size=10G"],\n    "live-restore": true\n}\n',
    );
    const plan = await planDocker(t.o, t.docker, t.host);
    await runPlan(t.o, plan, t.host, t.io, false);
    const text = readFileSync(t.docker.daemonJson, 'utf8');
    expect(text).toBe('{\n    "log-driver": "journald",\n    "storage-driver": "cvmfs",\n    "live-restore": true,\n    "experimental": true\n}\n');
    expect(t.out.join('')).toMatch(/storage driver "overlay2" → "cvmfs": images and containers of the previous driver are hidden/);
    expect(t.out.join('')).toMatch(/removed "storage-opts"/);
    expect(readFileSync(path.join(t.o.systemdDir, 'cvmfs-thin-graphdriver.service'), 'utf8')).toContain('Before=docker.service');
    expect(existsSync(path.join(t.o.systemdDir, 'docker.service.d'))).toBe(false);
    expect(execs(t.host)).toEqual([
      'systemctl daemon-reload',
      'systemctl enable cvmfs-thin-graphdriver.service',
      'systemctl restart cvmfs-thin-graphdriver.service',
      'systemctl restart docker.service',
    ]);
  });

  it('Docker 27 gets the DOCKERD_DEPRECATED_GRAPHDRIVER_PLUGINS drop-in; 28 the containerd store; 19.03 is refused', async () => {
    const t = node();
    await runPlan(t.o, await planDocker(t.o, { ...t.docker, dockerVersion: '27.5.1' }, t.host), t.host, t.io, false);
    expect(readFileSync(path.join(t.o.systemdDir, 'docker.service.d/cvmfs-thin-graphdriver-plugins.conf'), 'utf8')).toContain(
      'Environment=DOCKERD_DEPRECATED_GRAPHDRIVER_PLUGINS=1',
    );
    expect(dockerMode('auto', [28, 0])).toBe('containerd-store');
    expect(dockerMode('auto', [24, 0])).toBe('graphdriver');
    expect(() => dockerMode('auto', [19, 3])).toThrow(/Docker 19\.3 is too old/);
    expect(() => dockerMode('graphdriver', [28, 1])).toThrow(/removed in 28/);
    expect(() => dockerMode('containerd-store', [20, 10])).toThrow(/24 or later/);
  });

  it('refuses a malformed daemon.json naming the line, untouched', async () => {
    const t = node();
    put(t.docker.daemonJson, '{\n  "debug": true,\n  "storage-driver": "overlay2",,\n}\n');
    const before = t.snapshot();
    await expect(planDocker(t.o, t.docker, t.host)).rejects.toThrow(/daemon\.json: line 3, column \d+: not valid JSON/);
    expect(t.snapshot()).toEqual(before);
  });

  it('second run changes nothing; --undo restores', async () => {
    const t = node();
    put(t.docker.daemonJson, '{"debug":true}');
    const before = t.snapshot();
    await runPlan(t.o, await planDocker(t.o, t.docker, t.host), t.host, t.io, false);
    const snap = t.snapshot();
    expect(await runPlan(t.o, await planDocker(t.o, t.docker, t.host), t.host, t.io, false)).toBe(false);
    expect(t.snapshot()).toEqual(snap);
    await runUndo(t.o, 'docker', t.host, t.io, false);
    expect(t.snapshot()).toEqual(before);
  });

  it('graph driver and volume plugin: names must differ (same run, or a plugin installed earlier)', async () => {
    const t = node();
    const vol = { volumeDriverName: 'cvmfs', volumePluginConfig: t.docker.volumePluginConfig, graphdriverConfig: t.docker.graphdriverConfig };
    await expect(planDocker(t.o, { ...t.docker, volumes: vol }, t.host)).rejects.toThrow(/would both be "cvmfs"/);
    await runPlan(t.o, await planVolumes(t.o, vol), t.host, t.io, false);
    await expect(planDocker(t.o, t.docker, t.host)).rejects.toThrow(/would both be "cvmfs"/);
    await runPlan(t.o, await planDocker(t.o, { ...t.docker, graphdriverName: 'cvmfs-gd' }, t.host), t.host, t.io, false);
    expect(readFileSync(t.docker.graphdriverConfig, 'utf8')).toMatch(/\nsocket = "\/run\/docker\/plugins\/cvmfs-gd\.sock"\n/);
    expect(JSON.parse(readFileSync(t.docker.daemonJson, 'utf8'))['storage-driver']).toBe('cvmfs-gd');
    expect(readFileSync(path.join(t.o.systemdDir, 'cvmfs-thin-volume-plugin.service'), 'utf8')).toContain(
      'ExecStart=/usr/bin/env cvmfs-thin volume-plugin --config=/etc/cvmfs-thin/volume-plugin.toml',
    );
  });
});

describe('packaged files', () => {
  it('setup installs exactly the units and config examples shipped in packaging/', async () => {
    const { renderUnit, configTemplate } = await import('../../src/ops/templates.js');
    const pk = (p: string) => readFileSync(path.resolve(import.meta.dirname, '../../packaging', p), 'utf8');
    expect(renderUnit('snapshotter')).toBe(pk('systemd/cvmfs-thin-snapshotter.service'));
    expect(renderUnit('graphdriver')).toBe(pk('graphdriver/cvmfs-thin-graphdriver.service'));
    expect(renderUnit('volume-plugin')).toBe(pk('dockervolume/cvmfs-thin-volume-plugin.service'));
    expect(configTemplate('snapshotter')).toBe(pk('systemd/config.toml'));
    expect(configTemplate('graphdriver')).toBe(pk('graphdriver/graphdriver.toml'));
    expect(configTemplate('volume-plugin')).toBe(pk('dockervolume/volume-plugin.toml'));
  });
});

/** `cvmfs-thin setup podman` on copies of a node's storage.conf (unprivileged): the edit, the store directory warnings, the undo hint. */
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { describe, expect, it } from 'vitest';
import { planPodman } from '../../src/ops/podman.js';
import { type CommonOptions, runPlan, runUndo } from '../../src/ops/setup.js';
import { CLI, needs, tempDir } from '../helpers/env.js';
import { runCli } from '../convert/cli.js';
import { RecordingHost } from '../helpers/recording-host.js';

const base = tempDir('ops-podman-');
let n = 0;

function node() {
  const root = path.join(base, `n${++n}`);
  mkdirSync(path.join(root, 'etc/containers'), { recursive: true });
  const o: CommonOptions = {
    rootPrefix: root,
    stateDir: path.join(root, 'state'),
    systemdDir: path.join(root, 'etc/systemd/system'),
    units: true,
    exec: 'cvmfs-thin',
    systemctl: ['systemctl'],
    systemdRunning: false,
    restart: true,
  };
  const conf = path.join(root, 'etc/containers/storage.conf');
  const out: string[] = [];
  const io = { out: (s: string) => void out.push(s) };
  const host = new RecordingHost();
  const plan = (fuse = false) => planPodman(o, { storageConf: conf, store: '/cvmfs/unpacked.cern.ch/podmanStore', fuseOverlayfs: fuse });
  return { o, conf, out, io, host, plan };
}

const DEBIAN_STYLE = `# This file is the configuration file for all tools
# that use the containers/storage library.
[storage]
# Default Storage Driver
driver = "overlay"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"

[storage.options]
# Paths to additional container image stores.
additionalimagestores = [
  "/srv/other-store",
]
`;

describe('setup podman', () => {
  it('adds the store to an existing list, keeps comments and other stores, and a second run changes nothing', async () => {
    const { o, conf, io, host, plan, out } = node();
    writeFileSync(conf, DEBIAN_STYLE);
    expect(await runPlan(o, await plan(), host, io, false)).toBe(true);
    const text = readFileSync(conf, 'utf8');
    expect(text).toContain('# Paths to additional container image stores.');
    expect((parseToml(text) as { storage: { options: { additionalimagestores: string[] } } }).storage.options.additionalimagestores).toEqual([
      '/srv/other-store',
      '/cvmfs/unpacked.cern.ch/podmanStore',
    ]);
    expect(await runPlan(o, await plan(), host, io, false)).toBe(false);
    expect(out.join('')).toContain('podman: nothing to change');
    expect(await runUndo(o, 'podman', host, io, false)).toBe(true);
    expect(readFileSync(conf, 'utf8')).toBe(DEBIAN_STYLE);
  });

  it('creates the file when there is none, with fuse-overlayfs on request', async () => {
    const { o, conf, io, host, plan } = node();
    await runPlan(o, await plan(true), host, io, false);
    const doc = parseToml(readFileSync(conf, 'utf8')) as {
      storage: { driver: string; options: { additionalimagestores: string[]; overlay: { mount_program: string } } };
    };
    expect(doc.storage.driver).toBe('overlay');
    expect(doc.storage.options.additionalimagestores).toEqual(['/cvmfs/unpacked.cern.ch/podmanStore']);
    expect(doc.storage.options.overlay.mount_program).toBe('/usr/bin/fuse-overlayfs');
  });

  it.each([
    ['[storage]\ndriver = "vfs"\n', /storage.driver is "vfs"/],
    ['[storage.options]\nadditionalimagestores = "/x"\n', /not a list of paths/],
    ['[storage\n', /line 1.*not valid TOML/],
  ])('refuses %j naming the problem, and leaves the file untouched', async (text, re) => {
    const { conf, plan } = node();
    writeFileSync(conf, text);
    await expect(plan()).rejects.toThrow(re);
    expect(readFileSync(conf, 'utf8')).toBe(text);
  });
});

describe('setup podman: the store directory and the undo hint', () => {
  it.each([
    ['missing', (_d: string) => undefined, /does not exist \(yet\): every podman and CRI-O command will fail \("can't stat imageStore dir"\)/],
    ['a file', (d: string) => writeFileSync(d, ''), /is not a directory: every podman and CRI-O command will fail/],
    ['an empty directory', (d: string) => mkdirSync(d, { recursive: true }), /holds no store yet \(no overlay-images\/\): podman lists no images from it/],
    ['a store', (d: string) => mkdirSync(path.join(d, 'overlay-images'), { recursive: true }), null],
  ])('the store is %s: warns accordingly (under --root-prefix)', async (_what, make, re) => {
    const { o } = node();
    const store = '/cvmfs/sw.example.org/podmanStore';
    mkdirSync(path.join(o.rootPrefix, '/cvmfs/sw.example.org'), { recursive: true });
    make(path.join(o.rootPrefix, store));
    const plan = await planPodman(o, { storageConf: path.join(o.rootPrefix, 'etc/containers/storage.conf'), store, fuseOverlayfs: false });
    const about = plan.warnings.filter((w) => w.startsWith(store));
    if (re === null) expect(about).toEqual([]);
    else expect(about).toEqual([expect.stringMatching(re)]);
  });

  it.skipIf(needs({ binaries: ['sh'] }))(
    'the printed undo command keeps --root-prefix, --state-dir and --storage-conf (quoted), and undoes the change when run',
    async () => {
      const root = path.join(base, 'cli node');
      mkdirSync(path.join(root, 'etc/containers'), { recursive: true });
      const state = path.join(base, "state dir's");
      const conf = path.join(root, 'etc/containers/my storage.conf');
      writeFileSync(conf, DEBIAN_STYLE);
      const r = await runCli([
        'setup',
        'podman',
        '--root-prefix',
        root,
        '--state-dir',
        state,
        '--storage-conf',
        conf,
        '--store',
        '/cvmfs/sw.example.org/podmanStore',
        '--no-restart',
      ]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/warning: \/cvmfs\/sw\.example\.org\/podmanStore does not exist/);
      const m = /\(undo: (cvmfs-thin setup podman --undo .*)\)\n/.exec(r.stdout);
      expect(m?.[1]).toBe(
        `cvmfs-thin setup podman --undo --root-prefix '${root}' --state-dir '${state.replace("'", "'\\''")}' --storage-conf '${conf}' --no-restart`,
      );
      expect(readFileSync(conf, 'utf8')).not.toBe(DEBIAN_STYLE);
      const undo = await new Promise<number | null>((res) => {
        const c = spawn('sh', ['-c', m![1]!.replace(/^cvmfs-thin /, `${JSON.stringify(process.execPath)} ${JSON.stringify(CLI)} `)], { stdio: 'ignore' });
        c.on('exit', (code) => res(code));
      });
      expect(undo).toBe(0);
      expect(readFileSync(conf, 'utf8')).toBe(DEBIAN_STYLE);
    },
  );
});

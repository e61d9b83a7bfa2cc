/** `cvmfs-thin setup podman` on copies of a node's storage.conf (unprivileged). */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { describe, expect, it } from 'vitest';
import { planPodman } from '../../src/ops/podman.js';
import { type CommonOptions, runPlan, runUndo } from '../../src/ops/setup.js';
import { tempDir } from '../helpers/env.js';
import { RecordingHost } from '../helpers/recording-host.js';

const base = tempDir('ops-podman-');
let n = 0;

function node() {
  const root = path.join(base, `n${++n}`);
  mkdirSync(path.join(root, 'etc/containers'), { recursive: true });
  const o: CommonOptions = { rootPrefix: root, stateDir: path.join(root, 'state'), systemdDir: path.join(root, 'etc/systemd/system'), units: true, exec: 'cvmfs-thin', systemctl: ['systemctl'], systemdRunning: false, restart: true };
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
    const doc = parseToml(readFileSync(conf, 'utf8')) as { storage: { driver: string; options: { additionalimagestores: string[]; overlay: { mount_program: string } } } };
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

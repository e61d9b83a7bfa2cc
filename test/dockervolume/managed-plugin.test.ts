/**
 * The managed (v2) plugin form: packaging/dockervolume/config.json checked
 * against the command it starts, then (root) built with build-plugin.sh,
 * installed with `docker plugin create/set/enable` on dockerd 20.10 and used
 * by containers: the mounts are made under PropagatedMount inside the
 * plugin and reach the containers through dockerd's propagated-mount dir.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { volumePluginCommand } from '../../src/cli/volume-plugin.js';
import { needs } from '../helpers/env.js';
import { type Dockerd, removeTestDir, run, shortTempDir, startDockerd } from '../graphdriver/harness.js';
import { loadBusybox, mountCount, mountsBelow } from './harness.js';

const PKG = path.resolve(import.meta.dirname, '../../packaging/dockervolume');

/** The mount table of the plugin process whose propagated mount comes from below `dir` (ours, not another test's). */
function pluginMountTable(dir: string): string[] {
  for (const pid of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    let cmd: string;
    let table: string;
    try {
      cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      if (!cmd.includes('volume-plugin')) continue;
      table = readFileSync(`/proc/${pid}/mountinfo`, 'utf8');
    } catch {
      continue;
    }
    const lines = table.split('\n');
    if (lines.some((l) => l.split(' ')[4] === '/var/lib/cvmfs-thin/volumes/mounts' && l.split(' ')[3]!.startsWith(dir))) return lines;
  }
  throw new Error(`no volume plugin process with a propagated mount from ${dir}`);
}

interface PluginConfig {
  Entrypoint: string[];
  Args: { Name: string; Settable: string[]; Value: string[] };
  Interface: { Types: string[]; Socket: string };
  Network: { Type: string };
  PropagatedMount: string;
  Mounts: { Name: string; Source: string; Destination: string; Type: string; Options: string[]; Settable: string[] }[];
  Linux: { Capabilities: string[]; AllowAllDevices: boolean; Devices: { Path: string }[] };
}

describe('managed plugin config.json', () => {
  const cfg = JSON.parse(readFileSync(path.join(PKG, 'config.json'), 'utf8')) as PluginConfig;
  const flag = (name: string) => {
    const i = cfg.Entrypoint.indexOf(name);
    return i < 0 ? undefined : cfg.Entrypoint[i + 1];
  };

  it('declares a volume driver on the socket the command listens on', () => {
    expect(cfg.Interface).toEqual({ Types: ['docker.volumedriver/1.0'], Socket: 'cvmfs.sock' });
    expect(cfg.Entrypoint.slice(1, 3)).toEqual(['/opt/cvmfs-thin/bin/cvmfs-thin.js', 'volume-plugin']);
    expect(flag('--socket')).toBe(`/run/docker/plugins/${cfg.Interface.Socket}`);
  });

  it("propagates the mount manager's mounts directory and sees the host's /cvmfs with slave propagation", () => {
    expect(cfg.PropagatedMount).toBe(path.join(flag('--state-dir')!, 'mounts'));
    const cvmfs = cfg.Mounts.find((m) => m.Destination === flag('--cvmfs-root'));
    expect(cvmfs).toMatchObject({ Name: 'cvmfs', Source: '/cvmfs', Type: 'bind', Settable: ['source'] });
    expect(cvmfs!.Options).toEqual(expect.arrayContaining(['rbind', 'rslave']));
    expect(cfg.Network.Type).toBe('host');
    expect(cfg.Linux.Capabilities).toContain('CAP_SYS_ADMIN');
    expect(cfg.Linux.AllowAllDevices).toBe(false);
    expect(cfg.Linux.Devices.map((d) => d.Path)).toEqual(['/dev/fuse']);
    expect(cfg.Args).toMatchObject({ Name: 'args', Settable: ['value'], Value: [] });
  });

  it('passes only flags the command knows', () => {
    const known = new Set(volumePluginCommand().options.map((o) => o.long));
    const flags = cfg.Entrypoint.slice(3).filter((a) => a.startsWith('--'));
    expect(flags.length).toBeGreaterThan(0);
    for (const f of flags) expect([f, known.has(f)]).toEqual([f, true]);
    expect(flag('--backend')).toBe('host');
  });
});

describe.skipIf(needs({ root: true, binaries: ['dockerd', 'containerd', 'runc', 'npm'] }))('managed plugin (docker plugin create)', () => {
  const PLUGIN = 'cvmfsvoltest/volume:latest';
  let dir: string;
  let cvmfs: string;
  let dockerd: Dockerd | undefined;
  let image: string;
  const docker = (args: string[]) => dockerd!.docker(args);

  beforeAll(async () => {
    dir = shortTempDir('dvm-');
    cvmfs = path.join(dir, 'cvmfs');
    mkdirSync(path.join(cvmfs, 'cms.cern.ch'), { recursive: true });
    writeFileSync(path.join(cvmfs, 'cms.cern.ch', 'README'), 'managed cms\n');
    mkdirSync(path.join(cvmfs, 'lhcb.cern.ch'), { recursive: true });
    await run('sh', [path.join(PKG, 'build-plugin.sh'), path.join(dir, 'pkg')], { timeoutMs: 170_000 });
  }, 180_000);

  afterAll(async () => {
    if (dockerd) {
      await docker(['rm', '-f', 'm1']).catch(() => undefined);
      await docker(['plugin', 'disable', '-f', PLUGIN]).catch(() => undefined);
      await docker(['plugin', 'rm', '-f', PLUGIN]).catch(() => undefined);
      await dockerd.stop();
    }
    if (dir) removeTestDir(dir);
  }, 120_000);

  it('installs with docker plugin create/set/enable', async () => {
    dockerd = await startDockerd(path.join(dir, 'd'), 'vfs');
    image = await loadBusybox(dockerd, dir);
    await docker(['plugin', 'create', PLUGIN, path.join(dir, 'pkg')]);
    await docker(['plugin', 'set', PLUGIN, `cvmfs.source=${cvmfs}`, 'args=--allowed-repository cms.cern.ch']);
    await docker(['plugin', 'enable', PLUGIN]);
    expect((await docker(['plugin', 'ls', '--format', '{{.Name}} {{.Enabled}}'])).stdout).toBe(`${PLUGIN} true\n`);
  }, 120_000);

  it('serves volumes to containers through the propagated mount, shares and releases them', async () => {
    await docker(['volume', 'create', '-d', PLUGIN, 'cms.cern.ch']);
    expect(
      (await docker(['run', '--rm', '--network', 'none', '-v', 'cms.cern.ch:/cvmfs/cms.cern.ch:ro', image, 'cat', '/cvmfs/cms.cern.ch/README'])).stdout,
    ).toBe('managed cms\n');
    await docker(['run', '-d', '--name', 'm1', '--network', 'none', '-v', 'cms.cern.ch:/c', image, 'sleep', '1000']);
    const pluginsDir = path.join(dir, 'd', 'root', 'plugins');
    const id = readdirSync(pluginsDir).find((n) => existsSync(path.join(pluginsDir, n, 'propagated-mount')))!;
    const propagated = path.join(pluginsDir, id, 'propagated-mount');
    // one backend mount inside the plugin; the host sees its propagated copies (one per peer of propagated-mount)
    expect(pluginMountTable(dir).filter((l) => l.split(' ')[4] === '/var/lib/cvmfs-thin/volumes/mounts/cms.cern.ch')).toHaveLength(1);
    const copies = mountCount(path.join(propagated, 'cms.cern.ch'));
    expect(copies).toBeGreaterThan(0);
    expect(new Set(mountsBelow(propagated))).toEqual(new Set([path.join(propagated, 'cms.cern.ch')]));
    const v = JSON.parse((await docker(['volume', 'inspect', 'cms.cern.ch'])).stdout) as { Driver: string; Mountpoint: string }[];
    // inspect shows the plugin's own path; dockerd rewrites it below propagated-mount only for Mount
    expect(v[0]).toMatchObject({ Driver: PLUGIN, Mountpoint: '/var/lib/cvmfs-thin/volumes/mounts/cms.cern.ch' });
    expect((await docker(['run', '--rm', '--network', 'none', '--volume-driver', PLUGIN, '-v', 'cms.cern.ch:/c', image, 'cat', '/c/README'])).stdout).toBe(
      'managed cms\n',
    );
    // read-only also in the propagated copies dockerd binds into containers (a volume without :ro)
    const w = await dockerd!.docker(['run', '--rm', '--network', 'none', '-v', 'cms.cern.ch:/c', image, 'sh', '-c', 'echo x > /c/written'], {
      allowFail: true,
    });
    expect(w.code).not.toBe(0);
    expect(w.stderr).toMatch(/Read-only file system/);
    expect(existsSync(path.join(dir, 'cvmfs', 'cms.cern.ch', 'written'))).toBe(false);
    expect(mountCount(path.join(propagated, 'cms.cern.ch'))).toBe(copies);
    expect(pluginMountTable(dir).filter((l) => l.split(' ')[4] === '/var/lib/cvmfs-thin/volumes/mounts/cms.cern.ch')).toHaveLength(1);
    await docker(['rm', '-f', 'm1']);
    expect(mountsBelow(propagated)).toEqual([]);
    // the plugin's args are honoured: lhcb.cern.ch exists but is not allowed
    const r = await dockerd!.docker(['volume', 'create', '-d', PLUGIN, 'lhcb.cern.ch'], { allowFail: true });
    expect(r.stderr).toContain('repository "lhcb.cern.ch" is not allowed on this node (allowed: cms.cern.ch)');
  }, 120_000);
});

/**
 * `cvmfs-thin graphdriver --volumes`: one process, one socket, one driver name
 * for both the storage driver and the volume driver (CERN used `cvmfs` for
 * both), with a real dockerd 20.10 that uses it as both.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readMountinfo } from '../../src/core/fs/fsutil.js';
import { needs } from '../helpers/env.js';
import { loadBusybox } from '../dockervolume/harness.js';
import { type Dockerd, type Plugin, pluginCall, removeTestDir, shortTempDir, startDockerd, startPlugin } from './harness.js';

describe.skipIf(needs({ root: true, binaries: ['dockerd', 'containerd', 'runc'] }))('graph driver and volume plugin on one socket', () => {
  const name = `cvmfsgdvol${process.pid}`;
  let dir: string;
  let plugin: Plugin | undefined;
  let dockerd: Dockerd | undefined;

  beforeAll(async () => {
    dir = shortTempDir('gdv-');
    const cvmfs = path.join(dir, 'cvmfs');
    mkdirSync(path.join(cvmfs, 'cms.cern.ch'), { recursive: true });
    writeFileSync(path.join(cvmfs, 'cms.cern.ch', 'README'), 'one socket\n');
    const volToml = path.join(dir, 'volumes.toml');
    writeFileSync(volToml, `state-dir = "${dir}/volumes"\nallowed-repositories = ["*.cern.ch"]\n`);
    plugin = await startPlugin(name, ['--state-dir', path.join(dir, 'gd'), '--cvmfs-root', cvmfs, '--volumes', '--volume-config', volToml]);
    dockerd = await startDockerd(path.join(dir, 'd'), name);
  }, 120_000);

  afterAll(async () => {
    await dockerd?.docker(['rm', '-f', 'gdv1'], { allowFail: true });
    await dockerd?.stop();
    await plugin?.stop();
    removeTestDir(dir);
  });

  it('activates with both interfaces and refuses bad volume names on the shared socket', async () => {
    const a = await pluginCall(plugin!.socket, 'Plugin.Activate');
    expect(a.json()).toEqual({ Implements: ['GraphDriver', 'VolumeDriver'] });
    expect((await pluginCall(plugin!.socket, 'VolumeDriver.Get', { Name: 'evil.example.org' })).json()['Err']).toMatch(
      /not allowed on this node \(allowed: \*\.cern\.ch\)/,
    );
  });

  it('dockerd uses it as storage driver and volume driver at once; the volume goes with the container', async () => {
    const info = await dockerd!.docker(['info', '--format', '{{.Driver}}']);
    expect(info.stdout.trim()).toBe(name);
    const image = await loadBusybox(dockerd!, dir);
    await dockerd!.docker([
      'run',
      '-d',
      '--name',
      'gdv1',
      '--network',
      'none',
      '--volume-driver',
      name,
      '-v',
      'cms.cern.ch:/cvmfs/cms.cern.ch',
      image,
      'sleep',
      '1000',
    ]);
    expect((await dockerd!.docker(['exec', 'gdv1', 'cat', '/cvmfs/cms.cern.ch/README'])).stdout).toBe('one socket\n');
    const w = await dockerd!.docker(['exec', 'gdv1', 'sh', '-c', 'echo x > /cvmfs/cms.cern.ch/w'], { allowFail: true });
    expect(w.code).not.toBe(0);
    expect(readMountinfo().filter((m) => m.mountPoint === path.join(dir, 'volumes', 'mounts', 'cms.cern.ch'))).toHaveLength(1);
    await dockerd!.docker(['rm', '-f', 'gdv1']);
    expect(readMountinfo().filter((m) => m.mountPoint.startsWith(path.join(dir, 'volumes')))).toEqual([]);
    expect(readFileSync(path.join(dir, 'cvmfs', 'cms.cern.ch', 'README'), 'utf8')).toBe('one socket\n');
  }, 120_000);
});

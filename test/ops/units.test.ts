/**
 * The systemd units (packaged, and as setup writes them) pass
 * `systemd-analyze verify`; a broken unit does not (negative control).
 */
import { execFile } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { DAEMONS, type Daemon, renderUnit } from '../../src/ops/templates.js';
import { CLI, needs, tempDir } from '../helpers/env.js';

const pexec = promisify(execFile);
const PACKAGING = path.resolve(import.meta.dirname, '../../packaging');
const PACKAGED: Record<Daemon, string> = {
  snapshotter: 'systemd/cvmfs-thin-snapshotter.service',
  graphdriver: 'graphdriver/cvmfs-thin-graphdriver.service',
  'volume-plugin': 'dockervolume/cvmfs-thin-volume-plugin.service',
};

async function verify(file: string): Promise<{ code: number; out: string }> {
  try {
    const r = await pexec('systemd-analyze', ['verify', file], { encoding: 'utf8' });
    return { code: 0, out: `${r.stdout}${r.stderr}` };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { code: x.code, out: `${x.stdout}${x.stderr}` };
  }
}

describe.skipIf(needs({ binaries: ['systemd-analyze'] }))('systemd units pass systemd-analyze verify', () => {
  const dir = tempDir('ops-units-');

  it.each(Object.entries(PACKAGED))('packaged %s unit', async (_d, rel) => {
    expect(await verify(path.join(PACKAGING, rel))).toEqual({ code: 0, out: '' });
  });

  it.each(Object.keys(DAEMONS) as Daemon[])('%s unit as setup writes it for this checkout (node + script)', async (d) => {
    const sub = path.join(dir, d);
    mkdirSync(sub, { recursive: true });
    const file = path.join(sub, DAEMONS[d].unit);
    writeFileSync(file, renderUnit(d, `${process.execPath} ${CLI}`, '/etc/cvmfs-thin/elsewhere.toml'));
    expect(await verify(file)).toEqual({ code: 0, out: '' });
  });

  it('a broken unit fails (negative control)', async () => {
    const file = path.join(dir, 'broken.service');
    writeFileSync(file, renderUnit('snapshotter', '/nonexistent/cvmfs-thin').replace('Before=', 'Befor='));
    const r = await verify(file);
    expect(r.code).not.toBe(0);
    expect(r.out).toMatch(/Unknown key 'Befor'/);
    expect(r.out).toMatch(/\/nonexistent\/cvmfs-thin is not executable/);
  });
});

/**
 * Ordinary images behave as with the in-tree overlay2 driver: the same image
 * and the same container commands on two dockerd 20.10 instances (overlay2,
 * and our plugin) give the same file listings, `docker diff` and committed
 * layer contents.
 *
 * `docker diff` is compared as a set, on a container that does not recreate a
 * deleted directory: dockerd 20.10's overlay2 answers Changes with the naive
 * tree comparison (map order, and every deleted child of a recreated
 * directory), while this driver answers like overlay2's native
 * OverlayChanges of Docker 23+ (walk order; a recreated, opaque directory is
 * one deletion).
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { needs } from '../helpers/env.js';
import { buildImage, busyboxEntries, writeDockerArchive } from '../helpers/oci-image.js';
import { type Dockerd, removeTestDir, shortTempDir, startDockerd, startPlugin, type Plugin } from './harness.js';

const SIMPLE = [
  'mkdir -p /data/sub && echo a > /data/sub/a && echo b > /data/b',
  'rm /etc/layer1-only /bin/wc',
  'echo changed > /etc/passwd',
  'ln -s /data/b /data/link && ln /data/b /data/hard',
  'chmod 700 /data',
].join(' && ');
const SCRIPT = `${SIMPLE} && rm -rf /opt/tree && mkdir /opt/tree && echo fresh > /opt/tree/new`;

const LISTING =
  'find / -xdev \\( -path /proc -o -path /sys -o -path /dev \\) -prune -o -print | sort | while read f; do stat -c "%n %A %u:%g %s %h" "$f"; done';

describe.skipIf(needs({ root: true, binaries: ['dockerd', 'containerd', 'runc'] }))('ordinary images: same behaviour as overlay2', () => {
  const name = `cvmfs-gd-parity-${process.pid}`;
  let dir: string;
  let plugin: Plugin;
  let ours: Dockerd;
  let ref: Dockerd;

  beforeAll(async () => {
    dir = shortTempDir('gdq-');
    await writeDockerArchive(
      path.join(dir, 'img.tar'),
      await buildImage('test/parity:1', [
        [
          ...busyboxEntries('p'),
          { path: 'etc/layer1-only', content: '1' },
          { path: 'opt/', type: 'dir' },
          { path: 'opt/tree/', type: 'dir' },
          { path: 'opt/tree/old', content: 'old' },
        ],
        [
          { path: 'etc/', type: 'dir' },
          { path: 'etc/.wh.salt', content: '' },
          { path: 'var/', type: 'dir' },
          { path: 'var/.wh..wh..opq', content: '' },
          { path: 'var/new', content: 'v' },
        ],
      ]),
    );
    plugin = await startPlugin(name, ['--state-dir', path.join(dir, 'state'), '--absolute-mountpoint', path.join(dir, 'nocvmfs')]);
    ours = await startDockerd(path.join(dir, 'a'), name);
    ref = await startDockerd(path.join(dir, 'b'), 'overlay2');
  });
  afterAll(async () => {
    await ours?.stop();
    await ref?.stop();
    await plugin?.stop();
    if (dir) removeTestDir(dir);
  });

  async function scenario(d: Dockerd): Promise<{ listing: string; diff: string[]; committed: string[]; after: string }> {
    await d.docker(['load', '-i', path.join(dir, 'img.tar')]);
    const listing = (await d.docker(['run', '--rm', '--network', 'none', 'test/parity:1', 'sh', '-c', LISTING])).stdout;
    await d.docker(['run', '--name', 'c0', '--network', 'none', 'test/parity:1', 'sh', '-c', SIMPLE]);
    const diff = (await d.docker(['diff', 'c0'])).stdout.trim().split('\n').sort();
    await d.docker(['run', '--name', 'c1', '--network', 'none', 'test/parity:1', 'sh', '-c', SCRIPT]);
    await d.docker(['commit', 'c1', 'test/parity:2']);
    const out = path.join(d.dir, 'save');
    mkdirSync(out, { recursive: true });
    await d.docker(['save', '-o', path.join(out, 'i.tar'), 'test/parity:2']);
    execFileSync('tar', ['-xf', path.join(out, 'i.tar'), '-C', out]);
    const m = JSON.parse(readFileSync(path.join(out, 'manifest.json'), 'utf8')) as { Layers: string[] }[];
    const top = m[0]!.Layers[m[0]!.Layers.length - 1]!;
    // names, types, modes, owners and sizes of the committed layer (not times)
    const committed = execFileSync('tar', ['--numeric-owner', '-tvf', path.join(out, top)])
      .toString()
      .trim()
      .split('\n')
      .map((l) => {
        const f = l.split(/\s+/);
        return `${f[0]} ${f[1]} ${f[2]} ${f.slice(5).join(' ')}`;
      })
      .sort();
    const after = (await d.docker(['run', '--rm', '--network', 'none', 'test/parity:2', 'sh', '-c', LISTING])).stdout;
    return { listing, diff, committed, after };
  }

  it('gives the same listing, docker diff, committed layer and result', async () => {
    const a = await scenario(ours);
    const b = await scenario(ref);
    expect(a.listing).toBe(b.listing);
    expect(a.listing).not.toContain('/etc/salt');
    expect(a.listing).toContain('/var/new');
    expect(a.diff).toEqual(b.diff);
    expect(a.diff).toContain('D /etc/layer1-only');
    expect(a.committed).toEqual(b.committed);
    expect(a.committed.some((l) => l.includes('opt/tree/.wh..wh..opq'))).toBe(true);
    expect(a.after).toBe(b.after);
  });
});

/**
 * The converter's hooks: `convert --podman-store` adds the image (also when
 * the tree is up to date), `--whiteouts keep` is accepted with a warning,
 * `gc` removes store entries of images it removes (listed with --dry-run).
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { beforeAll, describe, expect, it } from 'vitest';
import { checkPodmanStore } from '../../src/convert/podman/index.js';
import { needs, tempDir } from '../helpers/env.js';
import { json, runCli } from '../convert/cli.js';
import { buildLayer, writeLayout } from '../convert/images.js';

const readLayers = (repo: string) =>
  JSON.parse(fs.readFileSync(path.join(repo, 'podmanStore', 'overlay-layers', 'layers.json'), 'utf8')) as {
    'compressed-diff-digest': string;
    'diff-digest': string;
  }[];

interface Summary {
  images: { status: string; podman?: { image_id: string; status: string; names: string[] }; error: { message: string } | null }[];
}

describe.skipIf(needs({ root: true, binaries: ['tar', 'gzip'] }))('convert --podman-store and gc', () => {
  const work = tempDir('cvmfs-thin-podman-cli-');
  const repo = path.join(work, 'repo');
  const layout = path.join(work, 'layout');

  beforeAll(() => {
    fs.mkdirSync(repo);
    const s1 = path.join(work, 's1');
    fs.mkdirSync(path.join(s1, 'etc'), { recursive: true });
    fs.writeFileSync(path.join(s1, 'etc', 'gone'), 'x');
    const s2 = path.join(work, 's2');
    fs.mkdirSync(path.join(s2, 'etc'), { recursive: true });
    fs.writeFileSync(path.join(s2, 'etc', '.wh.gone'), '');
    const l1 = buildLayer(s1, 'gzip', path.join(work, 'b'), 'l1');
    const l2 = buildLayer(s2, 'gzip', path.join(work, 'b'), 'l2');
    writeLayout(layout, 'v1', [{ layers: [l1, l2] }]);
  });

  it('adds the converted image, and again when up to date only if missing', async () => {
    const args = ['convert', `oci:${layout}:v1`, '--repository-dir', repo, '--no-thin', '--name', 'localhost/cli/app:v1', '--podman-store', '--json'];
    const a = json<Summary>(await runCli(args));
    expect(a.images[0]).toMatchObject({ status: 'converted', podman: { status: 'added', names: ['localhost/cli/app:v1'] } });
    const b = json<Summary>(await runCli(args));
    expect(b.images[0]).toMatchObject({ status: 'skipped', podman: { status: 'present' } });
    fs.rmSync(path.join(repo, 'podmanStore'), { recursive: true });
    const c = json<Summary>(await runCli(args));
    expect(c.images[0]).toMatchObject({ status: 'skipped', podman: { status: 'added' } });
    expect((await checkPodmanStore(repo)).problems).toEqual([]);
    // each layer's tar-split rebuilds its tar from layerfs (what podman save does): the diff ID again
    for (const l of readLayers(repo)) {
      const dir = path.join(repo, '.layers', l['compressed-diff-digest'].slice(7, 9), l['compressed-diff-digest'].slice(7));
      const h = createHash('sha256');
      for (const line of gunzipSync(fs.readFileSync(path.join(dir, '.metadata', 'tar-split.json.gz')))
        .toString('utf8')
        .trim()
        .split('\n')) {
        const e = JSON.parse(line) as { type: number; name?: string; size?: number; payload: string };
        if (e.type === 2) h.update(Buffer.from(e.payload, 'base64'));
        else if (e.size) h.update(fs.readFileSync(path.join(dir, 'layerfs', e.name!)));
      }
      expect(`sha256:${h.digest('hex')}`).toBe(l['diff-digest']);
    }
  });

  it('gc removes the store entries of the images it removes', async () => {
    fs.rmSync(path.join(repo, '.metadata', 'localhost'), { recursive: true });
    const dry = json<{ podman: { removed_images: { names: string[] }[] } }>(
      await runCli(['gc', '--repository-dir', repo, '--grace', '0', '--dry-run', '--json']),
    );
    expect(dry.podman.removed_images.map((i) => i.names)).toEqual([['localhost/cli/app:v1']]);
    const r = json<{ podman: { removed_images: unknown[]; removed_layers: unknown[] } }>(
      await runCli(['gc', '--repository-dir', repo, '--grace', '0', '--json']),
    );
    expect(r.podman.removed_images).toHaveLength(1);
    expect(r.podman.removed_layers).toHaveLength(2);
    expect(await checkPodmanStore(repo)).toEqual({ images: 0, layers: 0, problems: [] });
  });
});

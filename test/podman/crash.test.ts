/**
 * Killed and concurrent writers, for real: converter processes adding
 * images to one store are killed with SIGKILL at arbitrary moments; after
 * every kill the store is one containers/storage reads (both JSON files
 * parse, every listed image is complete), and the next run completes and
 * repairs it. Two processes adding at once serialise on the store's lock
 * and lose nothing.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { checkPodmanStore } from '../../src/convert/podman/index.js';
import { CLI, needs, tempDir } from '../helpers/env.js';
import { makePodman } from './podman.js';
import { fakeImage, type FakeImage, readJson } from './tree.js';

const CHILD = path.join(import.meta.dirname, 'child.mjs');
const built = fs.existsSync(path.join(path.dirname(CLI), '..', 'dist', 'convert', 'podman', 'index.js'));

function writeList(file: string, images: FakeImage[]): void {
  fs.writeFileSync(
    file,
    JSON.stringify(images.map((i) => ({ ...i.input, manifest: i.input.manifest.toString('base64'), config: i.input.config.toString('base64') }))),
  );
}

function runChild(
  repo: string,
  list: string,
  killAfterMs?: number,
): Promise<{ code: number | null; signal: NodeJS.Signals | null; added: number; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CHILD, repo, list], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const t = killAfterMs !== undefined ? setTimeout(() => child.kill('SIGKILL'), killAfterMs) : undefined;
    child.on('exit', (code, signal) => {
      if (t) clearTimeout(t);
      resolve({ code, signal, added: out.split('\n').filter((l) => l.startsWith('added')).length, stderr });
    });
  });
}

describe.skipIf(!built ? 'needs `npm run build` (dist/)' : false)('podman store: killed and concurrent writers', () => {
  const work = tempDir('cvmfs-thin-podman-crash-');
  const repo = path.join(work, 'repo');
  let images: FakeImage[];
  const list = path.join(work, 'list.json');

  beforeAll(() => {
    fs.mkdirSync(repo);
    images = Array.from({ length: 24 }, (_, i) =>
      fakeImage(repo, `registry.example.org/app${i % 6}:${i}`, [{ seed: 'base' }, { seed: `mid${i % 4}` }, { seed: `top${i}` }]),
    );
    writeList(list, images);
  });

  it('a store killed at any moment stays readable, and the next run completes and repairs it', async () => {
    let kills = 0;
    for (const delay of [60, 140, 220, 300, 380, 460, 540, 700]) {
      const r = await runChild(repo, list, delay);
      if (r.signal === 'SIGKILL') kills++;
      else expect(r.code, r.stderr).toBe(0);
      if (!fs.existsSync(path.join(repo, 'podmanStore'))) continue; // killed before the store appeared
      // what a reader sees now: valid JSON, every listed image complete with its layers
      const c = await checkPodmanStore(repo);
      expect(c.problems, `after a kill at ${delay} ms`).toEqual([]);
    }
    expect(kills).toBeGreaterThan(0);
    const done = await runChild(repo, list);
    expect(done.code, done.stderr).toBe(0);
    const c = await checkPodmanStore(repo);
    expect(c.problems).toEqual([]);
    expect(c.images).toBe(24);
    expect(c.layers).toBe(1 + 4 + 24);
    const store = path.join(repo, 'podmanStore');
    expect(fs.existsSync(path.join(store, '.cvmfs-thin-update'))).toBe(false);
    for (const d of ['', 'overlay', 'overlay/l', 'overlay-layers', 'overlay-images']) {
      expect(fs.readdirSync(path.join(store, d)).filter((n) => n.includes('.tmp-'))).toEqual([]);
    }
    // no directory the JSON files do not list
    const ids = new Set(readJson<{ id: string }[]>(path.join(store, 'overlay-layers', 'layers.json')).map((l) => l.id));
    expect(fs.readdirSync(path.join(store, 'overlay')).filter((n) => n !== 'l' && n !== '.cvmfscatalog' && !ids.has(n))).toEqual([]);
  }, 120_000);

  it.skipIf(needs({ root: true, binaries: ['podman'] }))(
    'podman lists every image of a store killed mid-update',
    async () => {
      const repo3 = path.join(work, 'repo3');
      fs.mkdirSync(repo3);
      const imgs = Array.from({ length: 16 }, (_, i) => fakeImage(repo3, `registry.example.org/k${i}:1`, [{ seed: 'base' }, { seed: `k${i}` }]));
      writeList(path.join(work, 'k.json'), imgs);
      const podman = makePodman(path.join(work, 'podman'), { stores: [path.join(repo3, 'podmanStore')] });
      try {
        for (const delay of [150, 300, 450]) {
          await runChild(repo3, path.join(work, 'k.json'), delay);
          if (!fs.existsSync(path.join(repo3, 'podmanStore'))) continue;
          const file = path.join(repo3, 'podmanStore', 'overlay-images', 'images.json');
          const listed = (fs.existsSync(file) ? readJson<{ names: string[] }[]>(file) : []).flatMap((i) => i.names).sort();
          const seen = (JSON.parse((await podman.run(['images', '--format', 'json'])).stdout) as { Names: string[] }[]).flatMap((i) => i.Names).sort();
          expect(seen).toEqual(listed);
        }
        expect((await runChild(repo3, path.join(work, 'k.json'))).code).toBe(0);
        const seen = (JSON.parse((await podman.run(['images', '--format', 'json'])).stdout) as unknown[]).length;
        expect(seen).toBe(16);
      } finally {
        await podman.destroy();
      }
    },
    120_000,
  );

  it('two writers at once serialise on the store lock and lose nothing', async () => {
    const repo2 = path.join(work, 'repo2');
    fs.mkdirSync(repo2);
    const a = Array.from({ length: 12 }, (_, i) => fakeImage(repo2, `registry.one.org/a:${i}`, [{ seed: 'shared' }, { seed: `a${i}` }]));
    const b = Array.from({ length: 12 }, (_, i) => fakeImage(repo2, `registry.two.org/b:${i}`, [{ seed: 'shared' }, { seed: `b${i}` }]));
    writeList(path.join(work, 'a.json'), a);
    writeList(path.join(work, 'b.json'), b);
    const [ra, rb] = await Promise.all([runChild(repo2, path.join(work, 'a.json')), runChild(repo2, path.join(work, 'b.json'))]);
    expect(ra.code, ra.stderr).toBe(0);
    expect(rb.code, rb.stderr).toBe(0);
    const c = await checkPodmanStore(repo2);
    expect(c).toEqual({ images: 24, layers: 25, problems: [] });
    const names = readJson<{ names: string[] }[]>(path.join(repo2, 'podmanStore', 'overlay-images', 'images.json'))
      .flatMap((i) => i.names)
      .sort();
    expect(names).toEqual([...a, ...b].map((i) => i.input.names[0]!).sort());
  }, 120_000);
});

/**
 * A hostile layer inside an image (issue point 3, at the converter level):
 * the conversion of that image fails with an error naming image, layer and
 * entry; nothing is written outside the good layers' directories (in
 * particular nothing outside the repository directory); the image's other
 * layers are still unpacked; no temporary directory and no metadata remain.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { needs, tempDir } from '../helpers/env.js';
import { json, runCli } from './cli.js';
import { ATTACKS, CONTAINED, hostileTar, layerFromTar } from './hostile.js';
import { type BuiltLayer, buildLayer, writeLayout } from './images.js';

interface Summary {
  images: {
    status: string;
    layers: { digest: string; status: string }[];
    thin: unknown;
    error: { message: string; image?: string; layer?: string; entry?: string } | null;
  }[];
  failed: number;
}

function listTree(root: string): string[] {
  const out: string[] = [];
  const walk = (rel: string) => {
    for (const e of fs.readdirSync(path.join(root, rel), { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      out.push(r);
      if (e.isDirectory()) walk(r);
    }
  };
  walk('');
  return out.sort();
}

const passwdHash = () => createHash('sha256').update(fs.readFileSync('/etc/passwd')).digest('hex');

describe.skipIf(needs({ binaries: ['tar', 'gzip'] }))('hostile layers inside an image', () => {
  const work = tempDir('cvmfs-thin-hostile-');
  let good1: BuiltLayer;
  let good3: BuiltLayer;
  beforeAll(() => {
    const s1 = path.join(work, 's1');
    fs.mkdirSync(path.join(s1, 'etc'), { recursive: true });
    fs.writeFileSync(path.join(s1, 'etc/one'), '1\n');
    good1 = buildLayer(s1, 'gzip', path.join(work, 'blobs'), 'good1');
    const s3 = path.join(work, 's3');
    fs.mkdirSync(path.join(s3, 'etc'), { recursive: true });
    fs.writeFileSync(path.join(s3, 'etc/three'), '3\n');
    good3 = buildLayer(s3, 'gzip', path.join(work, 'blobs'), 'good3');
  });

  it.each(ATTACKS.map((a, i) => [a.name, i] as const))('%s: refused, named, contained; the other layers are unpacked', async (_name, i) => {
    const attack = ATTACKS[i]!;
    const bad = layerFromTar(await hostileTar(attack.entries), path.join(work, 'blobs', `bad${i}.gz`));
    const layout = path.join(work, `layout${i}`);
    writeLayout(layout, 'v1', [{ layers: [good1, bad, good3] }]);
    const repo = path.join(work, `repo${i}`);
    fs.mkdirSync(repo);
    const outsideBefore = listTree(work).filter((p) => !p.startsWith(`repo${i}`));
    const tmpBefore = fs.readdirSync('/tmp').filter((n) => n.startsWith('escaped'));
    const passwd = passwdHash();

    const r = await runCli(['convert', `oci:${layout}:v1`, '--repository-dir', repo, '--json']);
    expect(r.code).toBe(1);
    const s = json<Summary>(r);
    const img = s.images[0]!;
    expect(img.status).toBe('failed');
    expect(img.thin).toBeNull();
    expect(img.error?.image).toBe(`oci:${layout}:v1`);
    expect(img.error?.layer).toBe(`2/3 ${bad.digest}`);
    expect(img.error?.entry).toBe(attack.entry);
    expect(img.error?.message).toContain(`image oci:${layout}:v1: layer 2/3 ${bad.digest}: entry ${JSON.stringify(attack.entry)}: `);
    expect(img.layers.map((l) => l.status)).toEqual(['unpacked', 'failed', 'unpacked']);

    // nothing outside: the work dir (outside this repository), /tmp, /etc/passwd are unchanged
    expect(listTree(work).filter((p) => !p.startsWith(`repo${i}`))).toEqual(outsideBefore);
    expect(fs.readdirSync('/tmp').filter((n) => n.startsWith('escaped'))).toEqual(tmpBefore);
    expect(passwdHash()).toBe(passwd);
    // inside the repository: only the two good layers (complete), catalog markers and the empty metadata dir
    const allowed = (p: string) =>
      p === '.layers' ||
      p === '.metadata' ||
      p === '.layers/.cvmfscatalog' ||
      /^\.layers\/[0-9a-f]{2}(\/\.cvmfscatalog)?$/.test(p) ||
      [good1, good3].some((l) => p.startsWith(`.layers/${l.digest.slice(7, 9)}/${l.digest.slice(7)}`));
    expect(listTree(repo).filter((p) => !allowed(p))).toEqual([]);
    for (const l of [good1, good3]) {
      expect(fs.existsSync(path.join(repo, '.layers', l.digest.slice(7, 9), l.digest.slice(7), '.metadata/cvmfs-thin-layer.json'))).toBe(true);
    }
    expect(fs.readdirSync(path.join(repo, '.metadata'))).toEqual([]);
    expect(r.stderr).not.toMatch(/at .*\.js:\d+/); // a clear message, not a stack trace
  });

  it.each(CONTAINED.map((a, i) => [a.name, i] as const))('%s: contained inside the layer', async (_name, i) => {
    const attack = CONTAINED[i]!;
    const layer = layerFromTar(await hostileTar(attack.entries), path.join(work, 'blobs', `contained${i}.gz`));
    const layout = path.join(work, `clayout${i}`);
    writeLayout(layout, 'v1', [{ layers: [good1, layer] }]);
    const repo = path.join(work, `crepo${i}`);
    fs.mkdirSync(repo);
    const outsideBefore = listTree(work).filter((p) => !p.startsWith(`crepo${i}`));
    const etcBefore = fs.readdirSync('/etc');
    const r = await runCli(['convert', `oci:${layout}:v1`, '--repository-dir', repo, '--no-thin', '--json']);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const rootfs = path.join(repo, '.layers', layer.digest.slice(7, 9), layer.digest.slice(7), 'layerfs');
    expect(fs.readFileSync(path.join(rootfs, attack.inside), 'utf8')).toBe('x');
    expect(listTree(work).filter((p) => !p.startsWith(`crepo${i}`))).toEqual(outsideBefore);
    expect(fs.readdirSync('/etc')).toEqual(etcBefore);
    expect(fs.readdirSync('/tmp').filter((n) => n.startsWith('escaped'))).toEqual([]);
  });

  it('enforces --max-layer-entries and --max-layer-size (a decompression bomb stops early)', async () => {
    const st = path.join(work, 'bomb');
    fs.mkdirSync(path.join(st, 'd'), { recursive: true });
    for (let i = 0; i < 20; i++) fs.writeFileSync(path.join(st, 'd', `f${i}`), Buffer.alloc(1 << 20));
    const bomb = buildLayer(st, 'gzip', path.join(work, 'blobs'), 'bomb');
    const layout = path.join(work, 'layout-bomb');
    writeLayout(layout, 'v1', [{ layers: [bomb] }]);
    const repo = path.join(work, 'repo-bomb');
    fs.mkdirSync(repo);
    const many = await runCli(['convert', `oci:${layout}:v1`, '--repository-dir', repo, '--no-thin', '--json', '--max-layer-entries', '5']);
    expect(many.code).toBe(1);
    expect(json<Summary>(many).images[0]!.error?.message).toMatch(/layer 1\/1 sha256:[0-9a-f]{64}: .*too-many-entries/);
    const big = await runCli(['convert', `oci:${layout}:v1`, '--repository-dir', repo, '--no-thin', '--json', '--max-layer-size', '4M']);
    expect(big.code).toBe(1);
    expect(json<Summary>(big).images[0]!.error?.message).toMatch(/layer 1\/1 sha256:[0-9a-f]{64}: .*too-large/);
    expect(fs.readdirSync(path.join(repo, '.layers', bomb.digest.slice(7, 9)))).toEqual(['.cvmfscatalog']);
    const bad = await runCli(['convert', `oci:${layout}:v1`, '--repository-dir', repo, '--max-layer-size', 'lots']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--max-layer-size: "lots" is not a size/);
  });

  it('prints the same clear message without --json', async () => {
    const bad = layerFromTar(await hostileTar(ATTACKS[0]!.entries), path.join(work, 'blobs', 'plain.gz'));
    const layout = path.join(work, 'layout-plain');
    writeLayout(layout, 'v1', [{ layers: [good1, bad] }]);
    const repo = path.join(work, 'repo-plain');
    fs.mkdirSync(repo);
    const r = await runCli(['convert', `oci:${layout}:v1`, '--repository-dir', repo]);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr.trim()).toMatch(
      new RegExp(
        `^cvmfs-thin: image oci:${layout}:v1: layer 2/2 ${bad.digest}: entry "\\.\\./\\.\\./\\.\\./\\.\\./escaped-dotdot": .*\\(path-escape\\) \\(CVMFS_THIN_UNSAFE_TAR\\)$`,
      ),
    );
  });
});

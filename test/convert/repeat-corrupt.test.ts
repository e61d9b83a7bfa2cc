/**
 * Issue 10 (6) and (7) through the CLI: a repeat conversion is skipped
 * whatever form the --thin target takes (oci-archive:FILE, oci:DIR,
 * docker-archive:FILE without tag or name, and the same with one), and a
 * layer blob with one flipped byte is reported as not matching its digest,
 * not as the tar reader's or zlib's complaint.
 */
import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { needs, tempDir } from '../helpers/env.js';
import { json, runCli } from './cli.js';
import { buildLayer, type Compression, writeLayout } from './images.js';

interface Summary {
  converted: number;
  skipped: number;
  failed: number;
  images: { status: string; thin: { target: string; digest: string } | null; error: { code: string; kind: string; message: string } | null }[];
}

describe.skipIf(needs({ binaries: ['tar', 'gzip'] }))('repeat conversions and corrupt blobs', () => {
  const work = tempDir('cvmfs-thin-convert-repeat-');
  const layouts: Partial<Record<Compression, string>> = {};

  beforeAll(() => {
    const st = path.join(work, 'st');
    fs.mkdirSync(path.join(st, 'etc'), { recursive: true });
    for (let i = 0; i < 20; i++) fs.writeFileSync(path.join(st, 'etc', `file-${i}`), `content ${i}\n`.repeat(200));
    for (const c of ['none', 'gzip'] as const) {
      const layout = path.join(work, `layout-${c}`);
      writeLayout(layout, 'v1', [{ layers: [buildLayer(st, c, path.join(work, `blobs-${c}`), 'l')] }]);
      layouts[c] = layout;
    }
  });

  const stamp = (p: string) => {
    const s = fs.statSync(p);
    return `${s.ino}:${s.mtimeMs}:${s.size}`;
  };

  it.each([
    ['oci-archive:FILE', (d: string) => `oci-archive:${path.join(d, 'thin.tar')}`, (d: string) => path.join(d, 'thin.tar')],
    ['oci-archive:FILE:TAG', (d: string) => `oci-archive:${path.join(d, 'thin.tar')}:t1`, (d: string) => path.join(d, 'thin.tar')],
    ['oci:DIR', (d: string) => `oci:${path.join(d, 'thin-layout')}`, (d: string) => path.join(d, 'thin-layout', 'index.json')],
    ['oci:DIR:TAG', (d: string) => `oci:${path.join(d, 'thin-layout')}:t1`, (d: string) => path.join(d, 'thin-layout', 'index.json')],
    ['docker-archive:FILE', (d: string) => `docker-archive:${path.join(d, 'thin-docker.tar')}`, (d: string) => path.join(d, 'thin-docker.tar')],
  ])('--thin %s: the second run is skipped and does not write the target again', async (_name, target, written) => {
    const d = fs.mkdtempSync(path.join(work, 'run-'));
    const repo = path.join(d, 'repo');
    fs.mkdirSync(repo);
    const args = ['convert', `oci:${layouts.gzip}:v1`, '--repository-dir', repo, '--thin', target(d), '--json'];
    const first = json<Summary>(await runCli(args));
    expect(first).toMatchObject({ converted: 1, skipped: 0, failed: 0 });
    const before = stamp(written(d));
    const second = json<Summary>(await runCli(args));
    expect(second).toMatchObject({ converted: 0, skipped: 1, failed: 0 });
    expect(second.images[0]!.thin).toEqual(first.images[0]!.thin);
    expect(stamp(written(d))).toBe(before);
    // a different target is a different conversion
    const third = json<Summary>(
      await runCli(['convert', `oci:${layouts.gzip}:v1`, '--repository-dir', repo, '--thin', `oci:${path.join(d, 'elsewhere')}`, '--json']),
    );
    expect(third).toMatchObject({ converted: 1, skipped: 0 });
  });

  it.each([
    ['plain tar', 'none' as const, () => 5],
    ['gzip', 'gzip' as const, (size: number) => Math.floor(size / 2)],
  ])('a %s layer with one flipped byte is reported as not matching its digest', async (_name, c, offset) => {
    const layout = path.join(work, `corrupt-${c}`);
    fs.cpSync(layouts[c]!, layout, { recursive: true });
    const manifest = JSON.parse(fs.readFileSync(path.join(layout, 'index.json'), 'utf8')) as { manifests: { digest: string }[] };
    const m = JSON.parse(fs.readFileSync(path.join(layout, 'blobs/sha256', manifest.manifests[0]!.digest.slice(7)), 'utf8')) as {
      layers: { digest: string }[];
    };
    const layerDigest = m.layers[0]!.digest;
    const blob = path.join(layout, 'blobs/sha256', layerDigest.slice(7));
    const bytes = fs.readFileSync(blob);
    bytes[offset(bytes.length)]! ^= 0x20;
    fs.writeFileSync(blob, bytes);

    const repo = path.join(work, `repo-corrupt-${c}`);
    fs.mkdirSync(repo);
    const r = await runCli(['convert', `oci:${layout}:v1`, '--repository-dir', repo, '--no-thin', '--json']);
    expect(r.code).not.toBe(0);
    const s = json<Summary>(r);
    expect(s.failed).toBe(1);
    const err = s.images[0]!.error!;
    expect(err).toMatchObject({ code: 'CVMFS_THIN_DIGEST_MISMATCH', kind: 'invalid-argument' });
    expect(err.message).toContain(`blob ${layerDigest} does not match its digest: content has digest sha256:`);
    expect(err.message).not.toMatch(/checksum|incorrect header|unexpected end/);
    // nothing half-unpacked is left at the final name
    expect(fs.existsSync(path.join(repo, '.layers', layerDigest.slice(7, 9), layerDigest.slice(7)))).toBe(false);
  });
});

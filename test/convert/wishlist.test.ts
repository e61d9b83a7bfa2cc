/**
 * `cvmfs-thin wishlist` with a DUCC recipe against a real registry: `*` tag
 * globs over the tag list, output_format, concurrency, a hostile and a
 * missing image that fail without stopping the others, a non-zero exit with
 * a summary, and a second run that skips what is done.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/core/telemetry/log.js';
import { RegistryClient } from '../../src/convert/registry/client.js';
import { needs, tempDir } from '../helpers/env.js';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { json, runCli } from './cli.js';
import { ATTACKS, hostileTar, layerFromTar } from './hostile.js';
import { buildLayer, skopeoPush, writeLayout } from './images.js';

interface WlSummary {
  images: { source: string; status: string; thin: { target: string } | null; error: { message: string } | null }[];
  expansion_errors: { input: string; message: string }[];
  converted: number;
  skipped: number;
  failed: number;
}

describe.skipIf(needs({ binaries: ['docker-registry', 'skopeo', 'tar', 'gzip', 'openssl'] }))('wishlist (DUCC recipe)', () => {
  const work = tempDir('cvmfs-thin-wishlist-');
  let reg: TestRegistry;
  let recipe: string;
  const repo = path.join(work, 'repo');

  beforeAll(async () => {
    reg = await startRegistry();
    const base = path.join(work, 'base');
    fs.mkdirSync(path.join(base, 'bin'), { recursive: true });
    fs.copyFileSync('/bin/busybox', path.join(base, 'bin/busybox'));
    const baseLayer = buildLayer(base, 'gzip', path.join(work, 'blobs'), 'base');
    const layout = path.join(work, 'layout');
    for (const tag of ['1.0', '1.1', '1.10', '2.0']) {
      const st = path.join(work, `st-${tag}`);
      fs.mkdirSync(path.join(st, 'etc'), { recursive: true });
      fs.writeFileSync(path.join(st, 'etc/version'), `${tag}\n`);
      writeLayout(layout, tag, [{ layers: [baseLayer, buildLayer(st, 'gzip', path.join(work, 'blobs'), `v${tag}`)] }]);
      await skopeoPush(layout, tag, `docker://${reg.host}/wl/app:${tag}`);
    }
    writeLayout(layout, 'other', [{ layers: [baseLayer] }]);
    await skopeoPush(layout, 'other', `docker://${reg.host}/wl/other:latest`);
    const bad = layerFromTar(await hostileTar(ATTACKS[0]!.entries), path.join(work, 'blobs', 'bad.gz'));
    writeLayout(layout, 'bad', [{ layers: [baseLayer, bad] }]);
    await skopeoPush(layout, 'bad', `docker://${reg.host}/wl/bad:1`);
    recipe = path.join(work, 'recipe.yaml');
    fs.writeFileSync(
      recipe,
      [
        'version: 1',
        'user: cvmfsunpacker',
        "cvmfs_repo: 'unpacked.cern.ch'",
        `output_format: 'http://${reg.host}/thin/$(image)'`,
        'input:',
        `    - 'http://${reg.host}/wl/app:1.*'`,
        `    - 'http://${reg.host}/wl/other:latest'`,
        `    - 'http://${reg.host}/wl/bad:1'`,
        `    - 'http://${reg.host}/wl/missing:1'`,
        `    - 'http://${reg.host}/wl/app:9.*'`,
        '',
      ].join('\n'),
    );
    fs.mkdirSync(repo);
  });
  afterAll(async () => {
    await reg?.stop();
  });

  it('--dry-run expands the globs and names the thin images', async () => {
    const r = await runCli(['wishlist', recipe, '--repository-dir', repo, '--dry-run']);
    expect(r.code).toBe(1); // the glob that matches nothing
    expect(r.stdout.trim().split('\n')).toEqual([
      `docker://${reg.host}/wl/app:1.0 -> http://${reg.host}/thin/wl/app:1.0`,
      `docker://${reg.host}/wl/app:1.1 -> http://${reg.host}/thin/wl/app:1.1`,
      `docker://${reg.host}/wl/app:1.10 -> http://${reg.host}/thin/wl/app:1.10`,
      `docker://${reg.host}/wl/other:latest -> http://${reg.host}/thin/wl/other:latest`,
      `docker://${reg.host}/wl/bad:1 -> http://${reg.host}/thin/wl/bad:1`,
      `docker://${reg.host}/wl/missing:1 -> http://${reg.host}/thin/wl/missing:1`,
    ]);
    expect(r.stderr).toMatch(/no tag of .*wl\/app matches "9\.\*"/);
    expect(fs.readdirSync(repo)).toEqual([]);
  });

  it('converts what is missing, continues past failures, exits non-zero with a summary', async () => {
    const r = await runCli(['wishlist', recipe, '--repository-dir', repo, '--image-jobs', '3', '--json']);
    expect(r.code).toBe(1);
    const s = json<WlSummary>(r);
    expect(s.converted).toBe(4);
    expect(s.failed).toBe(3);
    const byStatus = (st: string) =>
      s.images
        .filter((i) => i.status === st)
        .map((i) => i.source)
        .sort();
    expect(byStatus('converted')).toEqual(
      ['1.0', '1.1', '1.10']
        .map((t) => `docker://${reg.host}/wl/app:${t}`)
        .concat(`docker://${reg.host}/wl/other:latest`)
        .sort(),
    );
    expect(s.images.find((i) => i.source.endsWith('wl/bad:1'))?.error?.message).toMatch(
      /layer 2\/2 sha256:[0-9a-f]{64}: entry "\.\.\/\.\.\/\.\.\/\.\.\/escaped-dotdot"/,
    );
    expect(s.images.find((i) => i.source.endsWith('wl/missing:1'))?.error?.message).toMatch(/wl\/missing: manifest 1: HTTP 404/);
    expect(s.expansion_errors.map((e) => e.input)).toEqual([`http://${reg.host}/wl/app:9.*`]);
    const c = new RegistryClient({ registry: reg.host, credentials: null, log: silentLogger() });
    for (const t of ['1.0', '1.1', '1.10']) expect(await c.headManifest('thin/wl/app', t)).not.toBeNull();
    expect(await c.headManifest('thin/wl/app', '2.0')).toBeNull();
    expect(fs.readFileSync(path.join(repo, '.metadata', reg.host, 'wl/app:1.10', 'manifest.json')).length).toBeGreaterThan(0);
  });

  it('a second run skips what is done', async () => {
    const r = await runCli(['wishlist', recipe, '--repository-dir', repo, '--json']);
    const s = json<WlSummary>(r);
    expect(r.code).toBe(1);
    expect(s).toMatchObject({ converted: 0, skipped: 4, failed: 3 });
  });

  it('refuses a bad recipe with a clear message', async () => {
    const bad = path.join(work, 'bad.yaml');
    fs.writeFileSync(bad, "version: 1\ncvmfs_repo: 'unpacked.cern.ch'\ninput:\n  - 'centos:7'\n");
    const r = await runCli(['wishlist', bad, '--repository-dir', repo]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/recipe .*bad\.yaml: input\[0\]: image "centos:7": impossible to identify the registry/);
  });
});

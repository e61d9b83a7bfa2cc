/**
 * `cvmfs-thin gc`: unreferenced layers, chains and flat trees older than the
 * grace period go (listed first with --dry-run); referenced ones and young
 * ones stay; leftovers of dead converters go.
 */
import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { chainDir, duccChainIds, flatDir, layerDir } from '../../src/core/cvmfs/layout.js';
import { needs, tempDir } from '../helpers/env.js';
import { json, runCli } from './cli.js';
import { type BuiltLayer, buildLayer, writeLayout } from './images.js';

interface GcReport {
  dry_run: boolean;
  removed: { kind: string; path: string }[];
  kept_recent: { kind: string; path: string }[];
  referenced: { layers: number; chains: number; flat: number; images: number };
}

describe.skipIf(needs({ binaries: ['tar', 'gzip'] }))('gc', () => {
  const work = tempDir('cvmfs-thin-gc-');
  const repo = path.join(work, 'repo');
  let l1: BuiltLayer;
  let l2: BuiltLayer;
  let l3: BuiltLayer;
  let cfgA: string;
  let cfgB: string;
  const old = (p: string) => {
    const t = new Date(Date.now() - 3 * 86_400_000);
    fs.utimesSync(p, t, t);
  };

  beforeAll(async () => {
    const mk = (name: string) => {
      const st = path.join(work, `st-${name}`);
      fs.mkdirSync(path.join(st, 'etc'), { recursive: true });
      fs.writeFileSync(path.join(st, 'etc', name), `${name}\n`);
      return buildLayer(st, 'gzip', path.join(work, 'blobs'), name);
    };
    l1 = mk('one');
    l2 = mk('two');
    l3 = mk('three');
    const la = path.join(work, 'la');
    const lb = path.join(work, 'lb');
    cfgA = writeLayout(la, 'a', [{ layers: [l1, l2] }]).images[0]!.configDigest;
    cfgB = writeLayout(lb, 'b', [{ layers: [l1, l3], config: { Env: ['B=1'] } }]).images[0]!.configDigest;
    fs.mkdirSync(repo);
    for (const [lay, tag, name] of [
      [la, 'a', 'example.org/app:a'],
      [lb, 'b', 'example.org/app:b'],
    ] as const) {
      const r = await runCli(['convert', `oci:${lay}:${tag}`, '--repository-dir', repo, '--name', name, '--chains', '--flat', '--no-thin', '--json']);
      expect(r.code, r.stderr).toBe(0);
    }
    // image b is deleted from the tree; a killed converter left a temporary directory
    fs.rmSync(path.join(repo, '.metadata/example.org/app:b'), { recursive: true });
    fs.rmSync(path.join(repo, 'example.org/app:b'));
    fs.mkdirSync(path.join(repo, '.layers', l3.digest.slice(7, 9), `.tmp-${l3.digest.slice(7)}-999999-deadbeef`, 'layerfs'), { recursive: true });
  });

  it('keeps unreferenced items within the grace period, removes dead temporaries', async () => {
    const r = await runCli(['gc', '--repository-dir', repo, '--grace', '1d', '--dry-run', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const g = json<GcReport>(r);
    expect(g.removed.map((x) => x.kind)).toEqual(['temporary']);
    const hB = duccChainIds([l1, l3].map((l) => l.digest.slice(7)));
    expect(g.kept_recent.map((x) => x.path).sort()).toEqual([layerDir(repo, l3.digest.slice(7)), chainDir(repo, hB[1]!), flatDir(repo, cfgB.slice(7))].sort());
    expect(g.referenced).toEqual({ layers: 2, chains: 2, flat: 1, images: 1 });
  });

  it('--dry-run lists old unreferenced items and removes nothing; then gc removes exactly them', async () => {
    const hB = duccChainIds([l1, l3].map((l) => l.digest.slice(7)));
    const victims = [layerDir(repo, l3.digest.slice(7)), chainDir(repo, hB[1]!), flatDir(repo, cfgB.slice(7))];
    for (const v of victims) old(v);
    // old but referenced: must stay
    old(layerDir(repo, l1.digest.slice(7)));
    old(flatDir(repo, cfgA.slice(7)));
    const dry = json<GcReport>(await runCli(['gc', '--repository-dir', repo, '--grace', '2d', '--dry-run', '--json']));
    expect(dry.dry_run).toBe(true);
    expect(
      dry.removed
        .filter((x) => x.kind !== 'temporary')
        .map((x) => x.path)
        .sort(),
    ).toEqual([...victims].sort());
    for (const v of victims) expect(fs.existsSync(v)).toBe(true);

    const real = await runCli(['gc', '--repository-dir', repo, '--grace', '2d']);
    expect(real.code, real.stderr).toBe(0);
    expect(real.stdout).toMatch(/removed layer .*\.layers/);
    for (const v of victims) expect(fs.existsSync(v)).toBe(false);
    expect(fs.readdirSync(path.join(repo, '.layers', l3.digest.slice(7, 9))).filter((n) => n.startsWith('.tmp-'))).toEqual([]);
    // image a is intact
    const hA = duccChainIds([l1, l2].map((l) => l.digest.slice(7)));
    for (const p of [
      layerDir(repo, l1.digest.slice(7)),
      layerDir(repo, l2.digest.slice(7)),
      chainDir(repo, hA[0]!),
      chainDir(repo, hA[1]!),
      flatDir(repo, cfgA.slice(7)),
    ]) {
      expect(fs.existsSync(p), p).toBe(true);
    }
    expect(fs.realpathSync(path.join(repo, 'example.org/app:a'))).toBe(flatDir(repo, cfgA.slice(7)));
    const again = json<GcReport>(await runCli(['gc', '--repository-dir', repo, '--grace', '0', '--json']));
    expect(again.removed).toEqual([]);
  });

  it('refuses a bad grace period', async () => {
    const r = await runCli(['gc', '--repository-dir', repo, '--grace', 'soon']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--grace: "soon" is not a duration/);
  });
});

describe.skipIf(needs({ binaries: ['tar', 'gzip'] }))('gc with nothing to remove', () => {
  const work = tempDir('cvmfs-thin-gc-noop-');
  const repo = path.join(work, 'repo');

  /** Every entry of the tree (the root too) with inode, mode, size and ns times: a write anywhere changes this. */
  const state = (): string[] => {
    const out: string[] = [];
    const visit = (p: string) => {
      const st = fs.lstatSync(p, { bigint: true });
      out.push(`${path.relative(repo, p) || '.'} ${st.ino} ${st.mode} ${st.size} ${st.mtimeNs} ${st.ctimeNs}`);
      if (st.isDirectory()) for (const n of fs.readdirSync(p).sort()) visit(path.join(p, n));
    };
    visit(repo);
    return out;
  };

  beforeAll(async () => {
    const st = path.join(work, 'st');
    fs.mkdirSync(path.join(st, 'etc'), { recursive: true });
    fs.writeFileSync(path.join(st, 'etc', 'noop'), 'noop\n');
    const lay = path.join(work, 'lay');
    writeLayout(lay, 'v1', [{ layers: [buildLayer(st, 'gzip', path.join(work, 'blobs'), 'noop')] }]);
    fs.mkdirSync(repo);
    const r = await runCli([
      'convert',
      `oci:${lay}:v1`,
      '--repository-dir',
      repo,
      '--name',
      'example.org/noop:v1',
      '--chains',
      '--flat',
      '--podman-store',
      '--no-thin',
      '--json',
    ]);
    expect(r.code, r.stderr).toBe(0);
    // an access profile (the image's opt-out) and a file under .profiles that is not one
    const d = await runCli(['profile', 'disable', 'example.org/noop:v1', '--repository-dir', repo]);
    expect(d.code, d.stderr).toBe(0);
    fs.writeFileSync(path.join(repo, '.profiles', 'README'), 'not a profile\n');
  });

  it('writes nothing (no file, no directory, no time changes anywhere, the podman store and the profiles included), runs no hook, takes no lock file', async () => {
    const before = state();
    expect(before.some((l) => l.startsWith('podmanStore/overlay-layers/layers.json '))).toBe(true);
    expect(before.some((l) => /^\.profiles\/[a-f0-9]{2}\/[a-f0-9]{64}\.json /.test(l))).toBe(true);
    const marks = path.join(work, 'marks');
    fs.mkdirSync(marks);
    const lockFile = path.join(work, 'publish.lock');
    await new Promise((r) => setTimeout(r, 20)); // a write now would show in the ns times
    for (const extra of [
      [],
      ['--dry-run'],
      ['--transaction-command', `touch ${marks}/tx`, '--publish-command', `touch ${marks}/pub`, '--lock-file', lockFile],
    ]) {
      const r = await runCli(['gc', '--repository-dir', repo, '--grace', '0', '--json', ...extra]);
      expect(r.code, r.stderr).toBe(0);
      const g = json<GcReport & { podman: { removed_images: unknown[]; removed_layers: unknown[] }; left_alone: { path: string }[] }>(r);
      expect([g.removed, g.podman.removed_images, g.podman.removed_layers]).toEqual([[], [], []]);
      expect(g.left_alone.map((l) => l.path)).toEqual([path.join(repo, '.profiles', 'README')]);
      expect(state(), `gc ${extra.join(' ')}`).toEqual(before);
    }
    expect(fs.readdirSync(marks)).toEqual([]);
    expect(fs.existsSync(lockFile)).toBe(false);
  });

  it('removing layers of an image outside the podman store leaves the store as it was (no update marker, no new tokens)', async () => {
    const st = path.join(work, 'st-other');
    fs.mkdirSync(st);
    fs.writeFileSync(path.join(st, 'other'), 'other\n');
    const lay = path.join(work, 'lay-other');
    const other = buildLayer(st, 'gzip', path.join(work, 'blobs'), 'other');
    writeLayout(lay, 'v1', [{ layers: [other] }]);
    expect((await runCli(['convert', `oci:${lay}:v1`, '--repository-dir', repo, '--name', 'example.org/other:v1', '--no-thin'])).code).toBe(0);
    fs.rmSync(path.join(repo, '.metadata/example.org/other:v1'), { recursive: true });
    const store = () => state().filter((l) => l.startsWith('podmanStore'));
    const before = store();
    const g = json<GcReport>(await runCli(['gc', '--repository-dir', repo, '--grace', '0', '--json']));
    expect(g.removed.map((x) => x.path)).toEqual([layerDir(repo, other.digest.slice(7))]);
    expect(store()).toEqual(before);
  });
});

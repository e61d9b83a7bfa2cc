/**
 * A repository tree in a temp dir, CvmfsLayers over it with an in-memory
 * facts cache, and a real overlay of what it resolves for a thin image
 * (with an empty upper, so that a single directory still mounts): for the
 * tests of records, masks and chains.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterEach } from 'vitest';
import { cvmfsLocation } from '../../src/core/cvmfs/location.js';
import { CvmfsLayers, type LayerFacts } from '../../src/core/stack/layers.js';
import { mount } from '../../src/core/host/sys.js';
import { parseThinManifest } from '../../src/core/thin/manifest.js';
import { type FakeLayer, thinJson } from './cvmfs-tree.js';
import { tempDir } from './env.js';
import { unmountAll } from './mount.js';
import { systemHost } from '../../src/core/host/host.js';

export const REPO = 'unpacked.cern.ch';

/** Call once per test file: the overlays it mounts are unmounted after each test. */
export function layerStackFixture(prefix: string) {
  const mounted: string[] = [];
  afterEach(() => {
    for (const m of mounted.splice(0)) unmountAll(m);
  });
  return () => {
    const work = tempDir(prefix);
    const repo = path.join(work, 'cvmfs', REPO);
    fs.mkdirSync(repo, { recursive: true });
    const facts = new Map<string, LayerFacts>();
    const layers = new CvmfsLayers(
      cvmfsLocation({ repository: REPO, absoluteMountpoint: repo }),
      path.join(work, 'masks'),
      {
        get: (k) => facts.get(k),
        put: async (k, f) => void facts.set(k, f),
      },
      systemHost,
    );
    const manifest = (ls: FakeLayer[]) => parseThinManifest(thinJson(REPO, ls), { allowedRepositories: [REPO], defaultRepository: REPO });
    const merged = async (ls: FakeLayer[]) => {
      const r = await layers.resolveThin(manifest(ls));
      const target = path.join(work, `m${mounted.length}`);
      for (const d of ['', '-upper', '-work']) fs.mkdirSync(target + d);
      mount('overlay', target, 'overlay', 0, `lowerdir=${r.dirs.join(':')},upperdir=${target}-upper,workdir=${target}-work`);
      mounted.push(target);
      return { target, how: r.how };
    };
    return { work, repo, layers, facts, manifest, merged };
  };
}

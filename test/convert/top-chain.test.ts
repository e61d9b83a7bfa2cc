/**
 * The converter's default for images of many layers (issue 18): an image of
 * AUTO_CHAIN_LAYERS layers or more gets its own chain (`--top-chain`), so that
 * nodes start it from one directory; fewer layers, or `--no-top-chain`, none.
 */
import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { chainDir, duccChainIds } from '../../src/core/cvmfs/layout.js';
import { AUTO_CHAIN_LAYERS } from '../../src/convert/flat.js';
import { needs, tempDir } from '../helpers/env.js';
import { json, runCli } from './cli.js';
import { type BuiltLayer, buildLayer, writeLayout } from './images.js';

interface Summary {
  images: { status: string; chains: string[] }[];
}

describe.skipIf(needs({ binaries: ['tar', 'gzip'] }))('convert: the top chain by default for many layers', () => {
  const work = tempDir('top-chain-');
  const ls: BuiltLayer[] = [];
  beforeAll(() => {
    for (let i = 0; i < AUTO_CHAIN_LAYERS; i++) {
      const st = path.join(work, `st-${i}`);
      fs.mkdirSync(path.join(st, 'etc'), { recursive: true });
      fs.writeFileSync(path.join(st, 'etc', `f${i}`), `${i}\n`);
      ls.push(buildLayer(st, 'gzip', path.join(work, 'blobs'), `l${i}`));
    }
  });
  const convert = async (layers: BuiltLayer[], tag: string, ...extra: string[]) => {
    const lay = path.join(work, `lay-${tag}`);
    writeLayout(lay, tag, [{ layers, config: {} }]);
    const repo = path.join(work, `repo-${tag}`);
    fs.mkdirSync(repo);
    const r = await runCli(['convert', `oci:${lay}:${tag}`, '--repository-dir', repo, '--no-thin', '--json', ...extra]);
    expect(r.code, r.stderr).toBe(0);
    return { repo, s: json<Summary>(r).images[0]!, top: chainDir(repo, duccChainIds(layers.map((l) => l.digest.slice(7))).at(-1)!) };
  };

  it(`${AUTO_CHAIN_LAYERS} layers: the image's own chain (only); --no-top-chain: none`, async () => {
    const many = await convert(ls, 'many');
    expect(many.s.chains).toEqual([many.top]);
    expect(fs.readdirSync(many.top).sort()).toEqual(['.cvmfs-thin-chain.json', '.cvmfscatalog', 'etc']);
    expect(fs.readdirSync(path.join(many.top, 'etc'))).toHaveLength(AUTO_CHAIN_LAYERS);
    const off = await convert(ls, 'off', '--no-top-chain');
    expect([off.s.chains, fs.existsSync(path.join(off.repo, '.chains'))]).toEqual([[], false]);
  });

  it(`${AUTO_CHAIN_LAYERS - 1} layers: no chain unless asked`, async () => {
    const few = await convert(ls.slice(1), 'few');
    expect(few.s.chains).toEqual([]);
    const asked = await convert(ls.slice(1), 'asked', '--top-chain');
    expect(asked.s.chains).toEqual([asked.top]);
  });
});

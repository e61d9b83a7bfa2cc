import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { cvmfsLocation } from '../../src/core/cvmfs/location.js';
import { ThinManifestError } from '../../src/core/errors/errors.js';
import { readThinLayer } from '../../src/core/thin/layer.js';
import { duccLayerPath } from '../../src/core/thin/manifest.js';

const loc = cvmfsLocation({});
const H = 'b'.repeat(64);
const good = JSON.stringify({ version: '1.0', layers: [{ digest: H, url: `cvmfs://unpacked.cern.ch/${duccLayerPath(H)}` }] });
const dirs: string[] = [];
function layer(files: Record<string, string>): string {
  const d = mkdtempSync(path.join(os.tmpdir(), 'thin-layer-'));
  dirs.push(d);
  for (const [n, c] of Object.entries(files)) writeFileSync(path.join(d, n), c);
  return d;
}
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

describe('thin layer detection (shared by snapshotter and graph driver)', () => {
  it('recognises a layer holding only thin.json, and the historical names', () => {
    for (const name of ['thin.json', '.thin.json', '.thin']) {
      const r = readThinLayer(layer({ [name]: good }), loc);
      expect(r?.file).toBe(name);
      expect(r?.manifest.layers[0]!.hex).toBe(H);
    }
  });

  it('treats any other layer as ordinary: extra entries, other names, empty, a directory or symlink named thin.json', () => {
    expect(readThinLayer(layer({ 'thin.json': good, etc: 'x' }), loc)).toBeNull();
    expect(readThinLayer(layer({ 'manifest.json': good }), loc)).toBeNull();
    expect(readThinLayer(layer({}), loc)).toBeNull();
    const d = layer({});
    mkdirSync(path.join(d, 'thin.json'));
    expect(readThinLayer(d, loc)).toBeNull();
    const s = layer({});
    writeFileSync(path.join(os.tmpdir(), `thin-target-${process.pid}`), good);
    symlinkSync(path.join(os.tmpdir(), `thin-target-${process.pid}`), path.join(s, 'thin.json'));
    expect(readThinLayer(s, loc)).toBeNull();
    rmSync(path.join(os.tmpdir(), `thin-target-${process.pid}`));
  });

  it('throws a ThinManifestError naming the field for a bad manifest in a thin-looking layer', () => {
    const bad = JSON.stringify({ version: '1.0', layers: [{ digest: H, url: 'cvmfs://evil.example.org/.layers/x' }] });
    expect(() => readThinLayer(layer({ 'thin.json': bad }), loc)).toThrow(ThinManifestError);
    expect(() => readThinLayer(layer({ 'thin.json': bad }), loc)).toThrow(/url|repositor/i);
  });
});

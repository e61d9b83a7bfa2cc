import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ThinManifestError } from '../../src/core/errors/errors.js';
import { duccLayerHex, duccLayerPath, MAX_MANIFEST_BYTES, parseCvmfsUrl, parseThinManifest, serializeThinManifest } from '../../src/core/thin/manifest.js';

const opts = { defaultRepository: 'unpacked.cern.ch', allowedRepositories: ['unpacked.cern.ch', 'sft.cern.ch'] };
const H1 = 'a'.repeat(64);
const H2 = '0123456789abcdef'.repeat(4);
const url = (h: string, repo = 'unpacked.cern.ch') => `cvmfs://${repo}/${duccLayerPath(h)}`;

function err(text: string): ThinManifestError {
  try {
    parseThinManifest(text, opts);
  } catch (e) {
    expect(e).toBeInstanceOf(ThinManifestError);
    return e as ThinManifestError;
  }
  throw new Error(`accepted: ${text}`);
}

describe('thin.json parsing', () => {
  it('reads what DUCC writes (bare hex digests, cvmfs:// URLs), base layer first', () => {
    const m = parseThinManifest(
      JSON.stringify({
        version: '1.0',
        origin: 'x',
        layers: [
          { digest: H1, url: url(H1) },
          { digest: H2, url: url(H2) },
        ],
      }),
      opts,
    );
    expect(m.layers.map((l) => l.hex)).toEqual([H1, H2]);
    expect(m.layers[0]).toMatchObject({ digest: `sha256:${H1}`, repository: 'unpacked.cern.ch', path: `.layers/aa/${H1}/layerfs` });
    expect(m.origin).toBe('x');
  });

  it('accepts sha256:-prefixed digests and derives the URL when it is missing', () => {
    const m = parseThinManifest(JSON.stringify({ version: '1.0', layers: [{ digest: `sha256:${H2}` }] }), opts);
    expect(m.layers[0]!.url).toBe(url(H2));
  });

  it('accepts the historical "thin scratch" (version 0.1, no layers) and non-DUCC paths', () => {
    expect(parseThinManifest('{"version": "0.1", "layers": []}', opts).layers).toEqual([]);
    const m = parseThinManifest(JSON.stringify({ version: '1.0', layers: [{ digest: H1, url: `cvmfs://sft.cern.ch/layers/${H1}` }] }), opts);
    expect(m.layers[0]).toMatchObject({ repository: 'sft.cern.ch', path: `layers/${H1}` });
  });

  it('parses every example in thin-image/examples', () => {
    const dir = path.resolve(import.meta.dirname, '../../thin-image/examples');
    const files = readdirSync(dir).filter((f) => f.endsWith('.json'));
    expect(files.length).toBeGreaterThanOrEqual(3);
    for (const f of files) expect(() => parseThinManifest(readFileSync(path.join(dir, f)), opts), f).not.toThrow();
  });

  it('round-trips through serializeThinManifest', () => {
    const m = parseThinManifest(JSON.stringify({ version: '1.0', layers: [{ digest: H1, url: url(H1) }] }), opts);
    const again = parseThinManifest(serializeThinManifest({ origin: 'o', layers: m.layers }), opts);
    expect(again.layers).toEqual(m.layers);
    expect(again.version).toBe('1.0');
  });

  it.each([
    ['not JSON', '{', '(file)'],
    ['trailing garbage', '{"version":"1.0","layers":[]} x', '(file)'],
    ['not an object', '[]', '(file)'],
    ['duplicate keys', '{"version":"1.0","layers":[],"layers":[{"digest":"x"}]}', '(file)'],
    ['missing version', '{"layers":[]}', 'version'],
    ['numeric version', '{"version":1,"layers":[]}', 'version'],
    ['version 2', '{"version":"2.0","layers":[]}', 'version'],
    ['min_version too new', '{"version":"1.0","min_version":"1.5","layers":[]}', 'min_version'],
    ['missing layers', '{"version":"1.0"}', 'layers'],
    ['layers not an array', '{"version":"1.0","layers":{}}', 'layers'],
    ['layer not an object', '{"version":"1.0","layers":["x"]}', 'layers[0]'],
    ['missing digest', '{"version":"1.0","layers":[{}]}', 'layers[0].digest'],
    ['short digest', '{"version":"1.0","layers":[{"digest":"abc"}]}', 'layers[0].digest'],
    ['uppercase digest', `{"version":"1.0","layers":[{"digest":"${'A'.repeat(64)}"}]}`, 'layers[0].digest'],
    ['sha512 digest', `{"version":"1.0","layers":[{"digest":"sha512:${'a'.repeat(128)}"}]}`, 'layers[0].digest'],
    ['http url', `{"version":"1.0","layers":[{"digest":"${H1}","url":"https://x/y"}]}`, 'layers[0].url'],
    ['file url', `{"version":"1.0","layers":[{"digest":"${H1}","url":"file:///etc"}]}`, 'layers[0].url'],
    ['repository not allowed', `{"version":"1.0","layers":[{"digest":"${H1}","url":"cvmfs://evil.org/${duccLayerPath(H1)}"}]}`, 'layers[0].url'],
    ['bad repository name', `{"version":"1.0","layers":[{"digest":"${H1}","url":"cvmfs://../etc/x"}]}`, 'layers[0].url'],
    ['dot-dot escape', `{"version":"1.0","layers":[{"digest":"${H1}","url":"cvmfs://unpacked.cern.ch/.layers/../../etc"}]}`, 'layers[0].url'],
    ['trailing dot-dot', `{"version":"1.0","layers":[{"digest":"${H1}","url":"cvmfs://unpacked.cern.ch/x/.."}]}`, 'layers[0].url'],
    ['absolute path', `{"version":"1.0","layers":[{"digest":"${H1}","url":"cvmfs://unpacked.cern.ch//etc"}]}`, 'layers[0].url'],
    ['no path', `{"version":"1.0","layers":[{"digest":"${H1}","url":"cvmfs://unpacked.cern.ch"}]}`, 'layers[0].url'],
    ['control char', `{"version":"1.0","layers":[{"digest":"${H1}","url":"cvmfs://unpacked.cern.ch/a\\u0000b"}]}`, 'layers[0].url'],
    ['digest/url mismatch', `{"version":"1.0","layers":[{"digest":"${H1}","url":"${url(H2)}"}]}`, 'layers[0].url'],
    ['malformed .layers path', `{"version":"1.0","layers":[{"digest":"${H1}","url":"cvmfs://unpacked.cern.ch/.layers/zz/${H1}/layerfs"}]}`, 'layers[0].url'],
    ['origin not a string', '{"version":"1.0","origin":5,"layers":[]}', 'origin'],
  ])('refuses %s, naming the field', (_what, text, field) => {
    const e = err(text);
    expect(e.field).toBe(field);
    expect(e.message).toContain(field);
    expect(e.kind).toBe('invalid-argument');
  });

  it('refuses more than 500 layers and oversized files', () => {
    const layers = Array.from({ length: 501 }, () => ({ digest: H1 }));
    expect(err(JSON.stringify({ version: '1.0', layers })).field).toBe('layers');
    expect(err(' '.repeat(MAX_MANIFEST_BYTES + 1)).field).toBe('(file)');
  });

  it('refuses invalid UTF-8 bytes', () => {
    expect(() => parseThinManifest(Buffer.from([0x7b, 0xff, 0x7d]), opts)).toThrow(/UTF-8/);
  });

  it('reports the first bad layer by index', () => {
    expect(err(JSON.stringify({ version: '1.0', layers: [{ digest: H1 }, { digest: H2 }, { digest: 'nope' }] })).field).toBe('layers[2].digest');
  });
});

describe('cvmfs URLs and DUCC layer paths', () => {
  it('splits repository and path literally', () => {
    expect(parseCvmfsUrl('cvmfs://unpacked.cern.ch/a/b%20c', 'f')).toEqual({ repository: 'unpacked.cern.ch', path: 'a/b%20c' });
  });
  it('recognises only well-formed .layers paths', () => {
    expect(duccLayerHex(duccLayerPath(H1))).toBe(H1);
    expect(duccLayerHex(`.layers/ab/${H1}/layerfs`)).toBeNull();
    expect(duccLayerHex(`.layers/aa/${H1}/layerfs/x`)).toBeNull();
  });
});

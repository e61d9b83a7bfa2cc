/**
 * The arrows of docs/architecture.md: which folder of src/ may import which.
 * core/ imports nothing outside core/; edge/ only core/; an edge (a front-end)
 * imports core/ and edge/, never another edge; convert/ only core/; ops/ core/
 * and convert/; cli/ wires everything. Inside core/, each part imports only
 * parts of a lower rank (CORE_RANK): no cycles between core's folders.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const SRC = path.resolve(import.meta.dirname, '../../src');
const EDGES = ['snapshotter', 'graphdriver', 'dockervolume', 'csi', 'flexvolume'];

/** Folder of src/ → folders it may import (besides itself). */
const ALLOWED: Record<string, readonly string[]> = {
  core: [],
  edge: ['core'],
  convert: ['core'],
  ops: ['core', 'convert'],
  cli: ['core', 'edge', 'convert', 'ops', ...EDGES],
  ...Object.fromEntries(EDGES.map((e) => [e, ['core', 'edge']])),
};

/** core/'s parts from the bottom up: a part may import only parts of a lower rank. */
const CORE_RANK: Record<string, number> = {
  errors: 0,
  util: 1,
  fs: 2,
  host: 3,
  tar: 4,
  telemetry: 4,
  state: 5,
  cvmfs: 5,
  thin: 6,
  stack: 7,
  volumes: 7,
};

/** Relative import specifiers of a TypeScript source (static, dynamic and type-only). */
function importsOf(text: string): string[] {
  return [...text.matchAll(/(?:\bfrom|\bimport\s*\(|^\s*import)\s*['"](\.{1,2}\/[^'"]+)['"]/gm)].map((m) => m[1]!);
}

/** `a/b.ts` importing `../c/d.js` → the violations of ALLOWED, as `from -> to (spec)`. */
function violations(files: ReadonlyMap<string, string>, allowed = ALLOWED): string[] {
  const out: string[] = [];
  for (const [file, text] of files) {
    const from = file.split('/')[0]!;
    for (const spec of importsOf(text)) {
      const target = path.posix.normalize(path.posix.join(path.posix.dirname(file), spec));
      if (target.startsWith('..')) continue; // package.json and the like, outside src/
      const to = target.split('/')[0]!;
      if (to === from && from === 'core') {
        const [a, b] = [file.split('/')[1]!, target.split('/')[1]!];
        if (a !== b && !((CORE_RANK[b] ?? Infinity) < (CORE_RANK[a] ?? -Infinity)))
          out.push(`src/${file} -> src/${target} (core/${a} may not import core/${b})`);
      }
      if (to === from) continue;
      if (!(allowed[from] ?? []).includes(to)) out.push(`src/${file} -> src/${target} (${from} may not import ${to})`);
    }
  }
  return out.sort();
}

function sources(dir: string, rel = ''): Map<string, string> {
  const out = new Map<string, string>();
  for (const e of readdirSync(path.join(dir, rel), { withFileTypes: true })) {
    const r = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory()) {
      if (e.name !== 'proto') for (const [k, v] of sources(dir, r)) out.set(k, v);
    } else if (e.name.endsWith('.ts')) out.set(r, readFileSync(path.join(dir, r), 'utf8'));
  }
  return out;
}

describe('layering of src/', () => {
  it('every folder of src/ has a rule', () => {
    const folders = readdirSync(SRC, { withFileTypes: true })
      .filter((e) => e.isDirectory())
      .map((e) => e.name);
    expect(folders.filter((f) => !(f in ALLOWED))).toEqual([]);
  });

  it('every part of core/ has a rank', () => {
    const parts = readdirSync(path.join(SRC, 'core'), { withFileTypes: true });
    expect(parts.filter((e) => !e.isDirectory() || !(e.name in CORE_RANK)).map((e) => e.name)).toEqual([]);
  });

  it('no import points against the arrows', () => {
    expect(violations(sources(SRC))).toEqual([]);
  });

  it('the check sees static, dynamic and type-only imports against the arrows', () => {
    const files = new Map([
      ['core/stack/x.ts', "import { a } from '../../snapshotter/y.js';\nconst b = await import('../../cli/z.js');"],
      ['csi/a.ts', "import type { T } from '../dockervolume/b.js';\nimport { ok } from '../core/errors/errors.js';"],
      ['cli/main.ts', "import { s } from '../snapshotter/server.js';"],
      ['core/host/h.ts', "import type { M } from '../stack/m.js';\nimport { e } from '../errors/errors.js';"],
    ]);
    expect(violations(files)).toEqual([
      'src/core/host/h.ts -> src/core/stack/m.js (core/host may not import core/stack)',
      'src/core/stack/x.ts -> src/cli/z.js (core may not import cli)',
      'src/core/stack/x.ts -> src/snapshotter/y.js (core may not import snapshotter)',
      'src/csi/a.ts -> src/dockervolume/b.js (csi may not import dockervolume)',
    ]);
  });
});

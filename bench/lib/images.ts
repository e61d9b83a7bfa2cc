/**
 * Image content for the start benches: tar-entry helpers (files with deterministic content
 * and their directories), the ~64 MB image of bench/layer-count.ts that can be cut into any
 * number of layers with the same final content, and a large-file image of a given size
 * written as an OCI layout of plain-tar layers (too big for an in-memory image).
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { busyboxEntries, type TarEntry, tarOf } from '../../test/helpers/oci-image.js';
import { content } from './content.js';
import { type Layer, makeLayer, writeLayout } from './oci.js';

export const range = (n: number) => Array.from({ length: n }, (_, i) => i);
/** Directory entries (`a/`, `a/b/`) for the parents of these paths. */
export const dirsOf = (paths: string[]): TarEntry[] =>
  [
    ...new Set(
      paths.flatMap((p) =>
        p
          .split('/')
          .slice(0, -1)
          .map((_, i, a) => `${a.slice(0, i + 1).join('/')}/`),
      ),
    ),
  ].map((d) => ({ path: d, type: 'dir' as const }));
/** Files of these sizes (and their directories), then `extra` entries (their directories too); file i's content is seeded by seed0 + i + size. */
export const files = (list: [string, number][], extra: TarEntry[] = [], seed0 = 0): TarEntry[] => [
  ...dirsOf([...list.map(([p]) => p), ...extra.map((e) => e.path)]),
  ...list.map(([p, size], i) => ({ path: p, content: content(size, seed0 + i + size) })),
  ...extra,
];
const firstOfEach = (es: TarEntry[]) => es.filter((e, i) => es.findIndex((x) => x.path === e.path) === i);

// ---- the layer-count image ------------------------------------------------------------------

const SHELL = firstOfEach([
  ...busyboxEntries('layer-count'),
  ...['md5sum', 'head', 'ls'].map((a) => ({ path: `bin/${a}`, type: 'symlink' as const, target: 'busybox' })),
]);
/** Files later deleted by whiteouts in upper layers, a directory made opaque, a file replaced. */
const DOOMED = range(40).map((i): [string, number] => [`var/cache/old/f${i}`, 1024 + i]);
const BASE: [string, number][] = [...DOOMED, ...range(10).map((i): [string, number] => [`etc/conf.d/old${i}.conf`, 300 + i]), ['app/app.conf', 700]];
/** The rest, in the order it is cut into layers: small files, libraries, a few large data files. */
const BODY: [string, number][] = [
  ...range(6000).map((i): [string, number] => [`usr/share/pkg${Math.floor(i / 150)}/f${i}`, 256 + ((i * 7919) % 4096)]),
  ...range(300).map((i): [string, number] => [`usr/lib/lib${i}.so`, 64 << 10]),
  ...range(7).map((i): [string, number] => [`opt/data/part${i}.bin`, 4 << 20]),
];

/**
 * The ~64 MB image as `n` (≥ 2) layers: layer 0 the shell, the files to be deleted or
 * replaced and the directory to be made opaque; the body cut into n-1 contiguous pieces; whiteouts of the 40
 * doomed files spread over the top layers (at most 20 of them), and in the top layer the
 * opaque directory's new content and a replaced app.conf. The same final tree for every n.
 */
export function spreadLayers(n: number): TarEntry[][] {
  const layers: TarEntry[][] = [firstOfEach([...SHELL, ...files(BASE, [], 1 << 20)])];
  const per = BODY.length / (n - 1);
  for (let k = 1; k < n; k++) {
    const whiteouts = DOOMED.filter((_, d) => n - 1 - (d % Math.min(n - 1, 20)) === k).map(([p]): TarEntry => ({
      path: p.replace(/[^/]+$/, (b) => `.wh.${b}`),
      content: '',
    }));
    const top: TarEntry[] =
      k === n - 1
        ? [
            { path: 'etc/conf.d/.wh..wh..opq', content: '' },
            { path: 'etc/conf.d/new.conf', content: 'new=1\n' },
            { path: 'app/app.conf', content: 'version=2\n' },
          ]
        : [];
    const [from, to] = [Math.round((k - 1) * per), Math.round(k * per)];
    layers.push(files(BODY.slice(from, to), [...whiteouts, ...top], from));
  }
  return layers;
}

/** What the container does: read files from bottom to top layers, check a deletion and the opaque directory. */
export const SPREAD_CMD = [
  '/bin/sh',
  '-c',
  'cat /app/app.conf /usr/share/pkg3/f480 /usr/share/pkg38/f5777 /usr/lib/lib17.so /usr/lib/lib290.so /opt/data/part3.bin | md5sum; test -e /var/cache/old/f7 || echo deleted-ok; ls /etc/conf.d',
];

// ---- the large-file image -------------------------------------------------------------------

/**
 * An OCI layout at `layout` of `nLayers` plain-tar layers holding `bytes` in all: layer 0 the
 * shell, every layer 200 small files and 4 large ones (so that the file count does not depend
 * on `bytes`). Staged on disk one layer at a time under `work`.
 */
export async function writeLargeImage(layout: string, work: string, bytes: number, nLayers = 5): Promise<{ layers: Layer[]; bytes: number }> {
  const layers: Layer[] = [];
  const per = Math.floor(bytes / (nLayers * 4));
  const block = content(4 << 20, 7);
  for (let l = 0; l < nLayers; l++) {
    const stage = path.join(work, `stage-${l}`);
    fs.mkdirSync(stage, { recursive: true });
    if (l === 0) execFileSync('tar', ['-x', '-C', stage], { input: await tarOf(SHELL) });
    for (const i of range(200)) {
      const f = path.join(stage, 'usr', 'share', `l${l}`, `d${Math.floor(i / 50)}`, `f${i}`);
      fs.mkdirSync(path.dirname(f), { recursive: true });
      fs.writeFileSync(f, content(512 + ((i * 7919) % 4096), l * 1000 + i));
    }
    fs.mkdirSync(path.join(stage, 'opt', `l${l}`), { recursive: true });
    for (const f of range(4)) {
      const fd = fs.openSync(path.join(stage, 'opt', `l${l}`, `blob${f}.bin`), 'w');
      for (let off = 0; off < per; off += block.length) fs.writeSync(fd, block, 0, Math.min(block.length, per - off));
      fs.closeSync(fd);
    }
    layers.push(makeLayer(stage, path.join(work, `layer-${l}`), { gzip: false }));
    fs.rmSync(stage, { recursive: true, force: true });
  }
  writeLayout(layout, 'v1', layers);
  for (const l of layers) fs.rmSync(l.file); // the layout holds a hard link
  return { layers, bytes: per * nLayers * 4 };
}

/** What the container does in the large-file image: read a small file and the first MB of a large one. */
export const LARGE_CMD = ['/bin/sh', '-c', 'cat /usr/share/l3/d1/f60 | md5sum; head -c 1048576 /opt/l2/blob1.bin | md5sum'];

/**
 * The 3-layer image of the converter-through-a-publish test, built with GNU
 * tar (test/convert/images.ts) into an OCI layout, and its reference rootfs:
 * the layer tars applied in order by containerd's own applier (applytool).
 *
 *  1. base: /bin/tool setuid 4755 root, /bin/ping with security.capability,
 *     /tmp 1777, /home/u 1000:1000 0750 with files, a hard link pair
 *     /hl/one + /hl/two, a symlink /lnk, a fifo /fifo, /dev/null (c 1 3),
 *     /opq/{a,b}, /gone, /gonedir/x, /etc/passwd
 *  2. deletes /gone and /gonedir, makes /opq opaque with a new /opq/c, adds /etc/new
 *  3. changes /etc/passwd (content and mode 0600), adds /home/u/new (1000:1000)
 *
 * Every time is a whole second (a publish without CVMFS_ENABLE_MTIME_NS keeps seconds).
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { lsetxattr, mknod, S_IFCHR, S_IFIFO } from '../../../src/core/host/sys.js';
import { buildLayer, type BuiltLayer, writeLayout } from '../../convert/images.js';
import { APPLYTOOL, applyContainerd } from '../../tar/parity-helpers.js';
import { CAPABILITY } from './testing.js';

export const FIXTURE_TIME = 1_600_000_000;

export interface ThreeLayerImage {
  layout: string;
  tag: string;
  layers: BuiltLayer[];
  /** Hex digests of the compressed blobs, bottom first (the `.layers/<xx>/<hex>` names). */
  hexes: string[];
}

type Spec = Record<
  string,
  {
    dir?: true;
    file?: string;
    mode?: number;
    uid?: number;
    gid?: number;
    link?: string;
    hardlink?: string;
    fifo?: true;
    chr?: [number, number];
    xattrs?: Record<string, Buffer>;
  }
>;

const LAYER1: Spec = {
  bin: { dir: true, mode: 0o755 },
  'bin/tool': { file: '#!/bin/sh\necho tool\n', mode: 0o4755 },
  'bin/ping': { file: 'ping\n', mode: 0o755, xattrs: { 'security.capability': CAPABILITY } },
  tmp: { dir: true, mode: 0o1777 },
  home: { dir: true, mode: 0o755 },
  'home/u': { dir: true, mode: 0o750, uid: 1000, gid: 1000 },
  'home/u/.profile': { file: 'export A=1\n', mode: 0o644, uid: 1000, gid: 1000 },
  'home/u/notes': { file: 'notes\n', mode: 0o600, uid: 1000, gid: 1000 },
  hl: { dir: true, mode: 0o755 },
  'hl/one': { file: 'linked\n', mode: 0o644 },
  'hl/two': { hardlink: 'hl/one' },
  lnk: { link: 'bin/tool' },
  fifo: { fifo: true, mode: 0o644 },
  dev: { dir: true, mode: 0o755 },
  'dev/null': { chr: [1, 3], mode: 0o666 },
  opq: { dir: true, mode: 0o755 },
  'opq/a': { file: 'a\n', mode: 0o644 },
  'opq/b': { file: 'b\n', mode: 0o644 },
  gone: { file: 'gone\n', mode: 0o644 },
  gonedir: { dir: true, mode: 0o755 },
  'gonedir/x': { file: 'x\n', mode: 0o644 },
  etc: { dir: true, mode: 0o755 },
  'etc/passwd': { file: 'root:x:0:0::/root:/bin/sh\n', mode: 0o644 },
};

const LAYER2: Spec = {
  '.wh.gone': { file: '', mode: 0o644 },
  '.wh.gonedir': { file: '', mode: 0o644 },
  opq: { dir: true, mode: 0o755 },
  'opq/.wh..wh..opq': { file: '', mode: 0o644 },
  'opq/c': { file: 'c\n', mode: 0o644 },
  etc: { dir: true, mode: 0o755 },
  'etc/new': { file: 'new\n', mode: 0o644 },
};

const LAYER3: Spec = {
  etc: { dir: true, mode: 0o755 },
  'etc/passwd': { file: 'root:x:0:0::/root:/bin/sh\nu:x:1000:1000::/home/u:/bin/sh\n', mode: 0o600 },
  home: { dir: true, mode: 0o755 },
  'home/u': { dir: true, mode: 0o750, uid: 1000, gid: 1000 },
  'home/u/new': { file: 'new in layer 3\n', mode: 0o640, uid: 1000, gid: 1000 },
};

function stage(dir: string, spec: Spec): void {
  fs.mkdirSync(dir, { recursive: true });
  fs.chmodSync(dir, 0o755);
  for (const [rel, e] of Object.entries(spec)) {
    const p = path.join(dir, rel);
    if (e.dir) fs.mkdirSync(p);
    else if (e.file !== undefined) fs.writeFileSync(p, e.file);
    else if (e.link !== undefined) fs.symlinkSync(e.link, p);
    else if (e.hardlink !== undefined) fs.linkSync(path.join(dir, e.hardlink), p);
    else if (e.fifo) mknod(p, S_IFIFO | 0o644);
    else if (e.chr) mknod(p, S_IFCHR | 0o644, e.chr[0], e.chr[1]);
    if (e.hardlink !== undefined || e.link !== undefined) continue;
    fs.chownSync(p, e.uid ?? 0, e.gid ?? 0);
    if (e.mode !== undefined) fs.chmodSync(p, e.mode);
    for (const [n, v] of Object.entries(e.xattrs ?? {})) lsetxattr(p, n, v);
  }
  // whole seconds everywhere, directories included
  execFileSync('find', [dir, '-exec', 'touch', '-h', '-d', `@${FIXTURE_TIME}`, '{}', '+']);
}

/** Stage and tar the three layers (gzip) and write `oci:<work>/layout:v1`. */
export function buildThreeLayerImage(work: string): ThreeLayerImage {
  const layers = [LAYER1, LAYER2, LAYER3].map((spec, i) => {
    const st = path.join(work, `staging-${i + 1}`);
    stage(st, spec);
    return buildLayer(st, 'gzip', path.join(work, 'blobs'), `layer${i + 1}`);
  });
  const layout = path.join(work, 'layout');
  writeLayout(layout, 'v1', [{ layers }]);
  return { layout, tag: 'v1', layers, hexes: layers.map((l) => l.digest.slice('sha256:'.length)) };
}

export const applytoolMissing = (): string | null =>
  fs.existsSync(APPLYTOOL) ? null : `containerd's applier ${APPLYTOOL} is not built (sh test/applyparity/build.sh; scripts/setup.sh runs it)`;

/** containerd's rootfs of the image: every layer tar applied in order (whiteouts applied). */
export function referenceRootfs(image: ThreeLayerImage, dest: string): void {
  fs.mkdirSync(dest, { recursive: true, mode: 0o755 });
  fs.chmodSync(dest, 0o755);
  for (const [i, l] of image.layers.entries()) {
    const r = applyContainerd(dest, fs.readFileSync(l.tar), 'apply');
    if (!r.ok) throw new Error(`containerd's applier refused layer ${i + 1}: ${r.error}`);
  }
}

/**
 * Hostile layer tars for converter-level tests, written entry by entry with
 * tar-stream (plus raw headers for types tar-stream will not write). The
 * extensive per-attack corpus of the tar library lives in test/tar/; these
 * check what the converter does with such a layer inside an image.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { gzipSync } from 'node:zlib';
import tarStream from 'tar-stream';
import type { BuiltLayer } from './images.js';

export interface HEntry {
  name: string;
  type?: 'file' | 'directory' | 'symlink' | 'link';
  linkname?: string;
  data?: string;
  mode?: number;
  /** A raw type flag (e.g. 'S' GNU sparse, 'Z' unknown): written by hand. */
  rawType?: string;
}

function octal(n: number, len: number): string {
  return n.toString(8).padStart(len - 1, '0') + '\0';
}

/** A ustar header block with any type flag. */
function rawHeader(name: string, type: string, size: number): Buffer {
  const h = Buffer.alloc(512);
  h.write(name, 0, 100, 'utf8');
  h.write(octal(0o644, 8), 100);
  h.write(octal(0, 8), 108);
  h.write(octal(0, 8), 116);
  h.write(octal(size, 12), 124);
  h.write(octal(0, 12), 136);
  h.write('        ', 148);
  h.write(type, 156);
  h.write('ustar\0', 257);
  h.write('00', 263);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(octal(sum, 7) + ' ', 148);
  return h;
}

export async function hostileTar(entries: HEntry[]): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (const e of entries) {
    if (e.rawType) {
      const data = Buffer.from(e.data ?? '');
      parts.push(rawHeader(e.name, e.rawType, data.length), data, Buffer.alloc((512 - (data.length % 512)) % 512));
      continue;
    }
    const pack = tarStream.pack();
    const chunks: Buffer[] = [];
    pack.on('data', (c: unknown) => chunks.push(c as Buffer));
    const done = new Promise<void>((r) => pack.on('end', () => r()));
    const data = e.data !== undefined ? Buffer.from(e.data) : undefined;
    const header = {
      name: e.name,
      type: e.type ?? 'file',
      linkname: e.linkname,
      mode: e.mode ?? (e.type === 'directory' ? 0o755 : 0o644),
      mtime: new Date(0),
      ...(data ? { size: data.length } : {}),
    };
    if (data) pack.entry(header, data);
    else pack.entry(header);
    pack.finalize();
    await done;
    // drop the end-of-archive blocks of each single-entry pack
    const all = Buffer.concat(chunks);
    parts.push(all.subarray(0, all.length - 1024));
  }
  parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}

/** A gzip layer blob file from a tar buffer. */
export function layerFromTar(tar: Buffer, file: string): BuiltLayer {
  const gz = gzipSync(tar);
  fs.writeFileSync(file, gz);
  fs.writeFileSync(`${file}.tar`, tar);
  const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
  return {
    file,
    digest: sha(gz),
    diffId: sha(tar),
    size: gz.length,
    mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip',
    compression: 'gzip',
    tar: `${file}.tar`,
  };
}

/** The attacks of issue point 3, each as the middle layer of an image; `entry` is what the error must name. */
export const ATTACKS: { name: string; entries: HEntry[]; entry: string }[] = [
  { name: 'dot-dot path', entries: [{ name: '../../../../escaped-dotdot', data: 'x' }], entry: '../../../../escaped-dotdot' },
  {
    name: 'symlink to a missing directory, then a file through it',
    entries: [
      { name: 'link', type: 'symlink', linkname: '../../../../nonexistent-dir' },
      { name: 'link/escaped-symlink-file', data: 'x' },
    ],
    entry: 'link/escaped-symlink-file',
  },
  {
    name: 'symlink to a directory outside, then a directory through it',
    entries: [
      { name: 'up', type: 'symlink', linkname: '/../../../../tmp' },
      { name: 'up/escaped-dir/', type: 'directory' },
      { name: 'up/escaped-dir/f', data: 'x' },
    ],
    entry: 'up/escaped-dir/',
  },
  { name: 'hardlink to outside', entries: [{ name: 'hl', type: 'link', linkname: '../../../../etc/passwd' }], entry: 'hl' },
  {
    name: 'hardlink to a name not extracted yet',
    entries: [
      { name: 'hl2', type: 'link', linkname: 'later' },
      { name: 'later', data: 'x' },
    ],
    entry: 'hl2',
  },
  { name: 'whiteout aiming outside', entries: [{ name: 'etc/.wh...', data: '' }], entry: 'etc/.wh...' },
  { name: 'GNU sparse entry', entries: [{ name: 'sparse-file', rawType: 'S', data: '' }], entry: 'sparse-file' },
  { name: 'unknown entry type', entries: [{ name: 'weird', rawType: 'Z', data: '' }], entry: 'weird' },
];

/**
 * Escapes the extractor contains instead of refusing: symlinks are resolved
 * with the layer directory as the root (like Docker), so these land inside.
 * `inside` is where the file must end up, relative to layerfs.
 */
export const CONTAINED: { name: string; entries: HEntry[]; inside: string }[] = [
  {
    name: 'symlink climbing above the root, then a file through it',
    entries: [
      { name: 'link', type: 'symlink', linkname: '../../../../..' },
      { name: 'link/escaped-symlink-file', data: 'x' },
    ],
    inside: 'escaped-symlink-file',
  },
  { name: 'absolute path', entries: [{ name: '/escaped-absolute', data: 'x' }], inside: 'escaped-absolute' },
  {
    name: 'absolute symlink to /etc, then a file through it',
    entries: [
      { name: 'etclink', type: 'symlink', linkname: '/etc' },
      { name: 'etc/', type: 'directory' },
      { name: 'etclink/escaped-passwd', data: 'x' },
    ],
    inside: 'etc/escaped-passwd',
  },
];

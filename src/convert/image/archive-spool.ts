/**
 * Reading an image archive (plain or gzip tar) into a private temporary
 * directory with the shared tar parser: regular files under cleaned,
 * allow-listed names only, digests computed on the way; links become
 * aliases, never links on disk. Used by the archive sources (archive.ts),
 * in spool directories of spool-dir.ts.
 */
import { createHash, type Hash } from 'node:crypto';
import { closeSync, createReadStream, mkdirSync, openSync, promises as fsp, write } from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { NotFoundError } from '../../core/errors/errors.js';
import { BadContentError } from '../errors.js';
import { TarParser } from '../tar.js';

export interface Spooled {
  dir: string;
  files: Map<string, { size: number; digest: string }>;
  aliases: Map<string, string>;
}

const SAFE_NAME = /^[A-Za-z0-9._@:+=-]+(\/[A-Za-z0-9._@:+=-]+)*$/;

export function cleanArchiveName(raw: string, what: string): string | null {
  const parts: string[] = [];
  for (const seg of raw.split('/')) {
    if (seg === '' || seg === '.') continue;
    if (seg === '..') throw new BadContentError(`${what}: entry ${JSON.stringify(raw)} climbs out of the archive`, 'CVMFS_THIN_BAD_ARCHIVE');
    parts.push(seg);
  }
  if (raw.startsWith('/')) throw new BadContentError(`${what}: entry ${JSON.stringify(raw)} is absolute`, 'CVMFS_THIN_BAD_ARCHIVE');
  const name = parts.join('/');
  return name !== '' && SAFE_NAME.test(name) ? name : null;
}

/** Write all of `b` at `pos` of `fd`. */
function writeAt(fd: number, b: Buffer, pos: number): Promise<void> {
  return new Promise((resolve, reject) => {
    write(fd, b, 0, b.length, pos, (e, n) => {
      if (e) reject(e);
      else if (n < b.length) writeAt(fd, b.subarray(n), pos + n).then(resolve, reject);
      else resolve();
    });
  });
}

/** Read an archive (plain or gzip) into `dir` with the shared tar parser: regular files only, digests computed on the way. */
export async function spool(file: string, dir: string, what: string): Promise<Spooled> {
  const files = new Map<string, { size: number; digest: string }>();
  const aliases = new Map<string, string>();
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(file, 'r');
  } catch (e) {
    throw new NotFoundError(`${what}: cannot open ${file}: ${(e as Error).message}`, 'CVMFS_THIN_INPUT_NOT_FOUND');
  }
  const magic = Buffer.alloc(4);
  await fh.read(magic, 0, 4, 0);
  await fh.close();
  if (magic[0] === 0x28 && magic[1] === 0xb5 && magic[2] === 0x2f && magic[3] === 0xfd) {
    throw new BadContentError(`${what}: zstd-compressed archives are not supported; decompress it first`, 'CVMFS_THIN_UNSUPPORTED');
  }
  const gz = magic[0] === 0x1f && magic[1] === 0x8b;

  /** The file being written: its data arrives in slices during push(); writes are positional, awaited after each chunk. */
  let cur: { name: string; fd: number; hash: Hash; size: number } | null = null;
  let pending: Promise<void>[] = [];
  const opened: number[] = [];
  const parser = new TarParser({
    entry(h) {
      // names are byte strings; only ASCII names pass SAFE_NAME anyway
      const name = cleanArchiveName(h.name, what);
      if (name === null) return;
      if (h.type === 'symlink' || h.type === 'link') {
        const ln = h.linkname;
        const target = h.type === 'symlink' ? path.posix.normalize(path.posix.join(path.posix.dirname(name), ln)) : ln;
        try {
          const t = cleanArchiveName(target, what);
          if (t) aliases.set(name, t);
        } catch {
          /* a link pointing out of the archive is simply not an alias */
        }
        return;
      }
      if (h.type !== 'file') return;
      const dest = path.join(dir, name);
      mkdirSync(path.dirname(dest), { recursive: true });
      // a name that comes again replaces the earlier file, as tar -x does
      const fd = openSync(dest, 'w', 0o600);
      opened.push(fd);
      cur = { name, fd, hash: createHash('sha256'), size: 0 };
    },
    data(buf, start, end) {
      if (!cur) return;
      const slice = buf.subarray(start, end);
      cur.hash.update(slice);
      pending.push(writeAt(cur.fd, slice, cur.size));
      cur.size += slice.length;
    },
    entryEnd() {
      if (!cur) return;
      const c = cur;
      cur = null;
      files.set(c.name, { size: c.size, digest: `sha256:${c.hash.digest('hex')}` });
      aliases.delete(c.name);
    },
  });
  const input = createReadStream(file, { highWaterMark: 1 << 20 });
  const stream: Readable = gz ? input.pipe(createGunzip()) : input;
  if (gz) input.on('error', (e) => stream.destroy(e));
  try {
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      parser.push(chunk);
      if (pending.length) {
        const p = pending;
        pending = [];
        await Promise.all(p);
      }
      if (parser.ended) break;
    }
    parser.end();
    await Promise.all(pending);
  } catch (e) {
    await Promise.allSettled(pending);
    // refusals keep their code; a failing write (ENOSPC…) is an I/O error, not a bad archive
    if (e instanceof BadContentError || typeof (e as NodeJS.ErrnoException).syscall === 'string') throw e;
    throw new BadContentError(`${what}: not a readable tar archive: ${(e as Error).message}`, 'CVMFS_THIN_BAD_ARCHIVE', { cause: e });
  } finally {
    input.destroy();
    for (const fd of opened) closeSync(fd);
  }
  return { dir, files, aliases };
}

export function resolveName(sp: Spooled, name: string): string {
  let n = name;
  for (let i = 0; i < 16 && !sp.files.has(n); i++) {
    const a = sp.aliases.get(n);
    if (!a) break;
    n = a;
  }
  return n;
}

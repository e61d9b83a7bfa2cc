/**
 * Layer decompression: gzip (node:zlib), zstd (the `zstd` binary when it is
 * installed, else fzstd in JS), or none; 'auto' sniffs the magic bytes. And
 * the mapping from OCI/Docker layer media types to a compression kind.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { Duplex, PassThrough, pipeline, Readable, Transform, type TransformCallback } from 'node:stream';
import zlib from 'node:zlib';
import { Decompress as FzstdDecompress } from 'fzstd';
import { InvalidArgumentError } from '../errors/errors.js';

type Compression = 'gzip' | 'zstd' | 'none';

/** A streaming decoder: compressed bytes in, plain bytes out. */
interface Decompressor {
  readonly name: string;
  create(): Duplex;
}

interface DecompressOptions {
  /**
   * zstd implementation: 'process' runs `zstd -dc` (fastest, its own core),
   * 'js' uses fzstd on the calling thread; 'auto' (default) takes 'process'
   * when a `zstd` binary is on PATH.
   */
  zstd?: 'auto' | 'process' | 'js';
}

const GZIP_MAGIC = [0x1f, 0x8b];
const ZSTD_MAGIC = [0x28, 0xb5, 0x2f, 0xfd];

/** The compression of a stream from its first bytes (at least 4 when available). */
export function sniffCompression(head: Uint8Array): Compression {
  if (head.length >= 2 && head[0] === GZIP_MAGIC[0] && head[1] === GZIP_MAGIC[1]) return 'gzip';
  if (head.length >= 4 && ZSTD_MAGIC.every((b, i) => head[i] === b)) return 'zstd';
  return 'none';
}

const MEDIA_TYPES: Record<string, Compression> = {
  'application/vnd.oci.image.layer.v1.tar': 'none',
  'application/vnd.oci.image.layer.v1.tar+gzip': 'gzip',
  'application/vnd.oci.image.layer.v1.tar+zstd': 'zstd',
  'application/vnd.oci.image.layer.nondistributable.v1.tar': 'none',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip': 'gzip',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd': 'zstd',
  'application/vnd.docker.image.rootfs.diff.tar': 'none',
  'application/vnd.docker.image.rootfs.diff.tar.gzip': 'gzip',
  'application/vnd.docker.image.rootfs.diff.tar.zstd': 'zstd',
  'application/vnd.docker.image.rootfs.foreign.diff.tar': 'none',
  'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip': 'gzip',
};

/** Compression of a layer by media type; throws InvalidArgumentError for anything that is not a layer tar. */
export function compressionForMediaType(mediaType: string): Compression {
  const mt = mediaType.split(';')[0]!.trim().toLowerCase();
  const c = MEDIA_TYPES[mt];
  if (c === undefined) throw new InvalidArgumentError(`not a layer media type: ${JSON.stringify(mediaType)}`, 'CVMFS_THIN_UNSUPPORTED_MEDIA_TYPE');
  return c;
}

/** Foreign (Windows base) and non-distributable layers: usually not downloadable from the registry. */
export function isForeignLayer(mediaType: string): boolean {
  const mt = mediaType.split(';')[0]!.trim().toLowerCase();
  return mt.includes('.foreign.') || mt.includes('.nondistributable.');
}

// ------------------------------------------------------------------ codecs

const gzipDecompressor: Decompressor = {
  name: 'zlib',
  create: () => typedZlibErrors(zlib.createGunzip({ chunkSize: 128 * 1024 }), 'gzip'),
};

/**
 * zlib reports corrupt input with plain errors (code Z_DATA_ERROR,
 * Z_BUF_ERROR for a truncated stream…): emit them as CVMFS_THIN_BAD_COMPRESSED_DATA
 * (invalid-argument) instead, like the zstd decoders. zlib streams fail
 * through destroy(err), whose callback error is the one emitted.
 */
function typedZlibErrors<T extends Duplex>(z: T, what: string): T {
  const destroy = z._destroy;
  z._destroy = function (this: T, err: Error | null, cb: (e?: Error | null) => void): void {
    const code = (err as NodeJS.ErrnoException | null)?.code;
    const typed =
      err && typeof code === 'string' && code.startsWith('Z_')
        ? new InvalidArgumentError(`${what}: ${err.message}`, 'CVMFS_THIN_BAD_COMPRESSED_DATA', { cause: err })
        : err;
    destroy.call(this, typed, cb);
  };
  return z;
}

/** fzstd (pure JS, runs on the calling thread). */
const fzstdDecompressor: Decompressor = {
  name: 'fzstd',
  create: () => new FzstdTransform(),
};

class FzstdTransform extends Transform {
  private readonly d: FzstdDecompress;
  constructor() {
    super({ readableHighWaterMark: 1 << 20 });
    // fzstd may hand out views of its window: copy
    this.d = new FzstdDecompress((data) => {
      if (data.length > 0) this.push(Buffer.from(data));
    });
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    try {
      this.d.push(chunk);
      cb();
    } catch (e) {
      cb(zstdError(e));
    }
  }
  override _flush(cb: TransformCallback): void {
    try {
      this.d.push(new Uint8Array(0), true);
      cb();
    } catch (e) {
      cb(zstdError(e));
    }
  }
}

function zstdError(e: unknown): Error {
  return new InvalidArgumentError(`zstd: ${(e as Error).message ?? String(e)}`, 'CVMFS_THIN_BAD_COMPRESSED_DATA', { cause: e });
}

/** `zstd -dc` in a child process: ~3× fzstd, and on another core. */
const zstdProcessDecompressor: Decompressor = {
  name: 'zstd-process',
  create: () => new ProcessDecoder('zstd', ['-dcq']),
};

/**
 * A child process as a Duplex. Its output only ends after the process
 * exited with 0, so that a consumer never takes truncated output for a
 * complete stream.
 */
class ProcessDecoder extends Duplex {
  private readonly child: ChildProcess;
  private stderr = '';
  private outEnded = false;
  private exit: number | null | undefined = undefined;
  private readonly cmd: string;
  constructor(cmd: string, args: string[]) {
    super({ readableHighWaterMark: 1 << 20 });
    this.cmd = cmd;
    // not through the Host: a codec of the host-free tar library (bytes in, bytes out, like fzstd), no effect on the node
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    this.child = child;
    child.stdout!.on('data', (c: Buffer) => {
      if (!this.push(c)) child.stdout!.pause();
    });
    child.stdout!.on('end', () => {
      this.outEnded = true;
      this.maybeEnd();
    });
    child.stderr!.on('data', (c: Buffer) => {
      if (this.stderr.length < 4096) this.stderr += c.toString();
    });
    // EPIPE when the decoder quits early on bad input: its exit status tells
    child.stdin!.on('error', () => undefined);
    child.on('error', (e) => this.destroy(new InvalidArgumentError(`${cmd}: ${e.message}`, 'CVMFS_THIN_DECOMPRESSOR', { cause: e })));
    child.on('close', (code, signal) => {
      this.exit = code ?? (signal ? -1 : 0);
      this.maybeEnd();
    });
  }
  private maybeEnd(): void {
    if (!this.outEnded || this.exit === undefined || this.destroyed) return;
    if (this.exit === 0) this.push(null);
    else this.destroy(new InvalidArgumentError(`${this.cmd}: ${this.stderr.trim() || `exit status ${this.exit}`}`, 'CVMFS_THIN_BAD_COMPRESSED_DATA'));
  }
  override _read(): void {
    this.child.stdout!.resume();
  }
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    const stdin = this.child.stdin!;
    if (stdin.destroyed) return cb();
    if (stdin.write(chunk)) cb();
    else {
      const done = (): void => {
        stdin.off('drain', done);
        stdin.off('close', done);
        cb();
      };
      stdin.on('drain', done);
      stdin.on('close', done);
    }
  }
  override _final(cb: (e?: Error | null) => void): void {
    this.child.stdin!.end();
    cb();
  }
  override _destroy(err: Error | null, cb: (e?: Error | null) => void): void {
    if (this.exit === undefined) this.child.kill('SIGKILL');
    cb(err);
  }
}

let zstdBinary: boolean | undefined;
function hasZstdBinary(): boolean {
  if (zstdBinary === undefined) {
    const r = spawnSync('zstd', ['--version'], { stdio: 'ignore' }); // a codec's availability, not a side effect: no Host (see ProcessDecoder)
    zstdBinary = r.status === 0;
  }
  return zstdBinary;
}

function decoderFor(kind: Compression, opts: DecompressOptions): Duplex | null {
  switch (kind) {
    case 'none':
      return null;
    case 'gzip':
      return gzipDecompressor.create();
    case 'zstd': {
      const how = opts.zstd ?? 'auto';
      const useProcess = how === 'process' || (how === 'auto' && hasZstdBinary());
      return (useProcess ? zstdProcessDecompressor : fzstdDecompressor).create();
    }
  }
}

/**
 * Decompress a layer stream. 'none' returns the input (as a Readable);
 * 'auto' sniffs gzip/zstd magic and falls back to 'none'. Errors of the
 * input and of the decoder surface on the returned stream.
 */
export function decompress(input: NodeJS.ReadableStream | Readable, kind: Compression | 'auto', opts: DecompressOptions = {}): Readable {
  const r = input instanceof Readable ? input : new Readable().wrap(input);
  if (kind !== 'auto') {
    if (!['gzip', 'zstd', 'none'].includes(kind))
      throw new InvalidArgumentError(`unknown compression ${JSON.stringify(kind)}`, 'CVMFS_THIN_UNSUPPORTED_MEDIA_TYPE');
    const d = decoderFor(kind, opts);
    if (!d) return r;
    return pipeline(r, d, () => undefined) as unknown as Readable;
  }
  const out = new PassThrough({ highWaterMark: 1 << 20 });
  readHead(r, 4).then(
    ({ head, ended }) => {
      const d = decoderFor(sniffCompression(head), opts);
      if (ended) {
        const src = d ?? new PassThrough();
        pipeline(src, out, () => undefined);
        src.end(head);
      } else {
        if (head.length > 0) r.unshift(head);
        if (d) pipeline(r, d, out, () => undefined);
        else pipeline(r, out, () => undefined);
      }
    },
    (e: unknown) => out.destroy(e as Error),
  );
  return out;
}

function readHead(r: Readable, n: number): Promise<{ head: Buffer; ended: boolean }> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let len = 0;
    const done = (ended: boolean): void => {
      r.off('data', onData);
      r.off('end', onEnd);
      r.off('error', onError);
      r.pause();
      resolve({ head: Buffer.concat(chunks), ended });
    };
    const onData = (c: Buffer | string): void => {
      const b = typeof c === 'string' ? Buffer.from(c) : c;
      chunks.push(b);
      len += b.length;
      if (len >= n) done(false);
    };
    const onEnd = (): void => done(true);
    const onError = (e: Error): void => {
      r.off('data', onData);
      r.off('end', onEnd);
      reject(e);
    };
    r.on('data', onData);
    r.once('end', onEnd);
    r.once('error', onError);
  });
}

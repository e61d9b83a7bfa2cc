/** A pass-through stream that checks a blob's size and sha256 digest, and counts bytes for progress. */
import { createHash, type Hash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import { BadContentError } from '../errors.js';

export class DigestVerifier extends Transform {
  private readonly hash: Hash = createHash('sha256');
  bytes = 0;
  /** True once the whole blob was seen and matched. */
  verified = false;

  constructor(
    private readonly digest: string,
    private readonly size: number,
    private readonly what: string,
    private readonly onBytes?: (total: number) => void,
  ) {
    super({ highWaterMark: 1 << 20 });
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.bytes += chunk.length;
    if (this.bytes > this.size) {
      cb(new BadContentError(`${this.what}: more than the ${this.size} bytes the manifest declares`, 'CVMFS_THIN_DIGEST_MISMATCH'));
      return;
    }
    this.hash.update(chunk);
    this.onBytes?.(this.bytes);
    cb(null, chunk);
  }

  override _flush(cb: TransformCallback): void {
    if (this.bytes !== this.size) {
      cb(new BadContentError(`${this.what}: got ${this.bytes} bytes, the manifest declares ${this.size}`, 'CVMFS_THIN_DIGEST_MISMATCH'));
      return;
    }
    const got = `sha256:${this.hash.digest('hex')}`;
    if (got !== this.digest) {
      cb(
        new BadContentError(
          `${this.what} does not match its digest: content has digest ${got}, the manifest declares ${this.digest}`,
          'CVMFS_THIN_DIGEST_MISMATCH',
        ),
      );
      return;
    }
    this.verified = true;
    cb();
  }
}

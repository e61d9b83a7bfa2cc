/** Benchmark file content: semi-compressible (roughly like binaries and text: gzip ~2×), deterministic per seed. */
import { randomBytes } from 'node:crypto';

const RND = randomBytes(1 << 20);
const TEXT = Buffer.from('lorem ipsum dolor sit amet, consectetur adipiscing elit; sed do eiusmod tempor. '.repeat(800));

export function content(size: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(size);
  let off = 0;
  let i = seed;
  while (off < size) {
    const src = i % 3 === 0 ? RND : TEXT;
    const start = (i * 4099) % (src.length - 8192);
    const n = Math.min(4096 + (i % 13) * 512, size - off);
    src.copy(b, off, start, start + n);
    off += n;
    i++;
  }
  return b;
}

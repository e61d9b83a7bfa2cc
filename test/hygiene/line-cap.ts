/**
 * The 400-line cap of hand-written source files: which `.ts` files under a
 * directory are longer, generated protobuf code (`<edge>/proto/`) left out.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';

/** Lines as `wc -l` counts them, plus a last line without its newline. */
export function lineCount(text: string): number {
  if (text === '') return 0;
  let n = 0;
  for (let i = text.indexOf('\n'); i !== -1; i = text.indexOf('\n', i + 1)) n++;
  return text.endsWith('\n') ? n : n + 1;
}

/** Generated code: `src/<edge>/proto/…` (npm run gen:proto), relative to the scanned root. */
export const isGenerated = (rel: string): boolean => /^[^/]+\/proto\//.test(rel);

/** `"<dir>/<file>: N lines"` for every `.ts` file under `dir` longer than `cap`, sorted. */
export function filesOverCap(dir: string, cap: number): string[] {
  const over: string[] = [];
  for (const rel of readdirSync(dir, { recursive: true, encoding: 'utf8' })) {
    const rp = rel.split(path.sep).join('/');
    if (!rp.endsWith('.ts') || isGenerated(rp)) continue;
    const file = path.join(dir, rel);
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EISDIR') continue;
      throw e;
    }
    const n = lineCount(text);
    if (n > cap) over.push(`${path.join(path.basename(dir), rp)}: ${n} lines`);
  }
  return over.sort();
}

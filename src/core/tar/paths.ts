/** Entry name cleaning and byte-string ↔ fs path conversion. Pure. */
import { isAscii } from './headers.js';

/**
 * Clean a tar entry name (byte string) the way Docker does
 * (`filepath.Clean`, then taken relative to the destination):
 * "./a//b/" → ["a","b"]; "/etc/x" → ["etc","x"]; "/../x" → ["x"] (".." at
 * the root of an absolute name stays at the root); "a/../b" → ["b"].
 * Returns null when a relative name climbs above the root ("../x", "a/../../x").
 * [] is the root itself ("." or "/").
 */
export function cleanName(name: string): string[] | null {
  const absolute = name.charCodeAt(0) === 0x2f;
  const out: string[] = [];
  let start = 0;
  const n = name.length;
  for (let i = 0; i <= n; i++) {
    if (i === n || name.charCodeAt(i) === 0x2f) {
      if (i > start) {
        const len = i - start;
        if (len === 1 && name.charCodeAt(start) === 0x2e) {
          // "."
        } else if (len === 2 && name.charCodeAt(start) === 0x2e && name.charCodeAt(start + 1) === 0x2e) {
          if (out.length > 0) out.pop();
          else if (!absolute) return null;
        } else {
          out.push(name.slice(start, i));
        }
      }
      start = i + 1;
    }
  }
  return out;
}

/** A byte-string path as something node:fs and sys.ts accept, bytes intact. */
export function fsPath(b: string): string | Buffer {
  return isAscii(b) ? b : Buffer.from(b, 'latin1');
}

/** Parent of a relative byte-string path ('' for a top-level name). */
export function parentOf(rel: string): string {
  const i = rel.lastIndexOf('/');
  return i < 0 ? '' : rel.slice(0, i);
}

export function joinRel(parent: string, name: string): string {
  return parent === '' ? name : parent + '/' + name;
}

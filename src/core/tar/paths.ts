/** Entry name cleaning and byte-string ↔ fs path conversion. Pure. */
import { unsafe } from './errors.js';
import { isAscii, type TarHeader } from './headers.js';

/** Longest path component (Linux NAME_MAX). */
export const NAME_MAX = 255;

/**
 * The checks every consumer of an entry makes before using its name (NUL
 * bytes, length limits, escaping names, link names), returning the cleaned
 * components ([] = the root itself). Throws UnsafeTarError naming the entry.
 */
export function entryComponents(h: TarHeader, maxNameBytes: number): string[] {
  if (h.name.includes('\0')) throw unsafe(h.name, 'nul-in-name', 'NUL byte in name');
  if (h.name.length > maxNameBytes) throw unsafe(h.name.slice(0, 256) + '…', 'name-too-long', `name of ${h.name.length} bytes exceeds ${maxNameBytes}`);
  const comps = cleanName(h.name);
  if (comps === null) throw unsafe(h.name, 'path-escape', 'name escapes the destination');
  for (const c of comps) if (c.length > NAME_MAX) throw unsafe(h.name, 'name-too-long', `path component of ${c.length} bytes exceeds ${NAME_MAX}`);
  if (h.type === 'link' || h.type === 'symlink') {
    if (h.linkname.includes('\0')) throw unsafe(h.name, 'nul-in-name', 'NUL byte in link name');
    if (h.linkname.length > maxNameBytes) throw unsafe(h.name, 'name-too-long', `link name of ${h.linkname.length} bytes exceeds ${maxNameBytes}`);
    if (h.linkname.length === 0) throw unsafe(h.name, 'bad-header', 'empty link name');
  }
  return comps;
}

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

/** A byte-string path as UTF-8 text for a layer's record; a name that is not UTF-8 cannot be recorded (refused naming the entry). */
export function recordPath(rel: string, entry: string): string {
  const b = Buffer.from(rel, 'latin1');
  const t = b.toString('utf8');
  if (!Buffer.from(t, 'utf8').equals(b))
    throw unsafe(entry, 'bad-whiteout', `name ${JSON.stringify(rel)} is not UTF-8 and cannot be written to the layer's record`);
  return t;
}

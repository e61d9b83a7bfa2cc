/**
 * What a `.chains/<id>` directory needs before it can stand for a whole
 * stack in a container:
 *
 *  - its root's nested-catalog marker `.cvmfscatalog` (DUCC's and ours) is
 *    not image content: hidden by a whiteout above it;
 *  - DUCC's chain writer drops the setuid, setgid and sticky bits (it passes
 *    raw tar modes to Go's os.Chmod), while its `layerfs` directories keep
 *    them but (ingested without -k) give every file to root. So for a chain
 *    over layers that are not ours, the layers are walked once (lstat of
 *    every entry, top layer first: the topmost entry of a path is the one
 *    the image has) and every entry whose special bits the chain lost is
 *    copied above it with the chain's owner, content and times and the
 *    layer's mode. Chains built by `cvmfs-thin convert` keep modes and need
 *    no walk.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { CATALOG_MARKER } from './masks.js';
import { classifyWhiteout } from '../fs/whiteout.js';

const SPECIAL = 0o7000;

type Kind = 'file' | 'dir' | 'other';
const kindOf = (st: { isFile(): boolean; isDirectory(): boolean }): Kind => (st.isFile() ? 'file' : st.isDirectory() ? 'dir' : 'other');

/**
 * Modes with special bits the image has, from the layers' directories (top
 * first): path → mode (07777 bits) of the topmost entry of that path, for
 * files and directories whose topmost entry has setuid, setgid or sticky.
 */
export async function specialModes(layersTopFirst: readonly string[]): Promise<{ modes: Map<string, { mode: number; kind: Kind }>; entries: number }> {
  const seen = new Set<string>();
  const modes = new Map<string, { mode: number; kind: Kind }>();
  let entries = 0;
  for (const layer of layersTopFirst) {
    const queue: string[] = [''];
    const worker = async (): Promise<void> => {
      for (;;) {
        const rel = queue.pop();
        if (rel === undefined) return;
        const ents = await fsp.readdir(path.join(layer, rel), { withFileTypes: true });
        await Promise.all(
          ents.map(async (e) => {
            if (classifyWhiteout(e.name) !== null || (rel === '' && e.name === CATALOG_MARKER)) return;
            const p = rel === '' ? e.name : `${rel}/${e.name}`;
            entries++;
            if (e.isDirectory()) queue.push(p);
            if (seen.has(p)) return;
            seen.add(p);
            if (!e.isDirectory() && !e.isFile()) return;
            const st = await fsp.lstat(path.join(layer, p));
            if ((st.mode & SPECIAL) !== 0) modes.set(p, { mode: st.mode & 0o7777, kind: kindOf(st) });
          }),
        );
      }
    };
    // a few directories in flight: CVMFS answers from its catalogs
    for (;;) {
      const n = Math.min(8, queue.length);
      if (n === 0) break;
      await Promise.all(Array.from({ length: n }, worker));
    }
  }
  return { modes, entries };
}

/** The entries of `chain` whose mode differs from what the layers say (their special bits were lost), with the mode to restore. */
export async function lostModes(chain: string, modes: Map<string, { mode: number; kind: Kind }>): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const [p, want] of modes) {
    let st;
    try {
      st = await fsp.lstat(path.join(chain, p));
    } catch {
      continue; // deleted by a layer above
    }
    if (kindOf(st) === want.kind && (st.mode & 0o7777) !== want.mode) out.set(p, want.mode);
  }
  return out;
}

/** Does the chain's root hold a catalog marker? */
export async function rootCatalog(chain: string): Promise<boolean> {
  try {
    return (await fsp.lstat(path.join(chain, CATALOG_MARKER))).isFile();
  } catch {
    return false;
  }
}

/**
 * Is an image already complete in the store? Read-only (no lock, no marker):
 * lets a converter that finds its image there write nothing at all, which
 * matters inside a CVMFS transaction. Any doubt answers false, and the
 * locked path then checks and repairs.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { bigDataFileName, shortLink, type StorePaths } from './format.js';
import { layerRootOk } from './layers.js';
import { lstatOrNull, readImages, readLayers } from './store-io.js';

export async function isPresent(p: StorePaths, want: { imageId: string; names: string[]; ids: string[]; bigDataKeys: string[] }): Promise<boolean> {
  try {
    if (!(await lstatOrNull(p.root))?.isDirectory() || (await lstatOrNull(p.marker)) !== null) return false;
    const image = (await readImages(p)).find((i) => i.id === want.imageId);
    if (!image || image.layer !== want.ids[want.ids.length - 1]) return false;
    if (!want.names.every((n) => image.names?.includes(n))) return false;
    if (!want.bigDataKeys.every((k) => image['big-data-names']?.includes(k))) return false;
    for (const k of want.bigDataKeys) if (!(await lstatOrNull(path.join(p.image(want.imageId), bigDataFileName(k))))?.isFile()) return false;
    const layers = new Map((await readLayers(p)).map((l) => [l.id, l]));
    for (const [i, id] of want.ids.entries()) {
      const l = layers.get(id);
      if (!l || (l.parent ?? null) !== (i > 0 ? want.ids[i - 1] : null)) return false;
      // the layer's blob, or another blob of the same content already there (gzip vs zstd), at our mount root
      const hex = p.diffHex(await fsp.readlink(path.join(p.layer(id), 'diff')));
      if (hex === null) return false;
      const root = await fsp.stat(p.localRootfs(hex));
      if (!root.isDirectory() || !layerRootOk(root)) return false;
      const split = (await lstatOrNull(p.localTarSplit(hex)))?.isFile() === true;
      if (split !== ((await fsp.readlink(p.tarSplit(id)).catch(() => null)) === p.tarSplitTarget(hex))) return false;
      const link = await fsp.readFile(path.join(p.layer(id), 'link'), 'utf8');
      if (link !== shortLink(id) || (await fsp.readlink(p.link(link))) !== `../${id}/diff`) return false;
    }
    return true;
  } catch {
    return false;
  }
}

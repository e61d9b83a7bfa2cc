/**
 * Checking a podman store the way containers/storage will read it: both JSON
 * files parse, names are unique, every image's layer chain is listed, every
 * layer directory has `diff` (an absolute link, all at one mount root, to
 * the repository's layer: checked in the repository directory), `link`, `lower`
 * consistent with its parents and a short link back to it, every big-data
 * item exists with its recorded digest, tar-split links lead to a file,
 * lock files carry a token. Returns
 * the problems found (empty: the store is valid).
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { bigDataFileName, DIFF_TARGET, LAST_WRITER_SIZE, StorePaths, type StoreImage, type StoreLayer } from './format.js';
import { lstatOrNull, readJsonArray } from './store-io.js';

interface StoreCheck {
  images: number;
  layers: number;
  problems: string[];
}

/** `storeRoot`: the mount root the links must have (default: that of the first listed layer). */
export async function checkPodmanStore(repoDir: string, o: { storeRoot?: string | undefined } = {}): Promise<StoreCheck> {
  let p = new StorePaths(path.resolve(repoDir), undefined, o.storeRoot);
  const problems: string[] = [];
  let images: StoreImage[] = [];
  let layers: StoreLayer[] = [];
  try {
    layers = await readJsonArray<StoreLayer>(p.layersJson, 'layer');
  } catch (e) {
    problems.push((e as Error).message);
  }
  try {
    images = await readJsonArray<StoreImage>(p.imagesJson, 'image');
  } catch (e) {
    problems.push((e as Error).message);
  }
  for (const f of [p.layersLock, p.imagesLock]) {
    const st = await lstatOrNull(f);
    if (!st?.isFile()) problems.push(`${f}: missing`);
    else if (st.size < LAST_WRITER_SIZE) problems.push(`${f}: no last-writer token (${st.size} bytes)`);
  }
  const byId = new Map<string, StoreLayer>();
  for (const l of layers) {
    if (byId.has(l.id)) problems.push(`layers.json: layer ${l.id} listed twice`);
    byId.set(l.id, l);
  }
  if (o.storeRoot === undefined && layers[0]) {
    const m = DIFF_TARGET.exec((await fsp.readlink(path.join(p.layer(layers[0].id), 'diff')).catch(() => null)) ?? '');
    if (m) p = new StorePaths(p.repoDir, undefined, m[1]);
  }
  const links = new Map<string, string>();
  for (const l of layers) {
    const dir = p.layer(l.id);
    if (l.parent !== undefined && !byId.has(l.parent)) problems.push(`layer ${l.id}: parent ${l.parent} is not listed`);
    const cd = l['compressed-diff-digest'];
    const diffLink = await fsp.readlink(path.join(dir, 'diff')).catch(() => null);
    const hex = diffLink === null ? null : p.diffHex(diffLink);
    if (hex === null) {
      problems.push(
        `layer ${l.id}: diff is ${JSON.stringify(diffLink)}, not an absolute link into ${p.mountRoot}/.layers (containers/storage refuses relative ones)`,
      );
    } else {
      const diff = await fsp.stat(p.localRootfs(hex)).catch(() => null);
      if (!diff?.isDirectory()) problems.push(`layer ${l.id}: diff leads to ${p.localRootfs(hex)} in the repository directory, which is not a directory`);
      if (typeof cd === 'string' && /^sha256:[a-f0-9]{64}$/.test(cd) && hex !== cd.slice(7)) {
        problems.push(`layer ${l.id}: diff is ${JSON.stringify(diffLink)}, not the repository's layer ${cd}`);
      }
      const split = await fsp.readlink(p.tarSplit(l.id)).catch(() => null);
      if (split !== null && (split !== p.tarSplitTarget(hex) || !(await fsp.stat(p.localTarSplit(hex)).catch(() => null))?.isFile())) {
        problems.push(`layer ${l.id}: ${p.tarSplit(l.id)} points to ${split}, not to the tar-split of the repository's layer sha256:${hex}`);
      }
    }
    const link = await fsp.readFile(path.join(dir, 'link'), 'utf8').catch(() => null);
    if (link === null || !/^[A-Z2-7]{26}$/.test(link)) {
      problems.push(`layer ${l.id}: link file missing or malformed`);
      continue;
    }
    links.set(l.id, link);
    const target = await fsp.readlink(p.link(link)).catch(() => null);
    if (target !== `../${l.id}/diff`) problems.push(`layer ${l.id}: short link l/${link} ${target === null ? 'is missing' : `points to ${target}`}`);
  }
  for (const l of layers) {
    // lower = l/<parent link>:<parent's lower>
    const want: string[] = [];
    const seen = new Set<string>();
    for (let q = l.parent; q !== undefined && !seen.has(q); q = byId.get(q)?.parent) {
      seen.add(q);
      const lk = links.get(q);
      if (lk) want.push(`l/${lk}`);
    }
    const lower = await fsp.readFile(path.join(p.layer(l.id), 'lower'), 'utf8').catch(() => null);
    if ((lower ?? '') !== want.join(':')) problems.push(`layer ${l.id}: lower is ${JSON.stringify(lower)}, want ${JSON.stringify(want.join(':'))}`);
  }
  const names = new Map<string, string>();
  for (const im of images) {
    for (const n of im.names ?? []) {
      const other = names.get(n);
      if (other !== undefined)
        problems.push(`images.json: name ${n} held by ${other} and ${im.id} (containers/storage refuses a read-only store with duplicate names)`);
      names.set(n, im.id);
    }
    if (im.layer === undefined || !byId.has(im.layer)) problems.push(`image ${im.id}: top layer ${im.layer} is not listed`);
    for (const key of im['big-data-names'] ?? []) {
      const f = path.join(p.image(im.id), bigDataFileName(key));
      const data = await fsp.readFile(f).catch(() => null);
      if (data === null) {
        problems.push(`image ${im.id}: big data ${key} missing (${f})`);
        continue;
      }
      const d = `sha256:${createHash('sha256').update(data).digest('hex')}`;
      const want = im['big-data-digests']?.[key];
      if (want !== undefined && want !== d) problems.push(`image ${im.id}: big data ${key} has digest ${d}, images.json says ${want}`);
    }
  }
  return { images: images.length, layers: layers.length, problems };
}

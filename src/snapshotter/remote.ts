/**
 * The remote-snapshot protocol (CRI layer labels): if the layer a Prepare
 * names is in CVMFS, commit a snapshot backed by it instead of letting
 * containerd download and unpack it.
 */
import path from 'node:path';
import type { Logger } from 'pino';
import { layerRootfs } from '../core/cvmfs/layout.js';
import { parseDigest } from '../core/util/digest.js';
import type { LayerStack } from '../core/stack/index.js';
import { cleanLabels, type Clock, LABEL_LAYER_DIGEST, LABEL_REMOTE, LABEL_SNAPSHOT_REF } from './labels.js';
import type { MetaStore, SnapshotRecord } from './metastore.js';

interface RemoteContext {
  store: MetaStore;
  stack: LayerStack;
  clock: Clock;
  log: Logger;
}

/** The snapshots below `parent` are all remote: their layer hexes, bottom first (null if not). */
function remoteChain(store: MetaStore, parent: string): string[] | null {
  const hexes: string[] = [];
  for (let n = parent; n !== '';) {
    const r = store.get(n);
    if (!r?.layerDigest) return null;
    hexes.unshift(r.layerDigest.slice(7));
    n = r.parent;
  }
  return hexes;
}

/**
 * Commit a snapshot (name = the target chain ID) backed by the CVMFS layer
 * the labels name and return its name; null to fall back to a normal local
 * layer. Never throws: any failure falls back, leaving nothing behind.
 */
export async function serveRemote(c: RemoteContext, parent: string, labels: Record<string, string>): Promise<string | null> {
  const { store, stack, log } = c;
  const target = labels[LABEL_SNAPSHOT_REF]!;
  const digestLabel = labels[LABEL_LAYER_DIGEST];
  if (!digestLabel) {
    log.debug({ target }, 'no cri.layer-digest label: normal layer');
    return null;
  }
  const d = parseDigest(digestLabel);
  if (!d) {
    log.warn({ target, label: digestLabel }, 'malformed cri.layer-digest label: normal layer');
    return null;
  }
  // already served for this chain (another namespace, a second pull)
  for (const name of store.children(parent)) {
    const r = store.get(name);
    if (r && r.kind === 'committed' && r.source === 'remote' && r.labels[LABEL_SNAPSHOT_REF] === target) return r.name;
  }
  const loc = stack.location;
  let rollback = () => {};
  try {
    const rel = path.relative(loc.absoluteMountpoint, layerRootfs(loc.absoluteMountpoint, d.hex));
    // a dead or stalled CVMFS: fall back at once (or at the deadline) rather than hang in locate()
    await stack.checkRepositories([{ repository: loc.repository, rel }], `remote layer ${d.hex}`);
    const dir = await stack.cvmfs.locate(loc.repository, rel, LABEL_LAYER_DIGEST);
    if (!dir) {
      log.info({ target, layer: d.hex }, 'layer not in CVMFS: normal layer (containerd downloads it)');
      return null;
    }
    // a DUCC chain for the whole stack, when every layer below is remote too
    const below = remoteChain(store, parent);
    const chain = below && below.length > 0 ? await stack.cvmfs.findChain(loc.repository, [...below, d.hex]) : null;
    const resolved = chain
      ? await stack.cvmfs.chainDirs(chain, loc.absoluteMountpoint, [...below!, d.hex])
      : await stack.cvmfs.layerDirs(dir, loc.absoluteMountpoint, d.hex, parent === '');
    const links = await stack.links.link(resolved.dirs);
    rollback = links.rollback;
    const id = store.allocId();
    const name = store.get(target) ? `${target}@${id.toString(36)}` : target;
    const now = c.clock.now();
    const rec: SnapshotRecord = {
      name,
      kind: 'committed',
      parent,
      id,
      created: now,
      updated: now,
      labels: { ...cleanLabels(labels), [LABEL_REMOTE]: 'remote snapshot' },
      size: 0,
      inodes: 0,
      links: Object.fromEntries(links.made),
      stack: [...links.made.keys()],
      terminal: resolved.flattened,
      source: 'remote',
      layerDigest: `sha256:${d.hex}`,
    };
    await store.write({ put: [rec] });
    log.info({ target, name, layer: d.hex, how: resolved.how }, 'remote snapshot prepared from CVMFS');
    return name;
  } catch (e) {
    rollback();
    log.warn({ err: e, target, layer: d.hex }, 'could not serve layer from CVMFS: normal layer');
    return null;
  }
}

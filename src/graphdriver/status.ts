/** GraphDriver.Status (what `docker info` shows under "Storage Driver: cvmfs") and GetMetadata. */
import path from 'node:path';
import type { CvmfsLocation } from '../core/cvmfs/location.js';
import { isInside } from '../core/fs/fsutil.js';
import type { Host } from '../core/host/host.js';
import type { IdMaps } from '../core/util/idmap.js';
import type { LayerStore } from './layer-store.js';
import type { Mounter } from './mounter.js';

interface StatusSource {
  home: string;
  location: CvmfsLocation;
  thinImages: boolean;
  idMaps: IdMaps | undefined;
  store: LayerStore;
  mounter: Mounter;
}

export function statusOf(a: StatusSource, host: Host): [string, string][] {
  let thin = 0;
  let mounted = 0;
  for (const [, l] of a.store.all()) {
    if (l.rec.thin) thin++;
    if (l.refs > 0) mounted++;
  }
  const fs = host
    .mountinfo()
    .filter((m) => isInside(m.mountPoint, a.home))
    .sort((x, y) => y.mountPoint.length - x.mountPoint.length)[0];
  const out: [string, string][] = [
    ['Backing Filesystem', fs?.fsType ?? 'unknown'],
    ['Home', a.home],
    ['Layers', String(a.store.size)],
    ['Thin Image Layers', String(thin)],
    ['Mounted Layers', String(mounted)],
    ['CVMFS Repository', a.location.repository],
    ['CVMFS Mountpoint', a.location.absoluteMountpoint],
    ['CVMFS Root', a.location.cvmfsRoot],
    ['Allowed Repositories', a.location.allowedRepositories.join(', ')],
    ['Thin Images', a.thinImages ? 'enabled' : 'disabled'],
    ['Supports d_type', 'true'],
    ['Native Overlay Diff', 'true'],
  ];
  if (a.idMaps) {
    const m = a.mounter;
    out.push(['User Namespace', a.idMaps.uids.map((x) => `${x.containerId}:${x.hostId}:${x.size}`).join(' ')]);
    out.push(['Idmapped CVMFS Layers', m.idmappedLayers === 'off' ? 'off' : m.idmapBroken ? `unavailable (${m.idmapBroken})` : 'yes']);
  }
  return out;
}

/** GetMetadata: overlay2's keys (`docker inspect` GraphDriver.Data) plus the thin-image fields. */
export function metadataOf(a: StatusSource, id: string): Record<string, string> {
  const l = a.store.must(id);
  const dir = a.store.layerDir(id);
  const md: Record<string, string> = {
    UpperDir: path.join(dir, 'diff'),
    WorkDir: path.join(dir, 'work'),
    MergedDir: path.join(dir, 'merged'),
  };
  const stack = a.mounter.stackOf(l.rec.parent);
  if (stack.length > 0) md['LowerDir'] = stack.map((s) => s.real).join(':');
  if (l.rec.thin) {
    md['CvmfsThinImage'] = 'true';
    md['CvmfsLayers'] = String(l.rec.thin.layers);
    md['CvmfsLowerDir'] = l.rec.thin.lowers.map((t) => t.dir).join(':');
    if (l.rec.thin.origin) md['CvmfsOrigin'] = l.rec.thin.origin;
  }
  return md;
}

/**
 * The node side: the `storage.conf` lines that make podman and CRI-O use a
 * repository's store as a read-only additional image store.
 */
import path from 'node:path';
import { STORE_DIR } from './format.js';

interface StorageConfOptions {
  /** Where the repository is mounted on the nodes (default /cvmfs/unpacked.cern.ch). */
  repositoryMount?: string;
  /** Use fuse-overlayfs as overlay's mount program (rootless podman, or layers with plain `.wh.*` whiteouts). */
  fuseOverlayfs?: boolean;
}

/** A complete `/etc/containers/storage.conf` (podman and CRI-O read the same file). */
export function storageConf(o: StorageConfOptions = {}): string {
  const store = path.join(o.repositoryMount ?? '/cvmfs/unpacked.cern.ch', STORE_DIR);
  const lines = [
    '# /etc/containers/storage.conf (podman and CRI-O)',
    '[storage]',
    'driver = "overlay"',
    'runroot = "/run/containers/storage"',
    'graphroot = "/var/lib/containers/storage"',
    '',
    '[storage.options]',
    '# images converted into CVMFS: run without pulling, layers read on demand',
    `additionalimagestores = [${JSON.stringify(store)}]`,
  ];
  if (o.fuseOverlayfs) lines.push('', '[storage.options.overlay]', 'mount_program = "/usr/bin/fuse-overlayfs"');
  return `${lines.join('\n')}\n`;
}

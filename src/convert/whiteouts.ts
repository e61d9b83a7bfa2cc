/**
 * Which form the converter writes layers in, and which forms cannot cross a
 * CVMFS publish (../shared notes, observed on a real Stratum-0):
 *
 *  - `overlay` (0/0 devices, trusted.overlay.opaque): a transaction's union
 *    mount refuses `mknod c 0 0` (EPERM) and escapes the opaque xattr;
 *  - `keep` (OCI `.wh.*` files): a transaction's publisher takes them for
 *    deletions and never publishes them; `cvmfs_server ingest` keeps them;
 *  - `record` (nothing in layerfs, a record beside it): survives both.
 *
 * Default: `record` when publishing (hooks, ingest) or when the repository
 * directory is itself a union mount (a transaction opened by hand), else
 * `overlay` (a plain tree read as is, e.g. by a podman store).
 * Refused here, before any transaction is opened.
 */
import { statfsSync } from 'node:fs';
import path from 'node:path';
import { InvalidArgumentError } from '../core/errors/errors.js';
import { FS_MAGIC } from '../core/host/host.js';

export type LayerForm = 'overlay' | 'keep' | 'record';

/** The file system type of `dir` or of its nearest existing ancestor. */
function fsTypeOf(dir: string): number | null {
  for (let d = path.resolve(dir); ; d = path.dirname(d)) {
    try {
      return statfsSync(d).type;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT' || d === path.dirname(d)) return null;
    }
  }
}

interface FormContext {
  /** transaction/publish hooks given */
  transaction: boolean;
  /** layers go through `cvmfs_server ingest` */
  ingest: boolean;
  repositoryDir: string;
}

export function resolveLayerForm(asked: LayerForm | undefined, c: FormContext, fsType: (dir: string) => number | null = fsTypeOf): LayerForm {
  const union = fsType(c.repositoryDir) === FS_MAGIC.OVERLAY;
  const via = c.ingest
    ? 'cvmfs_server ingest'
    : c.transaction
      ? 'the publishing hooks'
      : union
        ? `${c.repositoryDir} (an overlay union mount: a CVMFS transaction)`
        : null;
  if (asked === undefined) return via ? 'record' : 'overlay';
  if (asked === 'overlay' && via) {
    throw new InvalidArgumentError(
      `--whiteouts overlay cannot be published through ${via}: ${c.ingest ? 'layers are streamed to it, never unpacked here, and ' : ''}a CVMFS transaction's union mount refuses overlay whiteouts (mknod c 0 0: EPERM) and drops trusted.overlay.opaque; use --whiteouts record (the default when publishing)`,
      'CVMFS_THIN_CANNOT_PUBLISH',
    );
  }
  if (asked === 'keep' && !c.ingest && (c.transaction || union)) {
    throw new InvalidArgumentError(
      `--whiteouts keep cannot be published through ${via}: CVMFS's publisher takes .wh.* files for deletions, so they never reach the repository and deleted files come back in containers; use --whiteouts record (the default when publishing), or --ingest`,
      'CVMFS_THIN_CANNOT_PUBLISH',
    );
  }
  return asked;
}

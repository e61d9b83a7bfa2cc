/**
 * `cvmfs-thin setup podman`: `/etc/containers/storage.conf` for podman and
 * CRI-O, with the repository's store (written by `convert --podman-store`)
 * as a read-only additional image store. Other keys and comments are kept; an
 * existing list of additional stores is extended, not replaced.
 */
import { statSync } from 'node:fs';
import path from 'node:path';
import { InvalidArgumentError } from '../core/errors/errors.js';
import { storageConf } from '../convert/podman/setup.js';
import { readIfExists } from './files.js';
import type { CommonOptions, Plan } from './setup.js';
import { editToml, isTable, type Table } from './toml-edit.js';

interface PodmanOptions {
  storageConf: string;
  /** The store as the nodes see it (default <cvmfs-root>/<repository>/podmanStore). */
  store: string;
  /** overlay's mount_program = fuse-overlayfs (rootless podman, or layers kept with .wh.* files). */
  fuseOverlayfs: boolean;
}

export function defaultStore(o: CommonOptions): string {
  return path.join(o.cvmfsRoot ?? '/cvmfs', o.repository ?? 'unpacked.cern.ch', 'podmanStore');
}

/** Whether the store directory can serve: null when it looks like a store. */
function storeMissing(dir: string): 'absent' | 'not a directory' | 'empty' | null {
  try {
    if (!statSync(dir).isDirectory()) return 'not a directory';
  } catch {
    return 'absent';
  }
  try {
    statSync(path.join(dir, 'overlay-images'));
    return null;
  } catch {
    return 'empty';
  }
}

const table = (doc: Table, key: string, file: string): Table => {
  const t = doc[key] ?? (doc[key] = {});
  if (!isTable(t)) throw new InvalidArgumentError(`${file}: ${key} is not a table; the file was not changed`, 'CVMFS_THIN_BAD_CONFIG');
  return t;
};

export async function planPodman(o: CommonOptions, p: PodmanOptions): Promise<Plan> {
  if (!path.isAbsolute(p.store)) throw new InvalidArgumentError(`--store ${p.store} must be an absolute path`, 'CVMFS_THIN_BAD_FLAG');
  const before = readIfExists(p.storageConf);
  const plan: Plan = { target: 'podman', changes: [], warnings: [], units: [], runtimes: [] };
  let after: string;
  if (!before) after = storageConf({ repositoryMount: path.dirname(p.store), fuseOverlayfs: p.fuseOverlayfs });
  else {
    after = await editToml(before.toString('utf8'), p.storageConf, (doc) => {
      const storage = table(doc, 'storage', p.storageConf);
      if (storage['driver'] !== undefined && storage['driver'] !== 'overlay') {
        throw new InvalidArgumentError(
          `${p.storageConf}: storage.driver is ${JSON.stringify(storage['driver'])}; additional image stores of CVMFS need "overlay"`,
          'CVMFS_THIN_BAD_CONFIG',
        );
      }
      storage['driver'] = 'overlay';
      const options = table(storage, 'options', p.storageConf);
      const stores = options['additionalimagestores'] ?? [];
      if (!Array.isArray(stores) || !stores.every((s) => typeof s === 'string')) {
        throw new InvalidArgumentError(
          `${p.storageConf}: storage.options.additionalimagestores is not a list of paths; the file was not changed`,
          'CVMFS_THIN_BAD_CONFIG',
        );
      }
      if (!stores.includes(p.store)) options['additionalimagestores'] = [...stores, p.store];
      if (p.fuseOverlayfs) table(options, 'overlay', p.storageConf)['mount_program'] = '/usr/bin/fuse-overlayfs';
    });
  }
  plan.changes.push({ path: p.storageConf, before, after: Buffer.from(after) });
  const missing = storeMissing(path.join(o.rootPrefix || '/', p.store));
  if (missing === 'absent' || missing === 'not a directory') {
    plan.warnings.push(
      `${p.store} ${missing === 'absent' ? 'does not exist (yet)' : 'is not a directory'}: every podman and CRI-O command will fail ("can't stat imageStore dir") until the repository is mounted and has a store (cvmfs-thin convert --podman-store); undo with --undo if this node will not have it`,
    );
  } else if (missing === 'empty') {
    plan.warnings.push(
      `${p.store} holds no store yet (no overlay-images/): podman lists no images from it until cvmfs-thin convert --podman-store has written one`,
    );
  }
  plan.warnings.push('podman reads storage.conf at every command; restart CRI-O (systemctl restart crio) if it runs');
  return plan;
}

/**
 * The real host's user namespaces (Host.createUserns): a file descriptor
 * carrying dockerd's `--userns-remap` mapping, for idmapped mounts of CVMFS
 * layers. A Node process cannot
 * unshare(CLONE_NEWUSER) itself (it is multi-threaded), so a short-lived
 * child (`unshare --user sleep`) provides the namespace: its uid_map/gid_map
 * are written from here (we are root in the parent namespace), its
 * /proc/<pid>/ns/user is opened, and the child is killed; the open fd keeps
 * the namespace alive.
 */
import { spawn } from 'node:child_process';
import { closeSync, openSync, promises as fsp, readlinkSync } from 'node:fs';
import { UnavailableError } from '../errors/errors.js';
import type { IdMap } from '../util/idmap.js';

/** The text of a /proc/<pid>/uid_map file. Pure. */
export function idMapText(maps: readonly IdMap[]): string {
  return maps.map((m) => `${m.containerId} ${m.hostId} ${m.size}\n`).join('');
}

/** A user namespace held open; `close` lets it go (idempotent). */
export interface UsernsHandle {
  fd: number;
  close(): void;
}

export async function createUserns(uidMaps: readonly IdMap[], gidMaps: readonly IdMap[]): Promise<UsernsHandle> {
  const own = readlinkSync('/proc/self/ns/user');
  const child = spawn('unshare', ['--user', '--', 'sleep', '30'], { stdio: 'ignore' });
  const spawned = new Promise<void>((resolve, reject) => {
    child.once('spawn', () => resolve());
    child.once('error', (e) => reject(new UnavailableError(`cannot start unshare(1) to create a user namespace: ${e.message}`, 'CVMFS_THIN_USERNS')));
  });
  try {
    await spawned;
    const pid = child.pid!;
    let ready = false;
    for (let i = 0; i < 400 && !ready; i++) {
      try {
        ready = readlinkSync(`/proc/${pid}/ns/user`) !== own;
      } catch {
        /* not yet */
      }
      if (!ready) {
        if (child.exitCode !== null) throw new UnavailableError(`unshare --user exited with ${child.exitCode}`, 'CVMFS_THIN_USERNS');
        await new Promise((r) => setTimeout(r, 5));
      }
    }
    if (!ready) throw new UnavailableError('unshare --user did not create a user namespace in time', 'CVMFS_THIN_USERNS');
    await fsp.writeFile(`/proc/${pid}/uid_map`, idMapText(uidMaps));
    await fsp.writeFile(`/proc/${pid}/gid_map`, idMapText(gidMaps));
    const fd = openSync(`/proc/${pid}/ns/user`, 'r');
    let closed = false;
    return {
      fd,
      close() {
        if (closed) return;
        closed = true;
        closeSync(fd);
      },
    };
  } finally {
    child.kill('SIGKILL');
  }
}

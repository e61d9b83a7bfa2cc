/** Unix socket housekeeping shared by the daemons. */
import { promises as fsp } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { FailedPreconditionError, InvalidArgumentError } from '../errors/errors.js';

/** Linux sun_path is 108 bytes including the terminating NUL. */
const MAX_SOCKET_PATH = 107;

/**
 * Make `address` bindable: create its directory, remove a stale socket left by
 * a crash; refuse to touch a live socket or anything that is not a socket.
 */
export async function prepareSocket(address: string): Promise<void> {
  if (!path.isAbsolute(address)) throw new InvalidArgumentError(`socket address ${address} must be an absolute path`, 'CVMFS_THIN_BAD_FLAG');
  if (Buffer.byteLength(address) > MAX_SOCKET_PATH) {
    throw new InvalidArgumentError(`socket path ${address} is longer than ${MAX_SOCKET_PATH} bytes (the unix socket limit)`, 'CVMFS_THIN_BAD_FLAG');
  }
  await fsp.mkdir(path.dirname(address), { recursive: true, mode: 0o711 });
  let st;
  try {
    st = await fsp.lstat(address);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw e;
  }
  if (!st.isSocket()) throw new InvalidArgumentError(`${address} exists and is not a socket; refusing to replace it`, 'CVMFS_THIN_PATH_OCCUPIED');
  const alive = await new Promise<boolean>((resolve) => {
    const s = net.connect(address);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
  if (alive) throw new FailedPreconditionError(`another process is already serving ${address}`, 'CVMFS_THIN_ADDRESS_IN_USE');
  await fsp.rm(address, { force: true });
}

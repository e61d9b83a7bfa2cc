/**
 * What dockerd said in GraphDriver.Init, remembered in `<state-dir>/driver.json`
 * because dockerd does not call Init again when only the plugin restarts; and
 * the effective CVMFS settings (Init options over the plugin's own).
 */
import { existsSync, promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { type CvmfsLocation, cvmfsLocation } from '../core/cvmfs/location.js';
import { writeFileAtomic } from '../core/fs/fsutil.js';
import type { IdMap } from '../core/util/idmap.js';
import type { DriverOptions, IdmapMode } from './options.js';

export interface InitState {
  schema: 'cvmfs-thin/graphdriver-init';
  version: 1;
  home: string;
  opts: string[];
  uidMaps: IdMap[];
  gidMaps: IdMap[];
  initAt: string;
}

export const INIT_SCHEMA = 'cvmfs-thin/graphdriver-init';

function validInit(o: unknown): o is InitState {
  const s = o as Partial<InitState> | null;
  return !!s && s.schema === INIT_SCHEMA && typeof s.home === 'string' && Array.isArray(s.opts) && Array.isArray(s.uidMaps) && Array.isArray(s.gidMaps);
}

const stateFile = (stateDir: string): string => path.join(stateDir, 'driver.json');

/** The saved state, if there is a valid one whose Home still exists (null, and why logged, otherwise). */
export async function loadInitState(stateDir: string, log: Logger): Promise<InitState | null> {
  let saved: unknown;
  try {
    saved = JSON.parse(await fsp.readFile(stateFile(stateDir), 'utf8')) as unknown;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') log.error({ err: e, dir: stateDir }, 'cannot read the saved Init state; waiting for GraphDriver.Init');
    return null;
  }
  if (!validInit(saved)) {
    log.error({ dir: stateDir }, 'saved Init state is not valid; waiting for GraphDriver.Init');
    return null;
  }
  if (!existsSync(saved.home)) {
    log.warn({ home: saved.home }, 'the Home of the saved Init state is gone; waiting for GraphDriver.Init');
    return null;
  }
  return saved;
}

export async function saveInitState(stateDir: string, s: InitState): Promise<void> {
  await writeFileAtomic(stateFile(stateDir), `${JSON.stringify(s, null, 2)}\n`, 0o600);
}

interface Effective {
  location: CvmfsLocation;
  thinImages: boolean;
  idmappedLayers: IdmapMode;
}

/** Init options override the plugin's configuration; a mountpoint follows a changed root or repository unless given. */
export function effective(base: Effective, o: DriverOptions): Effective {
  const b = base.location;
  const location = cvmfsLocation({
    repository: o.repository ?? b.repository,
    cvmfsRoot: o.cvmfsRoot ?? b.cvmfsRoot,
    absoluteMountpoint: o.absoluteMountpoint ?? (o.cvmfsRoot !== undefined || o.repository !== undefined ? undefined : b.absoluteMountpoint),
    allowedRepositories: o.allowedRepositories ?? (o.repository !== undefined ? undefined : b.allowedRepositories),
  });
  return { location, thinImages: o.thinImages ?? base.thinImages, idmappedLayers: o.idmappedLayers ?? base.idmappedLayers };
}

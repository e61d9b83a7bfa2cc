/**
 * `--storage-opt` strings as dockerd passes them in GraphDriver.Init (`Opts`),
 * and per-layer `StorageOpt` of Create/CreateReadWrite. Pure.
 *
 * Init options override the plugin's own configuration (flags/TOML) for that
 * daemon. Keys may carry a `cvmfs.` prefix (dockerd does not add or check
 * prefixes). Unknown keys are refused, so a typo fails dockerd's start with a
 * clear message instead of being silently ignored.
 */
import path from 'node:path';
import { REPOSITORY_NAME } from '../core/cvmfs/location.js';
import { InvalidArgumentError } from '../core/errors/errors.js';

export type IdmapMode = 'auto' | 'off' | 'require';

export interface DriverOptions {
  repository?: string;
  absoluteMountpoint?: string;
  cvmfsRoot?: string;
  allowedRepositories?: string[];
  thinImages?: boolean;
  idmappedLayers?: IdmapMode;
}

const KNOWN_INIT_OPTIONS = [
  'repository',
  'absolute-mountpoint',
  'cvmfs-root',
  'allowed-repositories',
  'thin-images',
  'idmapped-layers',
  'cvmfsMountMethod',
  'overlay2.override_kernel_check',
] as const;

const PREFIXES = ['cvmfs.', 'cvmfs-thin.'];

function bad(opt: string, why: string): never {
  throw new InvalidArgumentError(`storage option ${JSON.stringify(opt)}: ${why}`, 'CVMFS_THIN_BAD_STORAGE_OPT');
}

function bool(opt: string, v: string): boolean {
  const l = v.toLowerCase();
  if (['true', '1', 'yes', 'on'].includes(l)) return true;
  if (['false', '0', 'no', 'off'].includes(l)) return false;
  return bad(opt, `${JSON.stringify(v)} is not a boolean (true or false)`);
}

function absPath(opt: string, v: string): string {
  if (!path.isAbsolute(v)) bad(opt, 'must be an absolute path');
  return path.resolve(v);
}

function repo(opt: string, v: string): string {
  if (!REPOSITORY_NAME.test(v)) bad(opt, `${JSON.stringify(v)} is not a CVMFS repository name (like unpacked.cern.ch)`);
  return v;
}

/** Parse Init.Opts. Throws InvalidArgumentError naming the option and listing the known ones. */
export function parseInitOptions(opts: readonly string[]): DriverOptions {
  const out: DriverOptions = {};
  for (const opt of opts) {
    const eq = opt.indexOf('=');
    if (eq <= 0) bad(opt, 'must be key=value');
    let key = opt.slice(0, eq).trim();
    const value = opt.slice(eq + 1).trim();
    for (const p of PREFIXES) if (key.startsWith(p)) key = key.slice(p.length);
    switch (key) {
      case 'repository':
        out.repository = repo(opt, value);
        break;
      case 'absolute-mountpoint':
        out.absoluteMountpoint = absPath(opt, value);
        break;
      case 'cvmfs-root':
        out.cvmfsRoot = absPath(opt, value);
        break;
      case 'allowed-repositories': {
        const list = value.split(/[,:\s]+/).filter((s) => s !== '');
        if (list.length === 0) bad(opt, 'lists no repository');
        out.allowedRepositories = list.map((r) => repo(opt, r));
        break;
      }
      case 'thin-images':
        out.thinImages = bool(opt, value);
        break;
      case 'idmapped-layers':
        if (value !== 'auto' && value !== 'off' && value !== 'require') bad(opt, 'must be auto, off or require');
        out.idmappedLayers = value;
        break;
      case 'cvmfsMountMethod':
        // the 2018 plugin's option: "external" (repositories mounted by the host) is what this driver always does
        if (value !== 'external') {
          bad(
            opt,
            'this driver does not run cvmfs2 itself: mount the repositories on the host (autofs or cvmfs_config) and use cvmfsMountMethod=external or leave it out',
          );
        }
        break;
      case 'overlay2.override_kernel_check':
        bool(opt, value); // accepted for compatibility with the 2018 plugin's documented daemon.json
        break;
      default:
        bad(opt, `unknown option (known: ${KNOWN_INIT_OPTIONS.join(', ')}; an optional "cvmfs." prefix is allowed)`);
    }
  }
  return out;
}

/**
 * Per-layer `--storage-opt` (docker create/run). overlay2 knows only `size`,
 * and only on xfs with project quota; this driver has no quota support, so
 * every option is refused rather than ignored.
 */
export function checkLayerStorageOpt(storageOpt: Record<string, string>): void {
  const keys = Object.keys(storageOpt);
  if (keys.length === 0) return;
  throw new InvalidArgumentError(
    `storage option(s) ${keys.map((k) => JSON.stringify(k)).join(', ')} not supported: the cvmfs graph driver has no per-container quota (overlay2 supports size= only on xfs with pquota)`,
    'CVMFS_THIN_BAD_STORAGE_OPT',
  );
}

/**
 * The Kubernetes FlexVolume driver `cern/cvmfs` (installed as
 * `<plugin-dir>/cern~cvmfs/cvmfs`): kubelet execs it once per call —
 * `init`, `mount <dir> <json options>`, `unmount <dir>` — and parses its
 * combined stdout+stderr as one JSON object, so nothing but that object is
 * ever printed. Mount-only (no attach), on the shared mount manager: the
 * state directory is locked for the duration of a call (kubelet runs calls
 * for different pods concurrently).
 *
 * A Failure carries the error's code as a field of its own (`"code":
 * "CVMFS_THIN_..."`, the edges' error policy: src/edge/error-policy.ts);
 * kubelet's DriverStatus ignores fields it does not know and shows the message.
 *
 * Pod spec (CERN's, unchanged):
 *   flexVolume: { driver: "cern/cvmfs", options: { repository: "atlas.cern.ch" } }
 */
import { type ErrorCode, InvalidArgumentError, toThinError } from '../core/errors/errors.js';
import type { MountManager } from '../core/volumes/manager.js';
import { VOLUME_OPTIONS } from '../core/volumes/spec.js';

type FlexStatus = 'Success' | 'Failure' | 'Not supported';

interface FlexResult {
  status: FlexStatus;
  message?: string;
  /** A Failure's CVMFS_THIN_* code. */
  code?: ErrorCode;
  capabilities?: Record<string, boolean>;
}

/**
 * Read-only FUSE trees: no attach, no SELinux relabel, no fsGroup chown (kubelet
 * would try to chown a read-only CVMFS tree), no metrics, no resize.
 */
const CAPABILITIES = { attach: false, selinuxRelabel: false, fsGroup: false, supportsMetrics: false, requiresFSResize: false } as const;

/**
 * The call-outs this driver implements. Every other one — the attach family
 * (`attach`, `waitforattach`, `mountdevice`, …), `getvolumename`,
 * `expandvolume`, `expandfs`, and whatever kubelet adds later — is answered
 * `{"status":"Not supported"}` whatever its arguments, which kubelet caches
 * per call (pkg/volume/flexvolume/driver-call.go) and then does without.
 */
export const FLEX_OPERATIONS = ['init', 'mount', 'unmount'] as const;

export function isFlexOperation(op: string | undefined): op is (typeof FLEX_OPERATIONS)[number] {
  return (FLEX_OPERATIONS as readonly (string | undefined)[]).includes(op);
}

/**
 * What an unknown call-out gets. Exit code 1, like kubelet's own sample
 * drivers: kubelet reads the status from the output either way (a non-zero
 * exit with "Not supported" is not logged as a driver failure).
 */
export function notSupported(op: string): { result: FlexResult; code: number } {
  const name = op.length > 64 ? `${op.slice(0, 64)}…` : op;
  return {
    result: { status: 'Not supported', message: `${JSON.stringify(name)} is not supported by cern/cvmfs (a mount-only driver: ${FLEX_OPERATIONS.join(', ')})` },
    code: 1,
  };
}

/** Option keys kubelet adds on its own; ignored. */
const KUBELET_PREFIX = 'kubernetes.io/';

export interface FlexDeps {
  /** Open the manager with the state directory locked; `close` releases both. */
  open(): Promise<{ manager: MountManager; close(): Promise<void> }>;
  /** Operators may let pod specs set client parameters (off by default: pod authors are not trusted). */
  allowClientConfig: boolean;
}

function parseOptions(json: string | undefined): Record<string, string> {
  if (json === undefined) throw new InvalidArgumentError('mount needs the options JSON as its second argument', 'CVMFS_THIN_BAD_REQUEST');
  let v: unknown;
  try {
    v = JSON.parse(json);
  } catch (e) {
    throw new InvalidArgumentError(`options are not valid JSON: ${(e as Error).message}`, 'CVMFS_THIN_BAD_VOLUME');
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new InvalidArgumentError('options must be a JSON object', 'CVMFS_THIN_BAD_VOLUME');
  for (const [k, x] of Object.entries(v))
    if (typeof x !== 'string') throw new InvalidArgumentError(`option ${JSON.stringify(k)} must be a string`, 'CVMFS_THIN_BAD_VOLUME');
  return v as Record<string, string>;
}

async function mountCall(dir: string | undefined, json: string | undefined, deps: FlexDeps): Promise<FlexResult> {
  if (!dir) throw new InvalidArgumentError('mount needs the mount directory as its first argument', 'CVMFS_THIN_BAD_REQUEST');
  const all = parseOptions(json);
  const opts: Record<string, string> = {};
  let repository: string | undefined;
  for (const [k, v] of Object.entries(all)) {
    if (k.startsWith(KUBELET_PREFIX)) continue;
    if (k === 'repository') repository = v;
    else if ((VOLUME_OPTIONS as readonly string[]).includes(k)) opts[k] = v;
    else throw new InvalidArgumentError(`option ${JSON.stringify(k)} is not known (known: repository, ${VOLUME_OPTIONS.join(', ')})`, 'CVMFS_THIN_BAD_VOLUME');
  }
  if (!repository) throw new InvalidArgumentError('option "repository" is required (e.g. {"repository": "atlas.cern.ch"})', 'CVMFS_THIN_BAD_VOLUME');
  if (opts['clientConfig'] !== undefined && !deps.allowClientConfig) {
    throw new InvalidArgumentError(
      'option "clientConfig" is not allowed in pod specs on this node (set allow-client-config = true in the driver config)',
      'CVMFS_THIN_BAD_VOLUME',
    );
  }
  const { manager, close } = await deps.open();
  try {
    const spec = manager.parse(repository, opts);
    await manager.publish(spec, dir, { readonly: true });
    return { status: 'Success', message: `${repository} mounted on ${dir}` };
  } finally {
    await close();
  }
}

async function unmountCall(dir: string | undefined, deps: FlexDeps): Promise<FlexResult> {
  if (!dir) throw new InvalidArgumentError('unmount needs the mount directory as its first argument', 'CVMFS_THIN_BAD_REQUEST');
  const { manager, close } = await deps.open();
  try {
    const known = await manager.unpublish(dir);
    if (!known && manager.backends.isMountPoint(dir)) {
      return { status: 'Failure', message: `${dir} was not mounted by cvmfs-thin; leaving it alone`, code: 'CVMFS_THIN_TARGET_BUSY' };
    }
    return { status: 'Success', message: known ? `unmounted ${dir}` : `${dir} is not mounted` };
  } finally {
    await close();
  }
}

/** One driver call: the JSON to print and the exit code. */
export async function flexCall(argv: readonly string[], deps: FlexDeps): Promise<{ result: FlexResult; code: number }> {
  const [op, ...args] = argv;
  try {
    let result: FlexResult;
    switch (op) {
      case 'init':
        result = { status: 'Success', capabilities: { ...CAPABILITIES } };
        break;
      case 'mount':
        result = await mountCall(args[0], args[1], deps);
        break;
      case 'unmount':
        result = await unmountCall(args[0], deps);
        break;
      case undefined:
        throw new InvalidArgumentError('no operation given (init, mount <dir> <json>, unmount <dir>)', 'CVMFS_THIN_BAD_REQUEST');
      default:
        return notSupported(op);
    }
    return { result, code: result.status === 'Success' ? 0 : 1 };
  } catch (e) {
    return flexFailure(e);
  }
}

/** What a call that threw answers: its message and its code (a plain Error: the generic code). */
export function flexFailure(e: unknown): { result: FlexResult; code: number } {
  const t = toThinError(e);
  return { result: { status: 'Failure', message: t.message, code: t.code }, code: 1 };
}

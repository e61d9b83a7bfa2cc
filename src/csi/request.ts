/**
 * Validation of CSI node requests, pure (no I/O): required fields, the volume
 * capability, and the volume attributes (`volume_context`) turned into what
 * the mount manager takes. Every refusal names the field and the value. A
 * missing or malformed field is an InvalidArgumentError; a well-formed
 * capability that CVMFS volumes do not support (block access, a writer mode,
 * mount flags, a mount group) is a FailedPreconditionError, as the spec's
 * NodeStageVolume and NodePublishVolume error tables say ("Exceeds
 * capabilities": FAILED_PRECONDITION).
 *
 * Access modes: CVMFS is read-only, so persistent volumes must be
 * MULTI_NODE_READER_ONLY (Kubernetes' ReadOnlyMany) or SINGLE_NODE_READER_ONLY.
 * Inline ephemeral volumes are the exception: kubelet always sends
 * SINGLE_NODE_WRITER for them (it has no access mode to pass and hard-codes
 * ReadWriteOnce), so a writer mode is accepted there; the mount is read-only
 * in every case.
 */
import path from 'node:path';
import { FailedPreconditionError, InvalidArgumentError } from '../core/errors/errors.js';
import { VOLUME_OPTIONS } from '../core/volumes/spec.js';
import { type VolumeCapability, VolumeCapability_AccessMode_Mode as Mode, volumeCapability_AccessMode_ModeToJSON } from './proto/csi/v1/csi.js';

/** Volume attributes we understand (cvmfs-csi's `repository` + the volume options). */
export const KNOWN_ATTRIBUTES = ['repository', ...VOLUME_OPTIONS] as const;
/** cvmfs-csi attributes accepted and ignored: `sharedMountID` (volumes with equal settings always share one mount). */
const IGNORED_ATTRIBUTES = ['sharedMountID'] as const;
/** Keys kubelet adds (pod info with podInfoOnMount, the ephemeral flag): never volume settings. */
const KUBELET_PREFIX = 'csi.storage.k8s.io/';
const EPHEMERAL_KEY = 'csi.storage.k8s.io/ephemeral';
/** Mount flags a PV may carry (`mountOptions`): what the read-only bind applies anyway. */
export const ACCEPTED_MOUNT_FLAGS = ['ro', 'nosuid', 'nodev'] as const;
/** The longest path accepted (PATH_MAX). */
const MAX_PATH = 4096;
const MAX_ID = 4096;

const READ_ONLY_MODES = new Set([Mode.MULTI_NODE_READER_ONLY, Mode.SINGLE_NODE_READER_ONLY]);
/** What kubelet sends for inline ephemeral volumes (ReadWriteOnce, or its SINGLE_NODE_* refinements). */
const INLINE_MODES = new Set([Mode.SINGLE_NODE_WRITER, Mode.SINGLE_NODE_SINGLE_WRITER, Mode.SINGLE_NODE_MULTI_WRITER]);

const q = (s: string) => JSON.stringify(s.length > 200 ? `${s.slice(0, 200)}…` : s);

function modeName(m: Mode | undefined): string {
  return m === undefined ? 'none' : volumeCapability_AccessMode_ModeToJSON(m);
}

/** A REQUIRED string field. */
export function required(value: string | undefined, field: string): string {
  if (typeof value !== 'string' || value === '') throw new InvalidArgumentError(`${field} is required`, 'CVMFS_THIN_CSI_MISSING_FIELD');
  if (value.length > MAX_ID && !field.endsWith('path'))
    throw new InvalidArgumentError(`${field} is longer than ${MAX_ID} characters`, 'CVMFS_THIN_CSI_BAD_FIELD');
  return value;
}

/** A REQUIRED absolute path (target, staging, volume path), normalised. */
export function requiredPath(value: string | undefined, field: string): string {
  const p = required(value, field);
  if (p.length > MAX_PATH) throw new InvalidArgumentError(`${field} is longer than ${MAX_PATH} bytes`, 'CVMFS_THIN_CSI_BAD_FIELD');
  if (p.includes('\0')) throw new InvalidArgumentError(`${field} ${q(p)} contains a NUL byte`, 'CVMFS_THIN_CSI_BAD_FIELD');
  if (!path.isAbsolute(p)) throw new InvalidArgumentError(`${field} ${q(p)} must be an absolute path`, 'CVMFS_THIN_CSI_BAD_FIELD');
  const r = path.resolve(p);
  if (r === '/') throw new InvalidArgumentError(`${field} ${q(p)} may not be the root directory`, 'CVMFS_THIN_CSI_BAD_FIELD');
  return r;
}

/** An OPTIONAL path (staging path of NodePublishVolume): '' stays undefined. */
export function optionalPath(value: string | undefined, field: string): string | undefined {
  return value ? requiredPath(value, field) : undefined;
}

/** Is this an inline ephemeral volume? kubelet says so with podInfoOnMount; without it, no staging path means inline. */
export function isEphemeral(ctx: Record<string, string>, stagingPath: string | undefined): boolean {
  const flag = ctx[EPHEMERAL_KEY];
  if (flag === 'true') return true;
  if (flag === 'false') return false;
  if (flag !== undefined)
    throw new InvalidArgumentError(`volume attribute ${EPHEMERAL_KEY} ${q(flag)} must be "true" or "false"`, 'CVMFS_THIN_CSI_BAD_ATTRIBUTE');
  return stagingPath === undefined;
}

/**
 * Check the capability: a mount (never block) with a read-only access mode.
 * Returns the mode's name. Missing parts are INVALID_ARGUMENT; what the
 * volume cannot do is FAILED_PRECONDITION (spec: "Exceeds capabilities").
 */
export function checkCapability(cap: VolumeCapability | undefined, ephemeral: boolean): string {
  if (!cap) throw new InvalidArgumentError('volume_capability is required', 'CVMFS_THIN_CSI_MISSING_FIELD');
  if (cap.block)
    throw new FailedPreconditionError(
      'volume_capability: block access is not supported (CVMFS volumes are file systems; use a mount capability, volumeMode: Filesystem)',
      'CVMFS_THIN_CSI_BAD_CAPABILITY',
    );
  if (!cap.mount) throw new InvalidArgumentError('volume_capability: an access type is required (mount)', 'CVMFS_THIN_CSI_BAD_CAPABILITY');
  const mode = cap.accessMode?.mode;
  if (mode === undefined || mode === Mode.UNKNOWN) throw new InvalidArgumentError('volume_capability.access_mode is required', 'CVMFS_THIN_CSI_BAD_CAPABILITY');
  if (!READ_ONLY_MODES.has(mode) && !(ephemeral && INLINE_MODES.has(mode))) {
    throw new FailedPreconditionError(
      `volume_capability.access_mode ${modeName(mode)} is not supported: CVMFS volumes are read-only (use ReadOnlyMany, MULTI_NODE_READER_ONLY)`,
      'CVMFS_THIN_CSI_BAD_CAPABILITY',
    );
  }
  const bad = cap.mount.mountFlags.filter((f) => !(ACCEPTED_MOUNT_FLAGS as readonly string[]).includes(f));
  if (bad.length) {
    throw new FailedPreconditionError(
      `volume_capability.mount.mount_flags ${bad.map(q).join(', ')} not supported (accepted: ${ACCEPTED_MOUNT_FLAGS.join(', ')}; CVMFS volumes are always mounted ro,nosuid,nodev)`,
      'CVMFS_THIN_CSI_BAD_CAPABILITY',
    );
  }
  if (cap.mount.volumeMountGroup) {
    throw new FailedPreconditionError(
      `volume_capability.mount.volume_mount_group ${q(cap.mount.volumeMountGroup)} is not supported (VOLUME_MOUNT_GROUP is not advertised)`,
      'CVMFS_THIN_CSI_BAD_CAPABILITY',
    );
  }
  return modeName(mode);
}

interface VolumeAttributes {
  /** undefined: the whole /cvmfs tree. */
  repository: string | undefined;
  /** tag, hash, date, clientConfig, for MountManager.specFrom(). */
  opts: Record<string, string>;
}

/**
 * Split `volume_context` into the repository and its options. Kubelet's
 * `csi.storage.k8s.io/*` keys and cvmfs-csi's `sharedMountID` are ignored;
 * anything else unknown is refused by name. Inline ephemeral volumes come from pod authors, who may not set client
 * configuration unless the operator allows it.
 */
export function parseAttributes(ctx: Record<string, string>, o: { ephemeral: boolean; allowEphemeralClientConfig: boolean }): VolumeAttributes {
  const unknown: string[] = [];
  const opts: Record<string, string> = {};
  let repository: string | undefined;
  for (const [k, v] of Object.entries(ctx)) {
    if (k.startsWith(KUBELET_PREFIX) || (IGNORED_ATTRIBUTES as readonly string[]).includes(k)) continue;
    if (k === 'repository') repository = v;
    else if ((KNOWN_ATTRIBUTES as readonly string[]).includes(k)) opts[k] = v;
    else unknown.push(k);
  }
  if (unknown.length) {
    const hint = unknown.includes('clientConfigFilepath') ? ' (clientConfigFilepath is not supported: put the settings in clientConfig)' : '';
    throw new InvalidArgumentError(
      `unknown volume attribute(s) ${unknown.sort().map(q).join(', ')} (known: ${KNOWN_ATTRIBUTES.join(', ')})${hint}`,
      'CVMFS_THIN_CSI_BAD_ATTRIBUTE',
    );
  }
  if (o.ephemeral && opts['clientConfig'] !== undefined && !o.allowEphemeralClientConfig) {
    throw new InvalidArgumentError(
      'volume attribute "clientConfig" is not allowed in inline ephemeral volumes (pod authors may not set client configuration; use a PersistentVolume, or start the plugin with --allow-ephemeral-client-config)',
      'CVMFS_THIN_CSI_BAD_ATTRIBUTE',
    );
  }
  return { repository, opts };
}

/**
 * The CSI Node service's semantics on top of the repository mount manager.
 *
 * - NodeStageVolume binds the volume on the staging path (holder = staging
 *   path); NodePublishVolume binds the staging path on the target (holder =
 *   target). Without a staging path (inline ephemeral volumes, or a CO that
 *   does not stage) the target is bound from the volume itself.
 * - Idempotency is the manager's: the same target with the same volume, mode,
 *   readonly flag and staging path is OK; anything else on that target is
 *   ALREADY_EXISTS. An unknown target or staging path on the way down is OK.
 * - The whole /cvmfs tree (no `repository`) is an rbind with slave
 *   propagation: repositories automounted later appear in the pod (which must
 *   mount it with mountPropagation: HostToContainer).
 */
import { promises as fsp } from 'node:fs';
import type { Logger } from 'pino';
import { FailedPreconditionError, NotFoundError } from '../core/errors/errors.js';
import type { Host } from '../core/host/host.js';
import type { MountManager } from '../core/volumes/manager.js';
import { volumeKey } from '../core/volumes/spec.js';
import {
  type NodeGetCapabilitiesResponse,
  type NodeGetInfoResponse,
  type NodeGetVolumeStatsRequest,
  type NodeGetVolumeStatsResponse,
  type NodePublishVolumeRequest,
  NodeServiceCapability_RPC_Type as Rpc,
  type NodeStageVolumeRequest,
  type NodeUnpublishVolumeRequest,
  type NodeUnstageVolumeRequest,
  VolumeUsage_Unit as Unit,
} from './proto/csi/v1/csi.js';
import { checkCapability, isEphemeral, optionalPath, parseAttributes, required, requiredPath } from './request.js';

interface CsiNodeOptions {
  manager: MountManager;
  host: Host;
  nodeId: string;
  /** Let inline ephemeral volumes (pod authors) set `clientConfig`. Default false. */
  allowEphemeralClientConfig?: boolean;
  /** NodeGetInfo's max_volumes_per_node (0: no limit). */
  maxVolumesPerNode?: number;
  log: Logger;
}

/** Holder meta: what a repeated call is compared on. */
type Role = 'stage' | 'publish';

const NODE_CAPABILITIES = [Rpc.STAGE_UNSTAGE_VOLUME, Rpc.GET_VOLUME_STATS, Rpc.VOLUME_CONDITION] as const;

export class CsiNode {
  private readonly m: MountManager;
  constructor(private readonly o: CsiNodeOptions) {
    this.m = o.manager;
  }

  capabilities(): NodeGetCapabilitiesResponse {
    return { capabilities: NODE_CAPABILITIES.map((type) => ({ rpc: { type } })) };
  }

  info(): NodeGetInfoResponse {
    return { nodeId: this.o.nodeId, maxVolumesPerNode: this.o.maxVolumesPerNode ?? 0, accessibleTopology: undefined };
  }

  /** The holder at `p` if it is `volumeId`'s in `role`, else undefined; another volume's → NotFound. */
  private heldBy(p: string, volumeId: string, role: Role, field: string) {
    const h = this.m.holder(p);
    if (!h) return undefined;
    const meta = h.holder.meta ?? {};
    if (meta['volumeId'] !== volumeId || meta['role'] !== role) {
      const what =
        meta['role'] === role || !meta['role']
          ? `volume ${JSON.stringify(meta['volumeId'] ?? h.key)}`
          : `a ${meta['role']} of volume ${JSON.stringify(meta['volumeId'])}`;
      throw new NotFoundError(`${field} ${p} holds ${what}, not volume ${JSON.stringify(volumeId)}`, 'CVMFS_THIN_CSI_VOLUME_NOT_FOUND');
    }
    return h;
  }

  async stage(r: NodeStageVolumeRequest): Promise<void> {
    const volumeId = required(r.volumeId, 'volume_id');
    const staging = requiredPath(r.stagingTargetPath, 'staging_target_path');
    const ctx = r.volumeContext ?? {};
    const mode = checkCapability(r.volumeCapability, false);
    const attrs = parseAttributes(ctx, { ephemeral: false, allowEphemeralClientConfig: false });
    const spec = this.m.specFrom(attrs.repository, attrs.opts);
    const st = await this.m.publish(spec, staging, { readonly: true, meta: { role: 'stage', volumeId, mode } });
    this.o.log.info({ volumeId, staging, key: st.key, backend: st.backend }, 'volume staged');
  }

  async unstage(r: NodeUnstageVolumeRequest): Promise<void> {
    const volumeId = required(r.volumeId, 'volume_id');
    const staging = requiredPath(r.stagingTargetPath, 'staging_target_path');
    if (!this.heldBy(staging, volumeId, 'stage', 'staging_target_path')) {
      this.o.log.debug({ volumeId, staging }, 'unstage: nothing staged there');
      return;
    }
    await this.m.unpublish(staging);
    this.o.log.info({ volumeId, staging }, 'volume unstaged');
  }

  async publish(r: NodePublishVolumeRequest): Promise<void> {
    const volumeId = required(r.volumeId, 'volume_id');
    const target = requiredPath(r.targetPath, 'target_path');
    const staging = optionalPath(r.stagingTargetPath, 'staging_target_path');
    const ctx = r.volumeContext ?? {};
    const ephemeral = isEphemeral(ctx, staging);
    const mode = checkCapability(r.volumeCapability, ephemeral);
    const attrs = parseAttributes(ctx, { ephemeral, allowEphemeralClientConfig: this.o.allowEphemeralClientConfig ?? false });
    const spec = this.m.specFrom(attrs.repository, attrs.opts);
    if (staging !== undefined) {
      if (staging === target) throw new FailedPreconditionError(`target_path and staging_target_path are both ${target}`, 'CVMFS_THIN_CSI_BAD_STAGING');
      const staged = this.m.holder(staging);
      if (!staged)
        throw new FailedPreconditionError(`staging_target_path ${staging} is not staged (NodeStageVolume must succeed first)`, 'CVMFS_THIN_NOT_STAGED');
      const meta = staged.holder.meta ?? {};
      if (meta['role'] !== 'stage' || meta['volumeId'] !== volumeId) {
        throw new FailedPreconditionError(
          `staging_target_path ${staging} holds ${meta['role'] ?? 'a holder'} of volume ${JSON.stringify(meta['volumeId'] ?? staged.key)}, not a staging of ${JSON.stringify(volumeId)}`,
          'CVMFS_THIN_CSI_BAD_STAGING',
        );
      }
      if (staged.key !== volumeKey(spec)) {
        throw new FailedPreconditionError(
          `staging_target_path ${staging} was staged as ${staged.key}, but the volume attributes now say ${volumeKey(spec)}`,
          'CVMFS_THIN_CSI_BAD_STAGING',
        );
      }
    }
    const meta = { role: 'publish', volumeId, mode, readonly: String(r.readonly), staging: staging ?? '', ephemeral: String(ephemeral) };
    const st = await this.m.publish(spec, target, { readonly: true, meta, source: staging });
    this.o.log.info({ volumeId, target, staging, ephemeral, key: st.key, backend: st.backend }, 'volume published');
  }

  async unpublish(r: NodeUnpublishVolumeRequest): Promise<void> {
    const volumeId = required(r.volumeId, 'volume_id');
    const target = requiredPath(r.targetPath, 'target_path');
    if (!this.heldBy(target, volumeId, 'publish', 'target_path')) {
      // already unpublished, or never published (a node reboot): success, per the spec
      this.o.log.debug({ volumeId, target }, 'unpublish: nothing published there');
      return;
    }
    await this.m.unpublish(target);
    this.o.log.info({ volumeId, target }, 'volume unpublished');
  }

  /**
   * Usage from statfs of the published path (for CVMFS: its cache), and the
   * condition: a target that is no longer mounted, whose FUSE client died
   * (ENOTCONN) or stalls (no answer within cvmfs-timeout), is abnormal. The
   * target is asked in the probe helper first; the usage is read only once
   * it answered.
   */
  async stats(r: NodeGetVolumeStatsRequest): Promise<NodeGetVolumeStatsResponse> {
    const volumeId = required(r.volumeId, 'volume_id');
    const given = required(r.volumePath, 'volume_path');
    // NOT_FOUND first (the spec's answer for a volume that is not at that
    // path): a path that is not absolute, or otherwise not a path the plugin
    // could have published on, holds no volume of ours
    let p: string | undefined;
    let why = '';
    try {
      p = requiredPath(given, 'volume_path');
    } catch (e) {
      why = `: ${(e as Error).message}`;
    }
    const h = p === undefined ? undefined : this.m.holder(p);
    if (p === undefined || !h || h.holder.meta?.['volumeId'] !== volumeId) {
      throw new NotFoundError(
        `volume ${JSON.stringify(volumeId)} is not published or staged at ${JSON.stringify(given.length > 200 ? `${given.slice(0, 200)}…` : given)}${why}`,
        'CVMFS_THIN_CSI_VOLUME_NOT_FOUND',
      );
    }
    let abnormal = false;
    let message = `volume ${h.key} is mounted and readable`;
    if (!this.o.host.mountinfo().some((m) => m.mountPoint === p)) {
      abnormal = true;
      message = `${p} is not mounted any more (unmounted behind the plugin's back?)`;
    } else {
      const health = await this.m.pathHealth(p);
      if (health !== 'ok') {
        abnormal = true;
        message =
          health === 'broken'
            ? `${p}: transport endpoint is not connected (the CVMFS client serving ${h.key} died; the plugin's health check remounts it)`
            : health === 'stalled'
              ? `${p} does not answer within ${this.m.backends.timeoutMs / 1000} s (cvmfs-timeout): the CVMFS client serving ${h.key} is stalled (server or proxy unreachable?)`
              : health === 'absent'
                ? `${p} does not exist`
                : `${p} could not be checked`;
      }
    }
    const usage = [
      { unit: Unit.BYTES, total: 0, available: 0, used: 0 },
      { unit: Unit.INODES, total: 0, available: 0, used: 0 },
    ];
    if (!abnormal) {
      const s = await fsp.statfs(p).catch(() => null);
      if (s) {
        usage[0] = { unit: Unit.BYTES, total: s.blocks * s.bsize, available: s.bavail * s.bsize, used: Math.max(0, s.blocks - s.bfree) * s.bsize };
        usage[1] = { unit: Unit.INODES, total: s.files, available: s.ffree, used: Math.max(0, s.files - s.ffree) };
      }
    }
    return { usage, volumeCondition: { abnormal, message } };
  }
}

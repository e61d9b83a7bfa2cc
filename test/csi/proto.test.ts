/**
 * Wire compatibility of proto/csi/v1/csi.proto with the CSI specification:
 * service paths, and the field numbers and wire types each message puts on the
 * wire (a renumbered field breaks kubelet silently, so every one is pinned
 * here, from the spec's csi.proto).
 */
import { BinaryReader } from '@bufbuild/protobuf/wire';
import { describe, expect, it } from 'vitest';
import * as csi from '../../src/csi/proto/csi/v1/csi.js';

/** [field number, wire type] of each top-level field, in wire order. */
function fields(bytes: Uint8Array): [number, number][] {
  const r = new BinaryReader(bytes);
  const out: [number, number][] = [];
  while (r.pos < r.len) {
    const [no, wt] = r.tag();
    out.push([no, wt]);
    r.skip(wt);
  }
  return out;
}

const LEN = 2;
const VARINT = 0;
const cap = {
  mount: { fsType: 'x', mountFlags: ['ro'], volumeMountGroup: 'g' },
  accessMode: { mode: csi.VolumeCapability_AccessMode_Mode.MULTI_NODE_READER_ONLY },
};
const m = { k: 'v' };

describe('csi.v1 wire format', () => {
  it('service and method paths are the spec’s', () => {
    expect(Object.values(csi.IdentityService).map((x) => x.path)).toEqual([
      '/csi.v1.Identity/GetPluginInfo',
      '/csi.v1.Identity/GetPluginCapabilities',
      '/csi.v1.Identity/Probe',
    ]);
    expect(Object.values(csi.NodeService).map((x) => x.path)).toEqual([
      '/csi.v1.Node/NodeStageVolume',
      '/csi.v1.Node/NodeUnstageVolume',
      '/csi.v1.Node/NodePublishVolume',
      '/csi.v1.Node/NodeUnpublishVolume',
      '/csi.v1.Node/NodeGetVolumeStats',
      '/csi.v1.Node/NodeExpandVolume',
      '/csi.v1.Node/NodeGetCapabilities',
      '/csi.v1.Node/NodeGetInfo',
    ]);
  });

  it.each([
    [
      'NodeStageVolumeRequest',
      csi.NodeStageVolumeRequest.encode({
        volumeId: 'v',
        publishContext: m,
        stagingTargetPath: '/s',
        volumeCapability: cap,
        secrets: m,
        volumeContext: m,
      }).finish(),
      [
        [1, LEN],
        [2, LEN],
        [3, LEN],
        [4, LEN],
        [5, LEN],
        [6, LEN],
      ],
    ],
    [
      'NodeUnstageVolumeRequest',
      csi.NodeUnstageVolumeRequest.encode({ volumeId: 'v', stagingTargetPath: '/s' }).finish(),
      [
        [1, LEN],
        [2, LEN],
      ],
    ],
    [
      'NodePublishVolumeRequest',
      csi.NodePublishVolumeRequest.encode({
        volumeId: 'v',
        publishContext: m,
        stagingTargetPath: '/s',
        targetPath: '/t',
        volumeCapability: cap,
        readonly: true,
        secrets: m,
        volumeContext: m,
      }).finish(),
      [
        [1, LEN],
        [2, LEN],
        [3, LEN],
        [4, LEN],
        [5, LEN],
        [6, VARINT],
        [7, LEN],
        [8, LEN],
      ],
    ],
    [
      'NodeUnpublishVolumeRequest',
      csi.NodeUnpublishVolumeRequest.encode({ volumeId: 'v', targetPath: '/t' }).finish(),
      [
        [1, LEN],
        [2, LEN],
      ],
    ],
    [
      'NodeGetVolumeStatsRequest',
      csi.NodeGetVolumeStatsRequest.encode({ volumeId: 'v', volumePath: '/p', stagingTargetPath: '/s' }).finish(),
      [
        [1, LEN],
        [2, LEN],
        [3, LEN],
      ],
    ],
    [
      'NodeGetVolumeStatsResponse',
      csi.NodeGetVolumeStatsResponse.encode({
        usage: [{ available: 1, total: 2, used: 3, unit: 1 }],
        volumeCondition: { abnormal: true, message: 'm' },
      }).finish(),
      [
        [1, LEN],
        [2, LEN],
      ],
    ],
    [
      'VolumeUsage',
      csi.VolumeUsage.encode({ available: 1, total: 2, used: 3, unit: 1 }).finish(),
      [
        [1, VARINT],
        [2, VARINT],
        [3, VARINT],
        [4, VARINT],
      ],
    ],
    [
      'VolumeCondition',
      csi.VolumeCondition.encode({ abnormal: true, message: 'm' }).finish(),
      [
        [1, VARINT],
        [2, LEN],
      ],
    ],
    [
      'NodeExpandVolumeRequest',
      csi.NodeExpandVolumeRequest.encode({
        volumeId: 'v',
        volumePath: '/p',
        capacityRange: { requiredBytes: 1, limitBytes: 2 },
        stagingTargetPath: '/s',
        volumeCapability: cap,
        secrets: m,
      }).finish(),
      [
        [1, LEN],
        [2, LEN],
        [3, LEN],
        [4, LEN],
        [5, LEN],
        [6, LEN],
      ],
    ],
    ['NodeExpandVolumeResponse', csi.NodeExpandVolumeResponse.encode({ capacityBytes: 1 }).finish(), [[1, VARINT]]],
    [
      'NodeGetInfoResponse',
      csi.NodeGetInfoResponse.encode({ nodeId: 'n', maxVolumesPerNode: 3, accessibleTopology: { segments: m } }).finish(),
      [
        [1, LEN],
        [2, VARINT],
        [3, LEN],
      ],
    ],
    ['NodeGetCapabilitiesResponse', csi.NodeGetCapabilitiesResponse.encode({ capabilities: [{ rpc: { type: 1 } }] }).finish(), [[1, LEN]]],
    ['NodeServiceCapability', csi.NodeServiceCapability.encode({ rpc: { type: 1 } }).finish(), [[1, LEN]]],
    [
      'VolumeCapability (mount)',
      csi.VolumeCapability.encode(cap).finish(),
      [
        [2, LEN],
        [3, LEN],
      ],
    ],
    [
      'VolumeCapability (block)',
      csi.VolumeCapability.encode({ block: {}, accessMode: { mode: 1 } }).finish(),
      [
        [1, LEN],
        [3, LEN],
      ],
    ],
    [
      'VolumeCapability.MountVolume',
      csi.VolumeCapability_MountVolume.encode(cap.mount).finish(),
      [
        [1, LEN],
        [2, LEN],
        [3, LEN],
      ],
    ],
    [
      'GetPluginInfoResponse',
      csi.GetPluginInfoResponse.encode({ name: 'n', vendorVersion: '1', manifest: m }).finish(),
      [
        [1, LEN],
        [2, LEN],
        [3, LEN],
      ],
    ],
    ['PluginCapability (service)', csi.PluginCapability.encode({ service: { type: 1 } }).finish(), [[1, LEN]]],
    ['PluginCapability (volume expansion)', csi.PluginCapability.encode({ volumeExpansion: { type: 1 } }).finish(), [[2, LEN]]],
    ['ProbeResponse', csi.ProbeResponse.encode({ ready: true }).finish(), [[1, LEN]]],
    ['Topology', csi.Topology.encode({ segments: m }).finish(), [[1, LEN]]],
  ] as const)('%s: field numbers and wire types', (_name, bytes, want) => {
    expect(fields(bytes)).toEqual(want);
  });

  it("enum values are the spec's", () => {
    const M = csi.VolumeCapability_AccessMode_Mode;
    expect([
      M.UNKNOWN,
      M.SINGLE_NODE_WRITER,
      M.SINGLE_NODE_READER_ONLY,
      M.MULTI_NODE_READER_ONLY,
      M.MULTI_NODE_SINGLE_WRITER,
      M.MULTI_NODE_MULTI_WRITER,
      M.SINGLE_NODE_SINGLE_WRITER,
      M.SINGLE_NODE_MULTI_WRITER,
    ]).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    const R = csi.NodeServiceCapability_RPC_Type;
    expect([
      R.UNKNOWN,
      R.STAGE_UNSTAGE_VOLUME,
      R.GET_VOLUME_STATS,
      R.EXPAND_VOLUME,
      R.VOLUME_CONDITION,
      R.SINGLE_NODE_MULTI_WRITER,
      R.VOLUME_MOUNT_GROUP,
    ]).toEqual([0, 1, 2, 3, 4, 5, 6]);
    const S = csi.PluginCapability_Service_Type;
    expect([S.UNKNOWN, S.CONTROLLER_SERVICE, S.VOLUME_ACCESSIBILITY_CONSTRAINTS, S.GROUP_CONTROLLER_SERVICE, S.SNAPSHOT_METADATA_SERVICE]).toEqual([
      0, 1, 2, 3, 4,
    ]);
    expect([csi.VolumeUsage_Unit.UNKNOWN, csi.VolumeUsage_Unit.BYTES, csi.VolumeUsage_Unit.INODES]).toEqual([0, 1, 2]);
  });

  it('a request from a newer CO with fields we do not know still decodes', () => {
    // NodePublishVolumeRequest with an extra field 99 (varint) before target_path
    const extra = new Uint8Array([0x0a, 0x01, 0x76, 0x98, 0x06, 0x01, 0x22, 0x02, 0x2f, 0x74]);
    const r = csi.NodePublishVolumeRequest.decode(extra);
    expect(r).toMatchObject({ volumeId: 'v', targetPath: '/t' });
  });

  it('ProbeResponse.ready is a google.protobuf.BoolValue (absent means ready)', () => {
    expect(csi.ProbeResponse.decode(csi.ProbeResponse.encode({ ready: undefined }).finish()).ready).toBeUndefined();
    expect(csi.ProbeResponse.encode({ ready: false }).finish()).toEqual(new Uint8Array([0x0a, 0x00]));
    expect(csi.ProbeResponse.encode({ ready: true }).finish()).toEqual(new Uint8Array([0x0a, 0x02, 0x08, 0x01]));
  });
});

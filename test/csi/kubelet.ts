/**
 * A stand-in for kubelet and the node-driver-registrar: a promise-based
 * csi.v1 client over the plugin's unix socket (built from the generated code),
 * kubelet's path layout, and its call sequence — registration (GetPluginInfo,
 * NodeGetInfo), then per volume NodeGetCapabilities, NodeStageVolume on a
 * `globalmount` path, NodePublishVolume on the pod's `mount` path, and the
 * reverse on teardown. Also the plugin it talks to: `cvmfs-thin csi` as a
 * process (the built CLI).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { credentials, type ServiceError } from '@grpc/grpc-js';
import {
  type GetPluginInfoResponse,
  IdentityClient,
  NodeClient,
  type NodeGetCapabilitiesResponse,
  type NodeGetInfoResponse,
  type NodeGetVolumeStatsResponse,
  NodeExpandVolumeRequest,
  NodeGetVolumeStatsRequest,
  NodePublishVolumeRequest,
  NodeStageVolumeRequest,
  NodeUnpublishVolumeRequest,
  NodeUnstageVolumeRequest,
  type ProbeResponse,
  type VolumeCapability,
  VolumeCapability_AccessMode_Mode as Mode,
} from '../../src/csi/proto/csi/v1/csi.js';
import { CLI } from '../helpers/env.js';

export { Mode };

export interface CsiPlugin {
  proc: ChildProcess;
  client: CsiClient;
  output: () => string;
  /** Close the client, send `signal` (unless it exited), and wait for the exit code. */
  stop(signal: NodeJS.Signals): Promise<number | null>;
}

/** Start `cvmfs-thin csi` on `socket` and wait until it serves (its log says so). */
export async function startCsiPlugin(args: string[], socket: string, nodeId: string): Promise<CsiPlugin> {
  const proc = spawn(process.execPath, [CLI, 'csi', '--endpoint', `unix://${socket}`, '--node-id', nodeId, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => proc.once('exit', (c) => r(c)));
  const t0 = Date.now();
  while (!out.includes('csi plugin serving')) {
    if (proc.exitCode !== null) throw new Error(`csi plugin exited with ${proc.exitCode}:\n${out}`);
    if (Date.now() - t0 > 30_000) {
      proc.kill('SIGKILL');
      throw new Error(`csi plugin did not start:\n${out}`);
    }
    await sleep(50);
  }
  const client = new CsiClient(socket);
  return {
    proc,
    client,
    output: () => out,
    async stop(signal) {
      client.close();
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      return exited;
    },
  };
}

type Unary<Req, Res> = (req: Req, cb: (e: ServiceError | null, r: Res) => void) => unknown;

function call<Req, Res>(client: object, fn: Unary<Req, Res>, req: Req): Promise<Res> {
  return new Promise((resolve, reject) => fn.call(client, req, (e, r) => (e ? reject(e) : resolve(r))));
}

export class CsiClient {
  readonly identity: IdentityClient;
  readonly node: NodeClient;
  constructor(readonly socket: string) {
    this.identity = new IdentityClient(`unix://${socket}`, credentials.createInsecure());
    this.node = new NodeClient(`unix://${socket}`, credentials.createInsecure());
  }
  pluginInfo(): Promise<GetPluginInfoResponse> {
    return call(this.identity, this.identity.getPluginInfo as Unary<object, GetPluginInfoResponse>, {});
  }
  pluginCapabilities(): Promise<{ capabilities: unknown[] }> {
    return call(this.identity, this.identity.getPluginCapabilities as Unary<object, { capabilities: unknown[] }>, {});
  }
  probe(): Promise<ProbeResponse> {
    return call(this.identity, this.identity.probe as Unary<object, ProbeResponse>, {});
  }
  nodeInfo(): Promise<NodeGetInfoResponse> {
    return call(this.node, this.node.nodeGetInfo as Unary<object, NodeGetInfoResponse>, {});
  }
  nodeCapabilities(): Promise<NodeGetCapabilitiesResponse> {
    return call(this.node, this.node.nodeGetCapabilities as Unary<object, NodeGetCapabilitiesResponse>, {});
  }
  // fromPartial: fields left out go on the wire as protobuf defaults, as from a Go CO
  stage(r: Partial<NodeStageVolumeRequest>): Promise<object> {
    return call(this.node, this.node.nodeStageVolume as Unary<object, object>, NodeStageVolumeRequest.fromPartial(r));
  }
  unstage(volumeId: string, stagingTargetPath: string): Promise<object> {
    return call(this.node, this.node.nodeUnstageVolume as Unary<object, object>, NodeUnstageVolumeRequest.fromPartial({ volumeId, stagingTargetPath }));
  }
  publish(r: Partial<NodePublishVolumeRequest>): Promise<object> {
    return call(this.node, this.node.nodePublishVolume as Unary<object, object>, NodePublishVolumeRequest.fromPartial(r));
  }
  unpublish(volumeId: string, targetPath: string): Promise<object> {
    return call(this.node, this.node.nodeUnpublishVolume as Unary<object, object>, NodeUnpublishVolumeRequest.fromPartial({ volumeId, targetPath }));
  }
  stats(volumeId: string, volumePath: string): Promise<NodeGetVolumeStatsResponse> {
    return call(
      this.node,
      this.node.nodeGetVolumeStats as Unary<object, NodeGetVolumeStatsResponse>,
      NodeGetVolumeStatsRequest.fromPartial({ volumeId, volumePath }),
    );
  }
  expand(volumeId: string, volumePath: string): Promise<object> {
    return call(this.node, this.node.nodeExpandVolume as Unary<object, object>, NodeExpandVolumeRequest.fromPartial({ volumeId, volumePath }));
  }
  close(): void {
    this.identity.close();
    this.node.close();
  }
}

/** gRPC status code of a call (0 when it succeeded). */
export async function code(p: Promise<unknown>): Promise<number> {
  try {
    await p;
    return 0;
  } catch (e) {
    return (e as ServiceError).code ?? -1;
  }
}

/** The error message of a failed call ('' when it succeeded). */
export async function message(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return '';
  } catch (e) {
    return (e as ServiceError).details ?? (e as Error).message;
  }
}

/** A mount capability as kubelet sends it for a PV (accessModes[0] mapped to CSI). */
export function mountCap(mode: Mode = Mode.MULTI_NODE_READER_ONLY, mountFlags: string[] = [], fsType = ''): VolumeCapability {
  return { mount: { fsType, mountFlags, volumeMountGroup: '' }, accessMode: { mode } };
}

/** kubelet's directory layout under its root dir (default /var/lib/kubelet). */
export class KubeletPaths {
  constructor(
    readonly root: string,
    readonly driver = 'cvmfs.csi.cern.ch',
  ) {}
  /** `<root>/plugins/kubernetes.io/csi/<driver>/<sha256(volumeHandle)>/globalmount`, created (the CO creates it). */
  staging(volumeHandle: string): string {
    const p = path.join(this.root, 'plugins/kubernetes.io/csi', this.driver, createHash('sha256').update(volumeHandle).digest('hex'), 'globalmount');
    mkdirSync(p, { recursive: true });
    return p;
  }
  /** `<root>/pods/<uid>/volumes/kubernetes.io~csi/<volume>/mount`; its parent exists, the plugin creates it. */
  target(podUid: string, volume: string): string {
    const dir = path.join(this.root, 'pods', podUid, 'volumes/kubernetes.io~csi', volume);
    mkdirSync(dir, { recursive: true });
    return path.join(dir, 'mount');
  }
}

/** What kubelet sends in volume_context with podInfoOnMount: the attributes plus pod info. */
export function podContext(attrs: Record<string, string>, pod: { name: string; uid: string; ephemeral: boolean }): Record<string, string> {
  return {
    ...attrs,
    'csi.storage.k8s.io/pod.name': pod.name,
    'csi.storage.k8s.io/pod.namespace': 'default',
    'csi.storage.k8s.io/pod.uid': pod.uid,
    'csi.storage.k8s.io/serviceAccount.name': 'default',
    'csi.storage.k8s.io/ephemeral': String(pod.ephemeral),
  };
}

/** Registration as the node-driver-registrar and kubelet's plugin watcher do it. */
export async function register(c: CsiClient): Promise<{ name: string; nodeId: string }> {
  const info = await c.pluginInfo();
  const node = await c.nodeInfo();
  return { name: info.name, nodeId: node.nodeId };
}

/** kubelet's PV mount: stage on globalmount (when advertised), then publish on the pod path. */
export async function mountPv(
  c: CsiClient,
  k: KubeletPaths,
  pv: { handle: string; attrs: Record<string, string> },
  pod: { name: string; uid: string },
): Promise<{ staging: string; target: string }> {
  const caps = await c.nodeCapabilities();
  const staged = caps.capabilities.some((x) => x.rpc?.type === 1);
  const staging = staged ? k.staging(pv.handle) : '';
  if (staged) await c.stage({ volumeId: pv.handle, stagingTargetPath: staging, volumeCapability: mountCap(), volumeContext: pv.attrs });
  const target = k.target(pod.uid, pv.handle);
  await c.publish({
    volumeId: pv.handle,
    stagingTargetPath: staging,
    targetPath: target,
    volumeCapability: mountCap(),
    readonly: false,
    volumeContext: podContext(pv.attrs, { ...pod, ephemeral: false }),
  });
  return { staging, target };
}

/** kubelet's inline (ephemeral) volume: publish only, SINGLE_NODE_WRITER, volume id from the pod. */
export async function mountInline(
  c: CsiClient,
  k: KubeletPaths,
  attrs: Record<string, string>,
  pod: { name: string; uid: string },
  volume = 'cvmfs',
): Promise<{ volumeId: string; target: string }> {
  const volumeId = `csi-${createHash('sha256').update(`${pod.uid}${volume}`).digest('hex')}`;
  const target = k.target(pod.uid, volume);
  await c.publish({
    volumeId,
    targetPath: target,
    volumeCapability: mountCap(Mode.SINGLE_NODE_WRITER),
    readonly: true,
    volumeContext: podContext(attrs, { ...pod, ephemeral: true }),
  });
  return { volumeId, target };
}

/** A promise-based client for the Snapshots service over a unix socket (tests and benchmarks). */
import { credentials, type ServiceError } from '@grpc/grpc-js';
import { SnapshotsClient, type Info } from '../../src/snapshotter/proto/containerd/services/snapshots/v1/snapshots.js';
import type { Mount } from '../../src/snapshotter/proto/containerd/types/mount.js';

export type { Info, Mount };

export class SnapClient {
  readonly raw: SnapshotsClient;
  constructor(socket: string) {
    this.raw = new SnapshotsClient(`unix://${socket}`, credentials.createInsecure(), { 'grpc.max_receive_message_length': 16 << 20 });
  }
  private call<Res>(method: keyof SnapshotsClient, req: unknown): Promise<Res> {
    const fn = this.raw[method] as unknown as (req: unknown, cb: (e: ServiceError | null, r: Res) => void) => unknown;
    return new Promise((resolve, reject) => fn.call(this.raw, req, (e, r) => (e ? reject(e) : resolve(r))));
  }
  prepare(key: string, parent = '', labels: Record<string, string> = {}): Promise<Mount[]> {
    return this.call<{ mounts: Mount[] }>('prepare', { snapshotter: 't', key, parent, labels }).then((r) => r.mounts);
  }
  view(key: string, parent = '', labels: Record<string, string> = {}): Promise<Mount[]> {
    return this.call<{ mounts: Mount[] }>('view', { snapshotter: 't', key, parent, labels }).then((r) => r.mounts);
  }
  mounts(key: string): Promise<Mount[]> {
    return this.call<{ mounts: Mount[] }>('mounts', { snapshotter: 't', key }).then((r) => r.mounts);
  }
  commit(name: string, key: string, labels: Record<string, string> = {}, parent = ''): Promise<void> {
    return this.call('commit', { snapshotter: 't', name, key, labels, parent }).then(() => undefined);
  }
  remove(key: string): Promise<void> {
    return this.call('remove', { snapshotter: 't', key }).then(() => undefined);
  }
  stat(key: string): Promise<Info> {
    return this.call<{ info?: Info }>('stat', { snapshotter: 't', key }).then((r) => r.info!);
  }
  update(info: Partial<Info> | undefined, paths?: string[]): Promise<Info> {
    const full = info ? { name: '', parent: '', kind: 0, createdAt: undefined, updatedAt: undefined, labels: {}, ...info } : undefined;
    return this.call<{ info?: Info }>('update', { snapshotter: 't', info: full, updateMask: paths }).then((r) => r.info!);
  }
  usage(key: string): Promise<{ size: number; inodes: number }> {
    return this.call<{ size: number; inodes: number }>('usage', { snapshotter: 't', key });
  }
  cleanup(): Promise<void> {
    return this.call('cleanup', { snapshotter: 't' }).then(() => undefined);
  }
  list(...filters: string[]): Promise<Info[]> {
    return new Promise((resolve, reject) => {
      const out: Info[] = [];
      const s = this.raw.list({ snapshotter: 't', filters });
      s.on('data', (r: { info: Info[] }) => out.push(...r.info));
      s.on('error', reject);
      s.on('end', () => resolve(out));
    });
  }
  close(): void {
    this.raw.close();
  }
}

/** gRPC status code of a failed call (0 when it succeeded). */
export async function grpcCode(p: Promise<unknown>): Promise<number> {
  try {
    await p;
    return 0;
  } catch (e) {
    return (e as ServiceError).code ?? -1;
  }
}

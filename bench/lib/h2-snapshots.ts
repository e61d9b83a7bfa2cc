/**
 * A lean unary client for the Snapshots API, for load generation only: gRPC's
 * wire format straight on node:http2 (one connection, pre-built header
 * objects, the generated message codecs). The benchmark client runs on the
 * same 2 CPUs as the server under test; grpc-js's client costs about as much
 * CPU per call as a server does, so with it the load generator rather than
 * the server sets the ceiling of a throughput test. Both servers get the same
 * client. Not a general gRPC client: no deadlines, no retries, no streaming.
 */
import http2 from 'node:http2';
import net from 'node:net';
import {
  CommitSnapshotRequest,
  MountsRequest,
  MountsResponse,
  PrepareSnapshotRequest,
  PrepareSnapshotResponse,
  RemoveSnapshotRequest,
} from '../../src/snapshotter/proto/containerd/services/snapshots/v1/snapshots.js';

const SERVICE = '/containerd.services.snapshots.v1.Snapshots/';

export class GrpcStatusError extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(`gRPC ${code}: ${message}`);
  }
}

export class LeanSnapClient {
  private readonly session: http2.ClientHttp2Session;
  private readonly headers = new Map<string, http2.OutgoingHttpHeaders>();

  constructor(socket: string) {
    this.session = http2.connect('http://localhost', { createConnection: () => net.connect(socket) });
    this.session.on('error', () => {});
  }

  private unary(method: string, body: Uint8Array): Promise<Buffer> {
    let h = this.headers.get(method);
    if (!h) {
      h = { ':method': 'POST', ':path': SERVICE + method, 'content-type': 'application/grpc', te: 'trailers' };
      this.headers.set(method, h);
    }
    const frame = Buffer.allocUnsafe(5 + body.length);
    frame[0] = 0;
    frame.writeUInt32BE(body.length, 1);
    frame.set(body, 5);
    return new Promise((resolve, reject) => {
      const req = this.session.request(h!, { endStream: false });
      const chunks: Buffer[] = [];
      let status: number | undefined;
      let message = '';
      const take = (hs: http2.IncomingHttpHeaders) => {
        if (hs['grpc-status'] !== undefined) {
          status = Number(hs['grpc-status']);
          message = decodeURIComponent(String(hs['grpc-message'] ?? ''));
        }
      };
      req.on('response', take);
      req.on('trailers', take);
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('error', reject);
      req.on('close', () => {
        if (status === undefined) return reject(new Error(`${method}: stream closed without a gRPC status`));
        if (status !== 0) return reject(new GrpcStatusError(status, message));
        const all = Buffer.concat(chunks);
        resolve(all.subarray(5));
      });
      req.end(frame);
    });
  }

  async prepare(key: string, parent = '', labels: Record<string, string> = {}): Promise<number> {
    const r = await this.unary('Prepare', PrepareSnapshotRequest.encode({ snapshotter: 't', key, parent, labels }).finish());
    return PrepareSnapshotResponse.decode(r).mounts.length;
  }
  async mounts(key: string): Promise<number> {
    const r = await this.unary('Mounts', MountsRequest.encode({ snapshotter: 't', key }).finish());
    return MountsResponse.decode(r).mounts.length;
  }
  async commit(name: string, key: string, labels: Record<string, string> = {}): Promise<void> {
    await this.unary('Commit', CommitSnapshotRequest.encode({ snapshotter: 't', name, key, labels, parent: '' }).finish());
  }
  async remove(key: string): Promise<void> {
    await this.unary('Remove', RemoveSnapshotRequest.encode({ snapshotter: 't', key }).finish());
  }
  close(): void {
    this.session.close();
  }
}

/**
 * An OCI distribution (registry API v2) client on `fetch` (Node's global one
 * unless another is passed in): manifests and indexes, streamed blobs
 * (resumed with Range requests after a dropped connection), paginated tag
 * lists, anonymous / basic / bearer-token auth, plain HTTP for loopback or
 * `--insecure` registries, retries with backoff that honour 429 + Retry-After
 * (one policy for every loop: retry.ts), and resumable-safe pushes (push.ts).
 *
 * This module owns the manifest, blob and tag operations; the session (base
 * URL, auth, tokens, `request`) is in session.ts.
 */
import { Readable } from 'node:stream';
import { sha256Digest } from '../../core/util/digest.js';
import { BadContentError, RegistryError } from '../errors.js';
import { MANIFEST_ACCEPT, MAX_MANIFEST_BYTES, type RawManifest } from '../image/types.js';
import { drain, pullScope, pushScope, readLimited } from './http.js';
import { pushBlob } from './push.js';
import { describeCause, Retrier } from './retry.js';
import { RegistrySession } from './session.js';

export { retryDelay } from './retry.js';
export type { FetchFn } from './session.js';

export class RegistryClient extends RegistrySession {
  /** GET a manifest or index by tag or digest; verifies the digest when `ref` is one. */
  async getManifest(repo: string, ref: string, accept = MANIFEST_ACCEPT): Promise<RawManifest> {
    const what = `${this.registry}/${repo}: manifest ${ref}`;
    const res = await this.request('GET', `/v2/${repo}/manifests/${ref}`, { scopes: [pullScope(repo)], headers: { Accept: accept }, what });
    if (!res.ok) await this.fail(res, what);
    const bytes = await readLimited(res, MAX_MANIFEST_BYTES, what);
    const digest = sha256Digest(bytes);
    if (ref.startsWith('sha256:') && digest !== ref) throw new BadContentError(`${what}: content has digest ${digest}`, 'CVMFS_THIN_DIGEST_MISMATCH');
    const header = res.headers.get('docker-content-digest');
    if (header && header.startsWith('sha256:') && header !== digest) {
      throw new BadContentError(`${what}: registry says ${header} but the content has digest ${digest}`, 'CVMFS_THIN_DIGEST_MISMATCH');
    }
    return { bytes, mediaType: (res.headers.get('content-type') ?? '').split(';')[0]!.trim(), digest };
  }

  /** The digest a tag points at (HEAD), or null if it does not exist. */
  async headManifest(repo: string, ref: string): Promise<{ digest: string | null; mediaType: string } | null> {
    const what = `${this.registry}/${repo}: manifest ${ref}`;
    const res = await this.request('HEAD', `/v2/${repo}/manifests/${ref}`, { scopes: [pullScope(repo)], headers: { Accept: MANIFEST_ACCEPT }, what });
    if (res.status === 404) return null;
    if (!res.ok) await this.fail(res, what);
    return { digest: res.headers.get('docker-content-digest'), mediaType: (res.headers.get('content-type') ?? '').split(';')[0]!.trim() };
  }

  /** Small blobs (configs) in memory, verified. */
  async getBlobBytes(repo: string, digest: string, limit: number): Promise<Buffer> {
    const what = `${this.registry}/${repo}: blob ${digest}`;
    const res = await this.request('GET', `/v2/${repo}/blobs/${digest}`, { scopes: [pullScope(repo)], what });
    if (!res.ok) await this.fail(res, what);
    const bytes = await readLimited(res, limit, what);
    const got = sha256Digest(bytes);
    if (got !== digest) throw new BadContentError(`${what}: content has digest ${got}`, 'CVMFS_THIN_DIGEST_MISMATCH');
    return bytes;
  }

  /**
   * Stream a blob. A connection that drops mid-way is resumed with a Range
   * request from the current offset (or by skipping, if the registry ignores
   * Range). The caller verifies size and digest (see verify.ts).
   */
  openBlob(repo: string, digest: string, size: number): Readable {
    const what = `${this.registry}/${repo}: blob ${digest}`;
    const self = this;
    async function* gen(): AsyncGenerator<Buffer> {
      let offset = 0;
      const retrier = new Retrier(
        self.retry,
        `${what}: download`,
        (cause, attempts) =>
          new RegistryError(
            'unavailable',
            `${what}: download interrupted at byte ${offset} of ${size}: ${describeCause(cause)} (after ${attempts} attempt${attempts === 1 ? '' : 's'})`,
            undefined,
            { cause },
          ),
      );
      for (;;) {
        const headers: Record<string, string> = offset > 0 ? { Range: `bytes=${offset}-` } : {};
        const res = await self.request('GET', `/v2/${repo}/blobs/${digest}`, { scopes: [pullScope(repo)], headers, what });
        if (!res.ok) await self.fail(res, what);
        let skip = offset > 0 && res.status !== 206 ? offset : 0;
        try {
          for await (const c of res.body as unknown as AsyncIterable<Uint8Array>) {
            let b = Buffer.from(c.buffer, c.byteOffset, c.byteLength);
            if (skip > 0) {
              if (b.length <= skip) {
                skip -= b.length;
                continue;
              }
              b = b.subarray(skip);
              skip = 0;
            }
            offset += b.length;
            yield b;
          }
          return;
        } catch (e) {
          if (offset > size) throw e;
          self.log?.info({ what, offset, err: (e as Error).message }, 'blob download interrupted; resuming');
          await retrier.again(e);
        }
      }
    }
    return Readable.from(gen(), { objectMode: false, highWaterMark: 1 << 20 });
  }

  async blobExists(repo: string, digest: string): Promise<boolean> {
    const what = `${this.registry}/${repo}: blob ${digest}`;
    const res = await this.request('HEAD', `/v2/${repo}/blobs/${digest}`, { scopes: [pushScope(repo)], what });
    if (res.status === 404) return false;
    if (res.ok) return true;
    return this.fail(res, what);
  }

  /**
   * Push a blob unless the registry has it. Tries a cross-repository mount
   * from each of `mountFrom` first. `data` is the content (small blobs) or a
   * function opening it (large ones; called again for each retry).
   */
  pushBlob(
    repo: string,
    desc: { digest: string; size: number },
    data: Buffer | (() => Readable),
    mountFrom: readonly string[] = [],
  ): Promise<'exists' | 'mounted' | 'uploaded'> {
    return pushBlob(this, repo, desc, data, mountFrom);
  }

  /** PUT a manifest (after all its blobs). Returns the digest. */
  async putManifest(repo: string, ref: string, raw: RawManifest): Promise<string> {
    const what = `${this.registry}/${repo}: push manifest ${ref}`;
    const res = await this.request('PUT', `/v2/${repo}/manifests/${ref}`, {
      scopes: [pushScope(repo)],
      headers: { 'Content-Type': raw.mediaType },
      body: () => raw.bytes,
      what,
    });
    if (res.status !== 201 && res.status !== 200 && res.status !== 202) await this.fail(res, what);
    await drain(res);
    const d = res.headers.get('docker-content-digest');
    if (d && d.startsWith('sha256:') && d !== raw.digest)
      throw new BadContentError(`${what}: registry stored it as ${d}, expected ${raw.digest}`, 'CVMFS_THIN_DIGEST_MISMATCH');
    return raw.digest;
  }

  /** All tags of a repository (follows `Link: <…>; rel="next"` pagination). */
  async listTags(repo: string, pageSize = 1000): Promise<string[]> {
    const what = `${this.registry}/${repo}: tags/list`;
    const tags: string[] = [];
    let next: string | null = `/v2/${repo}/tags/list?n=${pageSize}`;
    const base = await this.baseUrl();
    for (let page = 0; next && page < 10_000; page++) {
      const abs: boolean = /^https?:\/\//.test(next);
      const res: Response = await this.request('GET', next, { scopes: [pullScope(repo)], what, absolute: abs });
      if (!res.ok) await this.fail(res, what);
      const body = (await res.json().catch(() => null)) as { tags?: unknown } | null;
      if (!body || (body.tags !== null && body.tags !== undefined && !Array.isArray(body.tags)))
        throw new BadContentError(`${what}: answer is not {"tags": [...]}`);
      for (const t of (body.tags as unknown[] | null) ?? []) if (typeof t === 'string') tags.push(t);
      const link = res.headers.get('link');
      const m = link ? /<([^>]+)>\s*;\s*rel="?next"?/.exec(link) : null;
      next = m ? (m[1]!.startsWith('/') ? m[1]! : new URL(m[1]!, base).toString()) : null;
    }
    return tags;
  }
}

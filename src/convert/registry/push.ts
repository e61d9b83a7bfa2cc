/**
 * Pushing blobs to a registry, resumable-safe: HEAD first, cross-repository
 * mounts, monolithic or chunked uploads (a failed chunk resumes from where
 * the registry says it got to; a failed session is cancelled and restarted).
 * Manifests are pushed by the caller after every blob (client.putManifest).
 */
import { Readable } from 'node:stream';
import { BadContentError, RegistryError } from '../errors.js';
import type { RegistryClient } from './client.js';
import { drain, pullScope, pushScope } from './http.js';
import { Retrier } from './retry.js';

type Desc = { digest: string; size: number };

function resolveLocation(res: Response, base: string, what: string): string {
  const loc = res.headers.get('location');
  if (!loc) throw new RegistryError('unavailable', `${what}: registry gave no upload Location`);
  return new URL(loc, base).toString();
}

function withDigest(location: string, digest: string): string {
  const u = new URL(location);
  u.searchParams.set('digest', digest);
  return u.toString();
}

export async function pushBlob(
  c: RegistryClient,
  repo: string,
  desc: Desc,
  data: Buffer | (() => Readable),
  mountFrom: readonly string[],
): Promise<'exists' | 'mounted' | 'uploaded'> {
  const what = `${c.registry}/${repo}: push blob ${desc.digest}`;
  if (await c.blobExists(repo, desc.digest)) return 'exists';
  const base = await c.baseUrl();
  let location: string | undefined;
  for (const from of mountFrom) {
    if (from === repo) continue;
    const res = await c.request('POST', `/v2/${repo}/blobs/uploads/?mount=${encodeURIComponent(desc.digest)}&from=${encodeURIComponent(from)}`, {
      scopes: [pushScope(repo), pullScope(from)],
      headers: { 'Content-Length': '0' },
      what,
    });
    await drain(res);
    if (res.status === 201) return 'mounted';
    if (res.status === 202) {
      location = resolveLocation(res, base, what);
      break;
    }
  }
  const retrier = new Retrier(c.retry, `${what}: upload`);
  for (;;) {
    if (!location) {
      const res = await c.request('POST', `/v2/${repo}/blobs/uploads/`, { scopes: [pushScope(repo)], headers: { 'Content-Length': '0' }, what });
      if (res.status !== 202) await c.fail(res, what);
      await drain(res);
      location = resolveLocation(res, base, what);
    }
    try {
      if (Buffer.isBuffer(data) && data.length <= c.monolithicLimit) await uploadMonolithic(c, repo, location, desc.digest, data, what);
      else await uploadChunked(c, repo, location, desc, data, what);
      return 'uploaded';
    } catch (e) {
      // cancel the session (best effort) and start over with a new one
      const loc = location;
      location = undefined;
      await c.request('DELETE', loc, { scopes: [pushScope(repo)], what, absolute: true }).then(drain, () => undefined);
      if (e instanceof BadContentError || (e instanceof RegistryError && e.kind !== 'unavailable')) throw e;
      await retrier.again(e);
    }
  }
}

async function uploadMonolithic(c: RegistryClient, repo: string, location: string, digest: string, data: Buffer, what: string): Promise<void> {
  const res = await c.request('PUT', withDigest(location, digest), {
    scopes: [pushScope(repo)],
    headers: { 'Content-Type': 'application/octet-stream', 'Content-Length': String(data.length) },
    body: () => data,
    what,
    absolute: true,
  });
  if (res.status !== 201 && res.status !== 204) await c.fail(res, what);
  await drain(res);
}

/** PATCH chunks with Content-Range; after a failed chunk ask the registry where it is and resume from there. */
async function uploadChunked(c: RegistryClient, repo: string, location: string, desc: Desc, data: Buffer | (() => Readable), what: string): Promise<void> {
  const source = Buffer.isBuffer(data) ? Readable.from([data]) : data();
  let loc = location;
  let offset = 0;
  let pending: Buffer = Buffer.alloc(0);
  const flush = async (chunk: Buffer) => {
    let start = offset;
    let body = chunk;
    const retrier = new Retrier(c.retry, `${what}: chunk at ${start}`);
    for (;;) {
      const res = await c.request('PATCH', loc, {
        scopes: [pushScope(repo)],
        headers: {
          'Content-Type': 'application/octet-stream',
          'Content-Length': String(body.length),
          'Content-Range': `${start}-${start + body.length - 1}`,
        },
        body: () => body,
        what,
        absolute: true,
      });
      await drain(res);
      if (res.status === 202) {
        loc = new URL(res.headers.get('location') ?? loc, loc).toString();
        offset = start + body.length;
        return;
      }
      if (retrier.last || res.status === 404 || res.status === 401 || res.status === 403) await c.fail(res, what);
      // where did the registry get to?
      const st = await c.request('GET', loc, { scopes: [pushScope(repo)], what, absolute: true });
      await drain(st);
      const m = /^0-(\d+)$/.exec(st.headers.get('range') ?? '');
      const have = m ? Number(m[1]) + 1 : 0;
      if (st.status !== 204 || have < offset || have > start + body.length) await c.fail(res, what);
      body = body.subarray(have - start);
      start = have;
      if (body.length === 0) {
        offset = have;
        return;
      }
      await retrier.again(`HTTP ${res.status}`, res.headers.get('retry-after'), res.status);
    }
  };
  for await (const chunk of source as AsyncIterable<Buffer>) {
    pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
    while (pending.length >= c.chunkSize) {
      await flush(pending.subarray(0, c.chunkSize));
      pending = pending.subarray(c.chunkSize);
    }
  }
  if (pending.length) await flush(pending);
  if (offset !== desc.size) throw new BadContentError(`${what}: uploaded ${offset} bytes, expected ${desc.size}`);
  const res = await c.request('PUT', withDigest(loc, desc.digest), {
    scopes: [pushScope(repo)],
    headers: { 'Content-Length': '0' },
    what,
    absolute: true,
  });
  if (res.status !== 201 && res.status !== 204) await c.fail(res, what);
  await drain(res);
}

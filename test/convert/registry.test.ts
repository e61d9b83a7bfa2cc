/**
 * The registry client against a real registry (Debian's docker-registry on
 * 127.0.0.1): pushes (monolithic, chunked, mounts, HEAD first), pulls with
 * digest checks, tag pagination, bearer-token auth with a token server,
 * 429 + Retry-After and resumed downloads through a fault-injecting proxy.
 */
import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/core/telemetry/log.js';
import { DigestVerifier } from '../../src/convert/image/verify.js';
import { RegistryClient } from '../../src/convert/registry/client.js';
import { needs } from '../helpers/env.js';
import { startFaultyProxy, startRegistry, type TestRegistry } from '../helpers/registry.js';

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

async function readAll(r: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of r) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

function manifestFor(config: Buffer, layers: Buffer[]): { bytes: Buffer; mediaType: string; digest: string } {
  const bytes = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha(config), size: config.length },
      layers: layers.map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: sha(l), size: l.length })),
    }),
  );
  return { bytes, mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: sha(bytes) };
}

describe.skipIf(needs({ binaries: ['docker-registry', 'openssl'] }))('registry client (real docker-registry)', () => {
  let reg: TestRegistry;
  beforeAll(async () => {
    reg = await startRegistry();
  });
  afterAll(async () => {
    await reg?.stop();
  });

  it('pushes monolithic and chunked blobs, skips existing ones, mounts across repositories, pulls them back verified', async () => {
    const c = new RegistryClient({ registry: reg.host, credentials: null, log: silentLogger(), monolithicLimit: 1000, chunkSize: 64 * 1024 });
    const small = randomBytes(500);
    const big = randomBytes(300 * 1024 + 17);
    expect(await c.pushBlob('t/a', { digest: sha(small), size: small.length }, small)).toBe('uploaded');
    expect(await c.pushBlob('t/a', { digest: sha(big), size: big.length }, () => Readable.from([big.subarray(0, 100_000), big.subarray(100_000)]))).toBe(
      'uploaded',
    );
    expect(await c.pushBlob('t/a', { digest: sha(big), size: big.length }, big)).toBe('exists');
    expect(await c.pushBlob('t/b', { digest: sha(big), size: big.length }, big, ['t/a'])).toBe('mounted');
    expect(await c.pushBlob('t/b', { digest: sha(small), size: small.length }, small, ['t/a'])).toBe('mounted');
    const m = manifestFor(small, [big]);
    await c.putManifest('t/b', 'v1', m);
    const got = await c.getManifest('t/b', 'v1');
    expect(got.digest).toBe(m.digest);
    expect(got.bytes.equals(m.bytes)).toBe(true);
    expect((await c.headManifest('t/b', 'v1'))?.digest).toBe(m.digest);
    expect(await c.headManifest('t/b', 'nope')).toBeNull();
    const v = new DigestVerifier(sha(big), big.length, 'blob');
    const data = await readAll(c.openBlob('t/b', sha(big), big.length).pipe(v));
    expect(data.equals(big)).toBe(true);
    expect(v.verified).toBe(true);
    expect((await c.getBlobBytes('t/a', sha(small), 1 << 20)).equals(small)).toBe(true);
  });

  it('refuses content that does not match its digest', async () => {
    const c = new RegistryClient({ registry: reg.host, credentials: null, log: silentLogger() });
    const blob = randomBytes(1000);
    await c.pushBlob('t/c', { digest: sha(blob), size: blob.length }, blob);
    const wrong = `sha256:${'0'.repeat(64)}`;
    const v = new DigestVerifier(wrong, blob.length, 'layer X');
    // the registry serves the blob under its true digest; claim another one
    await expect(readAll(c.openBlob('t/c', sha(blob), blob.length).pipe(v))).rejects.toThrow(
      /layer X does not match its digest: content has digest sha256:[0-9a-f]{64}, the manifest declares sha256:0{64}/,
    );
    const short = new DigestVerifier(sha(blob), blob.length + 1, 'layer Y');
    await expect(readAll(c.openBlob('t/c', sha(blob), blob.length).pipe(short))).rejects.toThrow(/layer Y: got 1000 bytes, the manifest declares 1001/);
    await expect(c.getManifest('t/c', 'missing')).rejects.toThrow(/t\/c: manifest missing: HTTP 404/);
  });

  it('lists tags across pages', async () => {
    const c = new RegistryClient({ registry: reg.host, credentials: null, log: silentLogger() });
    const cfg = Buffer.from('{}');
    await c.pushBlob('t/tags', { digest: sha(cfg), size: cfg.length }, cfg);
    const m = manifestFor(cfg, []);
    const tags = ['1.0', '1.1', '1.10', '2.0', 'latest'];
    for (const t of tags) await c.putManifest('t/tags', t, m);
    expect((await c.listTags('t/tags', 2)).sort()).toEqual(tags);
  });

  it('backs off on 429 honouring Retry-After, and resumes a dropped blob download with a Range request', async () => {
    const base = new RegistryClient({ registry: reg.host, credentials: null, log: silentLogger() });
    const blob = randomBytes(2 << 20);
    await base.pushBlob('t/flaky', { digest: sha(blob), size: blob.length }, blob);
    const cfg = Buffer.from('{"a":1}');
    await base.pushBlob('t/flaky', { digest: sha(cfg), size: cfg.length }, cfg);
    const m = manifestFor(cfg, [blob]);
    await base.putManifest('t/flaky', 'v1', m);
    const proxy = await startFaultyProxy(reg.host, {
      tooManyRequests: { match: /\/manifests\//, count: 2, retryAfter: '1' },
      dropBlob: { match: new RegExp(sha(blob).slice(7)), count: 2, afterBytes: 300_000 },
    });
    try {
      const c = new RegistryClient({ registry: proxy.host, credentials: null, log: silentLogger(), backoffMs: 10 });
      const t0 = Date.now();
      expect((await c.getManifest('t/flaky', 'v1')).digest).toBe(m.digest);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(1900);
      expect(proxy.log.filter((l) => l.status === 429)).toHaveLength(2);
      const v = new DigestVerifier(sha(blob), blob.length, 'blob');
      const data = await readAll(c.openBlob('t/flaky', sha(blob), blob.length).pipe(v));
      expect(data.equals(blob)).toBe(true);
      const gets = proxy.log.filter((l) => l.path.includes(sha(blob).slice(7)));
      // each retry asks for the rest from where the data stopped
      expect(gets).toHaveLength(3);
      expect(gets[0]!.range).toBeUndefined();
      const starts = gets.slice(1).map((g) => Number(/^bytes=(\d+)-$/.exec(g.range ?? '')?.[1]));
      expect(starts[0]).toBeGreaterThan(0);
      expect(starts[1]).toBeGreaterThan(starts[0]!);
    } finally {
      await proxy.stop();
    }
  });
});

describe.skipIf(needs({ binaries: ['docker-registry', 'openssl'] }))('registry client with bearer-token auth', () => {
  let reg: TestRegistry;
  beforeAll(async () => {
    reg = await startRegistry({ tokenAuth: { users: { alice: 'secret' }, anonymousPull: true } });
  });
  afterAll(async () => {
    await reg?.stop();
  });

  it('gets scoped tokens with credentials, pulls anonymously, and says why an anonymous push fails', async () => {
    const alice = new RegistryClient({ registry: reg.host, credentials: { username: 'alice', password: 'secret' }, log: silentLogger() });
    const cfg = Buffer.from('{"x":1}');
    expect(await alice.pushBlob('p/q', { digest: sha(cfg), size: cfg.length }, cfg)).toBe('uploaded');
    const m = manifestFor(cfg, []);
    await alice.putManifest('p/q', 'v1', m);
    expect(reg.tokenRequests.some((r) => r.account === 'alice' && r.scopes.includes('repository:p/q:pull,push'))).toBe(true);

    const anon = new RegistryClient({ registry: reg.host, credentials: null, log: silentLogger() });
    expect((await anon.getManifest('p/q', 'v1')).digest).toBe(m.digest);
    const other = Buffer.from('{"y":2}');
    await expect(anon.pushBlob('p/q', { digest: sha(other), size: other.length }, other)).rejects.toThrow(/HTTP 401.*authentication required: use --creds/);

    const wrong = new RegistryClient({ registry: reg.host, credentials: { username: 'alice', password: 'nope' }, log: silentLogger(), retries: 0 });
    await expect(wrong.getManifest('p/q', 'v1')).rejects.toThrow(/token for repository:p\/q:pull: HTTP 401/);
  });
});

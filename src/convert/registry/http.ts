/** Small HTTP helpers of the registry client: scopes, loopback detection, bodies with limits, error details. */
import { BadContentError } from '../errors.js';

export const USER_AGENT = 'cvmfs-thin (+https://github.com/cvmfs-thin)';

/** A URL for messages: without the query (upload URLs carry long session state). */
export function urlForMessage(url: string): string {
  try {
    const u = new URL(url);
    return `${u.origin}${u.pathname}`;
  } catch {
    return url;
  }
}

/** Read and discard a body (so the connection can be reused). */
export async function drain(res: Response): Promise<void> {
  await res.arrayBuffer().catch(() => undefined);
}

export function isLoopbackHost(registry: string): boolean {
  const host = registry.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

export async function errorDetail(res: Response): Promise<string> {
  try {
    const text = (await res.text()).slice(0, 2000);
    try {
      const o = JSON.parse(text) as { errors?: { code?: string; message?: string; detail?: unknown }[] };
      if (Array.isArray(o.errors) && o.errors.length) {
        return o.errors.map((e) => [e.code, e.message].filter(Boolean).join(': ')).join('; ');
      }
    } catch {
      /* not JSON */
    }
    return text.trim().split('\n')[0]!.slice(0, 300);
  } catch {
    return '';
  }
}

export async function readLimited(res: Response, limit: number, what: string): Promise<Buffer> {
  const len = Number(res.headers.get('content-length'));
  if (Number.isFinite(len) && len > limit) throw new BadContentError(`${what}: ${len} bytes is larger than the ${limit}-byte limit`);
  const chunks: Buffer[] = [];
  let total = 0;
  if (!res.body) return Buffer.alloc(0);
  for await (const c of res.body as unknown as AsyncIterable<Uint8Array>) {
    total += c.byteLength;
    if (total > limit) throw new BadContentError(`${what}: larger than the ${limit}-byte limit`);
    chunks.push(Buffer.from(c));
  }
  return Buffer.concat(chunks);
}

export function pullScope(repo: string): string {
  return `repository:${repo}:pull`;
}
export function pushScope(repo: string): string {
  return `repository:${repo}:pull,push`;
}

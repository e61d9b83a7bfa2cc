import { createHash } from 'node:crypto';

/** A parsed content digest. Only sha256 is used by the OCI images and the DUCC layout we serve. */
interface Digest {
  algorithm: 'sha256';
  hex: string;
}

/** `sha256:<64 hex>` → Digest; null if malformed. */
export function parseDigest(s: string): Digest | null {
  const m = /^sha256:([a-f0-9]{64})$/.exec(s);
  return m ? { algorithm: 'sha256', hex: m[1]! } : null;
}

export function sha256Hex(data: string | Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

export function sha256Digest(data: string | Uint8Array): string {
  return `sha256:${sha256Hex(data)}`;
}

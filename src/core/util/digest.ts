import { createHash } from 'node:crypto';
import { InvalidArgumentError } from '../errors/errors.js';

/** A parsed content digest. Only sha256 is used by the OCI images and the DUCC layout we serve. */
export interface Digest {
  algorithm: 'sha256';
  hex: string;
}

const SHA256_HEX = /^[a-f0-9]{64}$/;

/** `sha256:<64 hex>` → Digest; null if malformed. */
export function parseDigest(s: string): Digest | null {
  const m = /^sha256:([a-f0-9]{64})$/.exec(s);
  return m ? { algorithm: 'sha256', hex: m[1]! } : null;
}

/** Accepts `sha256:<hex>` or a bare 64-char hex (what DUCC writes in thin.json). */
export function parseDigestLoose(s: string): Digest | null {
  if (SHA256_HEX.test(s)) return { algorithm: 'sha256', hex: s };
  return parseDigest(s);
}

export function mustParseDigest(s: string, what: string): Digest {
  const d = parseDigest(s);
  if (!d) throw new InvalidArgumentError(`${what}: ${JSON.stringify(s)} is not a sha256 digest (want sha256:<64 lowercase hex>)`);
  return d;
}

export function digestString(d: Digest): string {
  return `${d.algorithm}:${d.hex}`;
}

export function sha256Hex(data: string | Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

export function sha256Digest(data: string | Uint8Array): string {
  return `sha256:${sha256Hex(data)}`;
}

/** OCI chain IDs of a list of diff IDs (bottom to top). */
export function ociChainIds(diffIds: readonly string[]): string[] {
  const out: string[] = [];
  for (const d of diffIds) {
    const prev = out[out.length - 1];
    out.push(prev === undefined ? d : sha256Digest(`${prev} ${d}`));
  }
  return out;
}

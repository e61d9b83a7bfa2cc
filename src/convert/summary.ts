/**
 * The summaries a conversion reports, one per image and platform (status,
 * digests, per-layer outcomes, chains / flat tree / link, thin image, podman
 * store entry, timing), and errorSummary, which turns any failure into the
 * error part of one (code, kind, message and the image, layer and entry it
 * names).
 */
import { type ErrorCode, toThinError } from '../core/errors/errors.js';
import { ConvertError } from './errors.js';
import type { LayerOutcome } from './layer.js';

export interface LayerSummary {
  digest: string;
  status: LayerOutcome['status'] | 'failed';
  bytes: number;
  files: number;
  whiteouts: number;
  opaques: number;
  seconds: number;
  error?: string | undefined;
}

export interface ErrorSummary {
  code: ErrorCode;
  /** containerd errdefs-style class; 'internal' (I/O errors, bugs) aborts a publishing transaction. */
  kind: string;
  message: string;
  image?: string | undefined;
  layer?: string | undefined;
  entry?: string | undefined;
}

export interface ImageSummary {
  source: string;
  name: string | null;
  platform: string | null;
  status: 'converted' | 'skipped' | 'failed';
  manifest_digest: string | null;
  config_digest: string | null;
  layers: LayerSummary[];
  chains: string[];
  flat: string | null;
  link: string | null;
  thin: { target: string; digest: string } | null;
  /** The podman store entry (`--podman-store`). */
  podman?: { image_id: string; status: string; names: string[] } | undefined;
  error: ErrorSummary | null;
  seconds: number;
}

export function errorSummary(e: unknown): ErrorSummary {
  const t = toThinError(e);
  const c = e instanceof ConvertError ? e : null;
  return { code: t.code, kind: t.kind, message: t.message, image: c?.image, layer: c?.layer, entry: c?.entry };
}

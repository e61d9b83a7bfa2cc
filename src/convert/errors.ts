/**
 * Converter errors. Every failure a user sees names the image, and when it
 * applies the layer and the tar entry, so a bad wishlist entry or a hostile
 * layer can be found at once.
 */
import { type CodeOf, type ErrorCode, type ErrorKind, InvalidArgumentError, ThinError } from '../core/errors/errors.js';

export class BadReferenceError extends InvalidArgumentError {
  constructor(message: string) {
    super(message, 'CVMFS_THIN_BAD_REFERENCE');
  }
}

/** An HTTP-level failure talking to a registry. */
export class RegistryError extends ThinError {
  readonly status: number | undefined;
  constructor(kind: ErrorKind, message: string, status?: number, options?: { cause?: unknown }) {
    super(kind, status === 401 || status === 403 ? 'CVMFS_THIN_REGISTRY_AUTH' : 'CVMFS_THIN_REGISTRY', message, options);
    this.status = status;
  }
  static fromStatus(status: number, what: string, detail: string): RegistryError {
    const kind: ErrorKind =
      status === 404
        ? 'not-found'
        : status === 401 || status === 403
          ? 'failed-precondition'
          : status >= 500 || status === 429
            ? 'unavailable'
            : 'invalid-argument';
    const hint =
      status === 401 ? ' (authentication required: use --creds user:pass or `docker login`)' : status === 403 ? ' (access denied for these credentials)' : '';
    return new RegistryError(kind, `${what}: HTTP ${status}${detail ? `: ${detail}` : ''}${hint}`, status);
  }
}

/** Content that is not what it claims to be (digest or size mismatch, bad JSON, unsupported media type). */
export class BadContentError extends ThinError<'invalid-argument'> {
  constructor(message: string, code: CodeOf<'invalid-argument'> = 'CVMFS_THIN_BAD_CONTENT', options?: { cause?: unknown }) {
    super('invalid-argument', code, message, options);
  }
}

interface ConvertContext {
  image?: string | undefined;
  layer?: string | undefined;
  entry?: string | undefined;
}

/** A failure wrapped with where it happened. Keeps the original code and kind. */
export class ConvertError extends ThinError {
  readonly image: string | undefined;
  readonly layer: string | undefined;
  readonly entry: string | undefined;
  readonly reason: string;
  constructor(ctx: ConvertContext, reason: string, kind: ErrorKind, code: ErrorCode, options?: { cause?: unknown }) {
    const where = [
      ctx.image !== undefined ? `image ${ctx.image}` : undefined,
      ctx.layer !== undefined ? `layer ${ctx.layer}` : undefined,
      ctx.entry !== undefined ? `entry ${JSON.stringify(ctx.entry)}` : undefined,
    ].filter(Boolean);
    super(kind, code, where.length ? `${where.join(': ')}: ${reason}` : reason, options);
    this.image = ctx.image;
    this.layer = ctx.layer;
    this.entry = ctx.entry;
    this.reason = reason;
  }

  /** Wrap any error with context; context already present on the error is kept. */
  static wrap(e: unknown, ctx: ConvertContext): ConvertError {
    if (e instanceof ConvertError) {
      return new ConvertError({ image: e.image ?? ctx.image, layer: e.layer ?? ctx.layer, entry: e.entry ?? ctx.entry }, e.reason, e.kind, e.code, {
        cause: e.cause ?? e,
      });
    }
    const entry = entryOf(e);
    const reason = reasonOf(e);
    if (ThinError.is(e)) return new ConvertError({ ...ctx, entry: ctx.entry ?? entry }, reason, e.kind, e.code, { cause: e });
    const code = (e as NodeJS.ErrnoException | undefined)?.code;
    return new ConvertError({ ...ctx, entry: ctx.entry ?? entry }, reason, 'internal', code ? `CVMFS_THIN_IO_${code}` : 'CVMFS_THIN_INTERNAL', { cause: e });
  }
}

/** The tar entry an extraction error names, if any (UnsafeTarError carries `entry`). */
function entryOf(e: unknown): string | undefined {
  if (typeof e !== 'object' || e === null) return undefined;
  const entry = (e as { entry?: unknown }).entry;
  if (typeof entry === 'string') return entry;
  if (typeof entry === 'object' && entry !== null && typeof (entry as { name?: unknown }).name === 'string') return (entry as { name: string }).name;
  return undefined;
}

function reasonOf(e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e);
  // the tar library prefixes its messages with the entry, which we print separately
  const entry = entryOf(e);
  if (entry !== undefined) {
    const prefix = `tar entry ${JSON.stringify(entry)}: `;
    if (msg.startsWith(prefix)) return msg.slice(prefix.length);
  }
  return msg.startsWith('tar: ') ? msg.slice(5) : msg;
}

/**
 * Errors that leave the repository tree consistent (the converter removed its
 * temporary files): bad input, registry trouble. Anything else (I/O errors,
 * bugs) poisons a publishing transaction, which is then aborted.
 */
export function isContained(e: unknown): boolean {
  if (!ThinError.is(e)) return false;
  return e.kind !== 'internal';
}

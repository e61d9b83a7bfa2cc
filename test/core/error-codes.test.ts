/**
 * The error-code registry (src/core/errors/codes.ts) against the code base:
 * every `CVMFS_THIN_*` literal under src/ is a registered code (or a listed
 * environment variable name), every registered code is used (or marked
 * reserved), and docs/errors.md is exactly what scripts/gen-errors-doc.ts
 * generates. That each class gets a code of its own kind is a compile-time
 * property: test/core/error-kinds.test.ts.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  codeOfKind,
  ENVIRONMENT_NAMES,
  ERROR_CODES,
  type ErrorCodeInfo,
  errorCodeInfo,
  IO_CODE_PREFIX,
  isErrorCode,
  kindsOf,
} from '../../src/core/errors/codes.js';
import { InvalidArgumentError, ThinError, toThinError } from '../../src/core/errors/errors.js';
import { ERRORS_DOC, renderErrorsDoc } from '../../scripts/gen-errors-doc.js';

const SRC = path.resolve(import.meta.dirname, '../../src');
const REGISTRY = path.join(SRC, 'core/errors/codes.ts');

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...sourceFiles(p));
    else if (/\.(ts|js|mjs|cjs)$/.test(e.name)) out.push(p);
  }
  return out;
}

interface Use {
  name: string;
  /** `CVMFS_THIN_IO_${…}`: a prefix completed at run time */
  prefix: boolean;
  where: string;
}

/** `CVMFS_THIN_*` names in the files (the registry itself excluded; a bare `CVMFS_THIN_*` in prose is not a name). */
function usesIn(files: string[]): Use[] {
  const uses: Use[] = [];
  for (const f of files) {
    if (f === REGISTRY) continue;
    const text = readFileSync(f, 'utf8');
    for (const m of text.matchAll(/CVMFS_THIN_[A-Z0-9_]*/g)) {
      if (m[0] === 'CVMFS_THIN_') continue;
      const line = text.slice(0, m.index).split('\n').length;
      const prefix = m[0].endsWith('_') && text.startsWith('${', m.index + m[0].length);
      uses.push({ name: m[0], prefix, where: `${path.relative(SRC, f)}:${line}` });
    }
  }
  return uses;
}

describe('error codes', () => {
  const uses = usesIn(sourceFiles(SRC));

  it('finds the literals it checks (the scan works)', () => {
    expect(uses.length).toBeGreaterThan(100);
    expect(uses.some((u) => u.name === 'CVMFS_THIN_BAD_MANIFEST')).toBe(true);
    expect(uses.some((u) => u.prefix && u.name === IO_CODE_PREFIX)).toBe(true);
  });

  it('every CVMFS_THIN_* literal under src/ is in the registry (or is a listed environment variable)', () => {
    const unknown = uses.filter((u) => (u.prefix ? u.name !== IO_CODE_PREFIX : !isErrorCode(u.name) && !Object.hasOwn(ENVIRONMENT_NAMES, u.name)));
    expect(
      unknown.map((u) => `${u.where}: ${u.name}${u.prefix ? '${…}' : ''} (add it to src/core/errors/codes.ts, then run npx tsx scripts/gen-errors-doc.ts)`),
    ).toEqual([]);
  });

  it('every registered code is used somewhere in src/ or marked reserved, every environment name is used (no stale entries)', () => {
    const seen = new Set(uses.map((u) => u.name));
    const reserved = (Object.entries(ERROR_CODES) as [string, ErrorCodeInfo][]).filter(([, i]) => i.reserved !== undefined).map(([c]) => c);
    const stale = [...Object.keys(ERROR_CODES), ...Object.keys(ENVIRONMENT_NAMES)].filter((c) => !seen.has(c) && !reserved.includes(c));
    expect(stale).toEqual([]);
    // a reserved code that is thrown again is not reserved any more
    expect(reserved.filter((c) => seen.has(c))).toEqual([]);
  });

  it('docs/errors.md is what scripts/gen-errors-doc.ts generates', () => {
    const doc = readFileSync(ERRORS_DOC, 'utf8');
    expect(doc === renderErrorsDoc(), 'docs/errors.md is out of date: run npx tsx scripts/gen-errors-doc.ts').toBe(true);
    for (const code of Object.keys(ERROR_CODES)) expect(doc).toContain(`| \`${code}\` |`);
  });

  it('the registry is well-formed: codes are CVMFS_THIN_[A-Z0-9_]+, one-line meanings, known kinds', () => {
    const kinds = new Set(['invalid-argument', 'not-found', 'already-exists', 'failed-precondition', 'unavailable', 'internal']);
    for (const [code, info] of Object.entries(ERROR_CODES)) {
      expect(code).toMatch(/^CVMFS_THIN_[A-Z0-9]+(_[A-Z0-9]+)*$/);
      expect(code.startsWith(IO_CODE_PREFIX), code).toBe(false);
      expect(info.meaning).toMatch(/^\S.*\.$/);
      expect(info.meaning).not.toContain('\n');
      for (const k of kindsOf(code as keyof typeof ERROR_CODES)) expect(kinds.has(k), `${code}: ${k}`).toBe(true);
    }
  });

  it('isErrorCode / errorCodeInfo cover the registry and the errno family, nothing else', () => {
    expect(isErrorCode('CVMFS_THIN_DIGEST_MISMATCH')).toBe(true);
    expect(isErrorCode('CVMFS_THIN_IO_ENOSPC')).toBe(true);
    expect(isErrorCode('CVMFS_THIN_IO_')).toBe(false);
    expect(isErrorCode('CVMFS_THIN_STEP')).toBe(false);
    expect(isErrorCode('CVMFS_THIN_NOPE')).toBe(false);
    expect(isErrorCode('toString')).toBe(false);
    expect(errorCodeInfo('CVMFS_THIN_IO_EROFS').kind).toBe('internal');
    expect(kindsOf('CVMFS_THIN_REGISTRY')[0]).toBe('unavailable');
  });

  it('codeOfKind keeps a code of the kind asked and falls back otherwise', () => {
    expect(codeOfKind('internal', 'CVMFS_THIN_IO_EROFS', 'CVMFS_THIN_INTERNAL')).toBe('CVMFS_THIN_IO_EROFS');
    expect(codeOfKind('not-found', 'CVMFS_THIN_REGISTRY', 'CVMFS_THIN_NOT_FOUND')).toBe('CVMFS_THIN_REGISTRY');
    expect(codeOfKind('internal', 'CVMFS_THIN_BAD_RECIPE', 'CVMFS_THIN_INTERNAL')).toBe('CVMFS_THIN_INTERNAL');
  });

  it('errors carry their registered code; an unknown error becomes CVMFS_THIN_INTERNAL', () => {
    const e = new InvalidArgumentError('bad', 'CVMFS_THIN_BAD_RECIPE');
    expect(ThinError.is(e) && e.code).toBe('CVMFS_THIN_BAD_RECIPE');
    expect(kindsOf(e.code)).toContain(e.kind);
    expect(toThinError(new Error('x')).code).toBe('CVMFS_THIN_INTERNAL');
  });
});

/**
 * A kind and a code that do not agree do not compile: each error class takes
 * only `CodeOf<its kind>` (src/core/errors/codes.ts). The proof is the
 * `@ts-expect-error` lines and the type assertions below, checked by
 * `tsc -p tsconfig.json --noEmit` (which covers test/): were the classes to
 * accept a code of another kind, a directive would go unused and tsc fail.
 * At run time nothing checks the pair; the tests here check that the pairs
 * chosen agree (or not) with the registry, so the file proves what it says.
 */
import { describe, expect, it } from 'vitest';
import { type CodeOf, type ErrorCode, kindsOf } from '../../src/core/errors/codes.js';
import {
  AlreadyExistsError,
  type ErrorKind,
  FailedPreconditionError,
  InternalError,
  InvalidArgumentError,
  NotFoundError,
  ThinError,
  UnavailableError,
} from '../../src/core/errors/errors.js';
import { BadContentError } from '../../src/convert/errors.js';

/** true when A and B are the same type */
type Same<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
type Holds<T extends true> = T;

/** Checked by tsc: every code has a kind, and only internal errors take the errno family. */
export type CodeOfFacts = [
  Holds<Same<CodeOf<ErrorKind>, ErrorCode>>,
  Holds<`CVMFS_THIN_IO_${string}` extends CodeOf<'internal'> ? true : false>,
  Holds<`CVMFS_THIN_IO_${string}` extends CodeOf<'not-found' | 'invalid-argument' | 'unavailable'> ? false : true>,
];

function matched(): ThinError[] {
  return [
    new InvalidArgumentError('x', 'CVMFS_THIN_BAD_RECIPE'),
    new NotFoundError('x', 'CVMFS_THIN_NO_SUCH_LAYER'),
    new AlreadyExistsError('x', 'CVMFS_THIN_VOLUME_EXISTS'),
    new FailedPreconditionError('x', 'CVMFS_THIN_ROOT_LOCKED'),
    new UnavailableError('x', 'CVMFS_THIN_LOCK_TIMEOUT'),
    new InternalError('x', 'CVMFS_THIN_TAR_IO'),
    // a code listed with several kinds fits each of them
    new NotFoundError('x', 'CVMFS_THIN_REGISTRY'),
    new InvalidArgumentError('x', 'CVMFS_THIN_REGISTRY'),
    // the errno family is internal
    new InternalError('x', 'CVMFS_THIN_IO_ENOSPC'),
    new ThinError('unavailable', 'CVMFS_THIN_HOOK_FAILED', 'x'),
    new BadContentError('x', 'CVMFS_THIN_DIGEST_MISMATCH'),
    // defaults: the generic code of the class's kind
    new NotFoundError('x'),
  ];
}

function mismatched(): ThinError[] {
  return [
    // @ts-expect-error CVMFS_THIN_NO_SUCH_LAYER is a not-found code
    new InvalidArgumentError('x', 'CVMFS_THIN_NO_SUCH_LAYER'),
    // @ts-expect-error CVMFS_THIN_BAD_MANIFEST is an invalid-argument code
    new NotFoundError('x', 'CVMFS_THIN_BAD_MANIFEST'),
    // @ts-expect-error CVMFS_THIN_ROOT_LOCKED is a failed-precondition code
    new AlreadyExistsError('x', 'CVMFS_THIN_ROOT_LOCKED'),
    // @ts-expect-error CVMFS_THIN_REGISTRY is unavailable, not-found or invalid-argument, never failed-precondition
    new FailedPreconditionError('x', 'CVMFS_THIN_REGISTRY'),
    // @ts-expect-error the errno family is internal only
    new UnavailableError('x', 'CVMFS_THIN_IO_ENOSPC'),
    // @ts-expect-error CVMFS_THIN_LOCK is an unavailable code
    new InternalError('x', 'CVMFS_THIN_LOCK'),
    // @ts-expect-error the base class checks a literal kind too
    new ThinError('internal', 'CVMFS_THIN_BAD_MANIFEST', 'x'),
    // @ts-expect-error BadContentError is invalid-argument
    new BadContentError('x', 'CVMFS_THIN_LOCK'),
    // @ts-expect-error a code that is not in the registry
    new NotFoundError('x', 'CVMFS_THIN_NO_SUCH_THING'),
  ];
}

describe('error kinds and codes agree at compile time', () => {
  it('the pairs that compile agree with the registry at run time, the refused ones do not', () => {
    expect(matched().filter((e) => !kindsOf(e.code).includes(e.kind))).toEqual([]);
    const refused = mismatched();
    expect(refused).toHaveLength(9);
    expect(refused.filter((e) => kindsOf(e.code).includes(e.kind))).toEqual([]);
  });
});

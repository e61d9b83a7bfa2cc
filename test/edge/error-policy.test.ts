/** The edges' error policy (src/edge/error-policy.ts): the code beside the message, and the CLI's error output (the built CLI). */
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError, NotFoundError } from '../../src/core/errors/errors.js';
import { cliErrorText, errorCode, GENERIC_CODE, withCode } from '../../src/edge/error-policy.js';
import { runCli } from '../convert/cli.js';
import { tempDir } from '../helpers/env.js';

describe('error policy', () => {
  it('our errors keep their code; anything else has the generic one', () => {
    expect(errorCode(new NotFoundError('x', 'CVMFS_THIN_NO_SUCH_VOLUME'))).toBe('CVMFS_THIN_NO_SUCH_VOLUME');
    expect(errorCode(new Error('x'))).toBe('CVMFS_THIN_INTERNAL');
    expect(errorCode('a string')).toBe(GENERIC_CODE);
    expect(withCode('no such volume: x', 'CVMFS_THIN_NO_SUCH_VOLUME')).toBe('no such volume: x (CVMFS_THIN_NO_SUCH_VOLUME)');
  });

  it('CLI text: the message and its code; an error that is not ours also shows where it was thrown', () => {
    expect(cliErrorText(new InvalidArgumentError('--grace: "soon" is not a duration'))).toBe('--grace: "soon" is not a duration (CVMFS_THIN_INVALID_ARGUMENT)');
    const plain = cliErrorText(new TypeError('cannot read x'));
    expect(plain.split('\n')[0]).toBe('cannot read x (CVMFS_THIN_INTERNAL)');
    expect(plain.split('\n')[1]).toMatch(/^\s+at /);
    expect(cliErrorText(42)).toBe('42 (CVMFS_THIN_INTERNAL)');
    const noStack = Object.assign(new Error('bare'), { stack: undefined });
    expect(cliErrorText(noStack)).toBe('bare (CVMFS_THIN_INTERNAL)');
  });

  it('the CLI prints `cvmfs-thin: <message> (<code>)` and keeps its exit codes', async () => {
    const repo = tempDir('cvmfs-thin-error-policy-');
    const bad = await runCli(['rm', 'registry.example.org/X:1', '--repository-dir', repo]);
    expect([bad.code, bad.stderr]).toEqual([
      2,
      expect.stringMatching(/^cvmfs-thin: image reference "registry\.example\.org\/X:1": .* \(CVMFS_THIN_BAD_REFERENCE\)\n$/),
    ]);
    const gone = await runCli(['rm', 'registry.example.org/team/none:1', '--repository-dir', repo]);
    expect([gone.code, gone.stderr]).toEqual([1, expect.stringMatching(/^cvmfs-thin: rm: .* \(CVMFS_THIN_IMAGE_NOT_FOUND\)\n$/)]);
  });
});

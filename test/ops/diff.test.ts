/** The dry-run diff is diff(1)'s unified format: same hunks as GNU diff -u on the same texts. */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { unifiedDiff } from '../../src/ops/diff.js';
import { hasBinary, tempDir } from '../helpers/env.js';

const dir = tempDir('ops-diff-');

function gnu(a: string, b: string): string {
  writeFileSync(path.join(dir, 'a'), a);
  writeFileSync(path.join(dir, 'b'), b);
  try {
    return execFileSync('diff', ['-u', '--label', 'A', '--label', 'B', path.join(dir, 'a'), path.join(dir, 'b')], { encoding: 'utf8' });
  } catch (e) {
    return (e as { stdout: string }).stdout;
  }
}

const lines = (n: number, f = (i: number) => `line ${i}`) => `${Array.from({ length: n }, (_, i) => f(i + 1)).join('\n')}\n`;

describe('unifiedDiff', () => {
  it('is empty for equal texts', () => {
    expect(unifiedDiff('x\n', 'x\n', 'A', 'B')).toBe('');
  });

  const cases: [string, string, string][] = [
    ['one change in the middle', lines(20), lines(20, (i) => (i === 10 ? 'changed' : `line ${i}`))],
    ['two changes close together (one hunk)', lines(30), lines(30, (i) => (i === 10 || i === 15 ? `x${i}` : `line ${i}`))],
    ['two changes far apart (two hunks)', lines(40), lines(40, (i) => (i === 5 || i === 35 ? `x${i}` : `line ${i}`))],
    ['lines appended at the end', lines(10), `${lines(10)}[proxy_plugins.x]\n  type = "snapshot"\n`],
    ['new file', '', lines(3)],
    ['deleted file', lines(3), ''],
    ['insertions at the start', lines(5), `a\nb\n${lines(5)}`],
    ['no newline at end', 'a\nb', 'a\nc'],
    ['replace block', lines(12), lines(12, (i) => (i >= 4 && i <= 7 ? `new ${i}` : `line ${i}`))],
  ];
  it.skipIf(!hasBinary('diff')).each(cases)('matches diff -u: %s', (_n, a, b) => {
    expect(unifiedDiff(a, b, 'A', 'B')).toBe(gnu(a, b));
  });
});

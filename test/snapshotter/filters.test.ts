import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/core/errors/errors.js';
import { compileGoRegexp, parseFilters, snapshotAdaptor, unquote } from '../../src/snapshotter/filters.js';

const snaps: { name: string; parent: string; kind: string; labels: Record<string, string> }[] = [
  { name: 'p', parent: '', kind: 'committed', labels: {} },
  { name: 'a', parent: 'p', kind: 'active', labels: { l: '1', 'containerd.io/snapshot.ref': 'sha256:aa' } },
  { name: 'v', parent: 'p', kind: 'view', labels: { l: '2' } },
  { name: 'np', parent: '', kind: 'active', labels: { 'x.y/z': 'w' } },
];
const names = (...filters: string[]) => {
  const f = parseFilters(filters);
  return snaps
    .filter((s) => f(snapshotAdaptor(s)))
    .map((s) => s.name)
    .sort();
};

describe('containerd filter language', () => {
  it.each([
    [[], ['a', 'np', 'p', 'v']],
    [[''], ['a', 'np', 'p', 'v']],
    [['kind==committed'], ['p']],
    [['kind!=committed'], ['a', 'np', 'v']],
    [['parent==p'], ['a', 'v']],
    [['parent==""'], ['np', 'p']],
    [['parent!=""'], ['a', 'v']],
    [
      ['name==a', 'name==v'],
      ['a', 'v'],
    ],
    [['name==a,kind==view'], []],
    [['labels.l'], ['a', 'v']],
    [['labels.l==2'], ['v']],
    [['labels.l!=1'], ['np', 'p', 'v']],
    [['labels."x.y/z"==w'], ['np']],
    [['labels.x.y/z==w'], []], // '/' ends the field; containerd fails on it too (see below)
    [['labels."containerd.io/snapshot.ref"==sha256:aa,parent=="p"'], ['a']],
    [['name~=^n'], ['np']],
    [['name~="^(a|v)$"'], ['a', 'v']],
    [['name~=/^(a|p)$/'], ['a', 'p']],
    [['name~=|^N|'], []],
    [['name~="(?i)^N"'], ['np']],
    [[' kind == active'], ['a', 'np']],
  ] as [string[], string[]][])('%j', (filters, want) => {
    if (filters[0] === 'labels.x.y/z==w') {
      expect(() => names(...filters)).toThrow(InvalidArgumentError);
      return;
    }
    expect(names(...filters)).toEqual(want);
  });

  it.each(['kind==', 'kind=', 'kind===active', ',', 'name==a,', '"unterminated', 'labels.|x|==1', 'kind==active ', 'name==\u0000', 'name=="\\q"', '==a'])(
    'refuses %j with InvalidArgument',
    (f) => expect(() => parseFilters([f])).toThrow(InvalidArgumentError),
  );

  it('unquotes Go string literals including the regexp quotes', () => {
    expect(unquote('"a\\tb\\u00e9\\x41\\101"')).toBe('a\tbéAA');
    expect(unquote('/a\\/b/')).toBe('a/b');
    expect(unquote('|x|')).toBe('x');
    expect(() => unquote('"a"b"')).toThrow();
  });

  it('has RE2 semantics: Go flags and classes work, backreferences and lookaround are refused naming the pattern', () => {
    expect(compileGoRegexp('(?i)abc').test('xABCx')).toBe(true);
    expect(compileGoRegexp('\\Aab\\z').test('ab')).toBe(true);
    expect(compileGoRegexp('\\Aab\\z').test('abc')).toBe(false);
    expect(compileGoRegexp('^[[:alpha:]]+$').test('abc')).toBe(true); // POSIX class: RE2 yes, JS RegExp no
    expect(compileGoRegexp('^\\pL\\p{Greek}$').test('aλ')).toBe(true);
    expect(compileGoRegexp('(?U)a+').test('aaa')).toBe(true); // RE2's ungreedy flag
    expect(compileGoRegexp('^é.$').test('éλ')).toBe(true); // runes, not bytes or UTF-16 units
    for (const bad of ['(', '(a)\\1', '(?=a)', '(?<!a)b', 'a{2,1}', 'a**']) {
      expect(() => parseFilters([`name~="${bad.replace(/\\/g, '\\\\')}"`]), bad).toThrow(InvalidArgumentError);
    }
    expect(() => parseFilters(['name~="(a)\\\\1"'])).toThrow(/~= pattern "\(a\)\\\\1" is not an RE2 regexp/);
  });

  it('matches in linear time: a pattern that backtracks exponentially in JS answers at once', () => {
    // with a backtracking engine this is 2^40 steps: the test would never finish
    const name = `${'a'.repeat(40)}b`;
    expect(parseFilters(['name~="^(a+)+$"'])(snapshotAdaptor({ name, parent: '', kind: 'active', labels: {} }))).toBe(false);
    expect(parseFilters(['name~="^(a+)+b$"'])(snapshotAdaptor({ name, parent: '', kind: 'active', labels: {} }))).toBe(true);
  });
});

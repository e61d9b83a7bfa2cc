/**
 * containerd's filter language (filters/{scanner,parser,quote,filter}.go),
 * ported: the List RPC filters are OR-ed, each is a comma-separated AND of
 * selectors `fieldpath [("=="|"!="|"~=") value]`. Pure.
 */
import { createRequire } from 'node:module';
import { InternalError, InvalidArgumentError } from '../core/errors/errors.js';

type Adaptor = (fieldpath: string[]) => [string, boolean];
type Filter = (a: Adaptor) => boolean;

const EOF = -1;
const ILLEGAL = -2;

type Tok =
  | { t: 'eof'; pos: number }
  | { t: 'illegal'; pos: number; text: string }
  | { t: 'quoted'; pos: number; text: string }
  | { t: 'sep'; pos: number; text: string }
  | { t: 'op'; pos: number; text: string }
  | { t: 'value'; pos: number; text: string }
  | { t: 'field'; pos: number; text: string }
  | { t: 'other'; pos: number; ch: number };

const isSpace = (c: number) => c >= 0 && /\s/u.test(String.fromCodePoint(c));
const isAlpha = (c: number) => (c >= 65 && c <= 90) || (c >= 97 && c <= 122);
const isDigit = (c: number) => c >= 48 && c <= 57;
const isFieldRune = (c: number) => c === 95 || isAlpha(c) || isDigit(c);
const isOperatorRune = (c: number) => c === 61 /* = */ || c === 33 /* ! */ || c === 126; /* ~ */
const isQuoteRune = (c: number) => c === 47 /* / */ || c === 124 /* | */ || c === 34; /* " */
const isSeparatorRune = (c: number) => c === 44 /* , */ || c === 46; /* . */
const isValueRune = (c: number) => c >= 0 && c !== 44 && !isSpace(c) && /[\p{L}\p{M}\p{N}\p{P}\p{S}]/u.test(String.fromCodePoint(c));

class Scanner {
  private readonly cps: number[];
  pos = 0;
  ppos = 0;
  value = false;
  err = '';
  constructor(readonly input: string) {
    this.cps = Array.from(input, (c) => c.codePointAt(0)!);
  }
  text(a: number, b: number): string {
    return String.fromCodePoint(...this.cps.slice(a, b));
  }
  next(): number {
    if (this.ppos >= this.cps.length) {
      this.pos = this.ppos;
      return EOF;
    }
    this.pos = this.ppos;
    const c = this.cps[this.ppos++]!;
    if (c === 0) {
      this.error('unexpected null');
      return ILLEGAL;
    }
    if (c >= 0xd800 && c <= 0xdfff) {
      this.error('rune error');
      return ILLEGAL;
    }
    return c;
  }
  peek(): number {
    const [p, pp] = [this.pos, this.ppos];
    const c = this.next();
    this.pos = p;
    this.ppos = pp;
    return c;
  }
  error(msg: string) {
    if (!this.err) this.err = msg;
  }
  scan(): Tok {
    let ch = this.next();
    let pos = this.pos;
    for (;;) {
      if (ch === EOF) return { t: 'eof', pos };
      if (ch === ILLEGAL) return { t: 'illegal', pos, text: '' };
      if (isQuoteRune(ch)) {
        const ok = this.scanQuoted(ch);
        return ok ? { t: 'quoted', pos, text: this.text(pos, this.ppos) } : { t: 'illegal', pos, text: this.text(pos, this.ppos) };
      }
      if (isSeparatorRune(ch)) {
        this.value = false;
        return { t: 'sep', pos, text: this.text(pos, this.ppos) };
      }
      if (isOperatorRune(ch)) {
        while (isOperatorRune(this.peek())) this.next();
        this.value = true;
        return { t: 'op', pos, text: this.text(pos, this.ppos) };
      }
      if (isSpace(ch)) {
        ch = this.next();
        pos = this.pos;
        continue;
      }
      if (this.value) {
        while (isValueRune(this.peek())) this.next();
        this.value = false;
        return { t: 'value', pos, text: this.text(pos, this.ppos) };
      }
      if (isFieldRune(ch)) {
        while (isFieldRune(this.peek())) this.next();
        return { t: 'field', pos, text: this.text(pos, this.ppos) };
      }
      return { t: 'other', pos: this.pos, ch };
    }
  }
  private scanQuoted(quote: number): boolean {
    let illegal = false;
    let ch = this.next();
    while (ch !== quote) {
      if (ch === 10 || ch < 0) {
        this.error('quoted literal not terminated');
        return false;
      }
      if (ch === 92) {
        const [c, legal] = this.scanEscape(quote);
        ch = c;
        if (!legal) illegal = true;
      } else ch = this.next();
    }
    return !illegal;
  }
  private scanEscape(quote: number): [number, boolean] {
    const ch = this.next();
    const simple = [97, 98, 102, 110, 114, 116, 118, 92]; // a b f n r t v backslash
    if (simple.includes(ch) || ch === quote) return [this.next(), true];
    if (ch >= 48 && ch <= 55) return this.scanDigits(ch, 8, 3);
    if (ch === 120) return this.scanDigits(this.next(), 16, 2);
    if (ch === 117) return this.scanDigits(this.next(), 16, 4);
    if (ch === 85) return this.scanDigits(this.next(), 16, 8);
    this.error('illegal escape sequence');
    return [ch, false];
  }
  private scanDigits(ch: number, base: number, n: number): [number, boolean] {
    while (n > 0 && digitVal(ch) < base) {
      ch = this.next();
      n--;
    }
    if (n > 0) {
      this.error('illegal numeric escape sequence');
      return [ch, false];
    }
    return [ch, true];
  }
}

function digitVal(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  if (c >= 97 && c <= 102) return c - 97 + 10;
  if (c >= 65 && c <= 70) return c - 65 + 10;
  return 16;
}

/** Go string-literal unquoting, with `/` and `|` also acting as double quotes. */
export function unquote(s: string): string {
  const bad = () => new Error('invalid syntax');
  if (s.length < 2) throw bad();
  const q = s[0]!;
  if (q !== s[s.length - 1]) throw bad();
  const body = s.slice(1, -1);
  if (q === '`') {
    if (body.includes('`')) throw bad();
    return body.replace(/\r/g, '');
  }
  if (!['"', "'", '|', '/'].includes(q)) throw bad();
  if (body.includes('\n')) throw bad();
  const bytes: number[] = [];
  const pushCp = (cp: number) => bytes.push(...Buffer.from(String.fromCodePoint(cp), 'utf8'));
  let i = 0;
  const cps = Array.from(body);
  while (i < cps.length) {
    const c = cps[i]!;
    if (c === q) throw bad();
    if (c !== '\\') {
      pushCp(c.codePointAt(0)!);
      i++;
      continue;
    }
    const e = cps[i + 1];
    if (e === undefined) throw bad();
    i += 2;
    const simple: Record<string, number> = { a: 7, b: 8, f: 12, n: 10, r: 13, t: 9, v: 11, '\\': 92 };
    if (e in simple) {
      bytes.push(simple[e]!);
      continue;
    }
    if (e === 'x' || e === 'u' || e === 'U') {
      const n = e === 'x' ? 2 : e === 'u' ? 4 : 8;
      const h = cps.slice(i, i + n).join('');
      if (h.length < n || !/^[0-9a-fA-F]+$/.test(h)) throw bad();
      const v = parseInt(h, 16);
      i += n;
      if (e === 'x') bytes.push(v);
      else {
        if (v > 0x10ffff) throw bad();
        pushCp(v);
      }
      continue;
    }
    if (e >= '0' && e <= '7') {
      const o = e + cps.slice(i, i + 2).join('');
      if (!/^[0-7]{3}$/.test(o)) throw bad();
      const v = parseInt(o, 8);
      if (v > 255) throw bad();
      bytes.push(v);
      i += 2;
      continue;
    }
    if (["'", '"', '|', '/'].includes(e)) {
      if (e !== q) throw bad();
      bytes.push(e.charCodeAt(0));
      continue;
    }
    throw bad();
  }
  if (q === "'" && Array.from(Buffer.from(bytes).toString('utf8')).length !== 1) throw bad();
  return Buffer.from(bytes).toString('utf8');
}

interface Selector {
  fieldpath: string[];
  op: 'present' | '==' | '!=' | '~=';
  value: string;
}

class ParseError extends Error {}

function parseOne(input: string): Selector[] {
  const sc = new Scanner(input);
  const mkerr = (pos: number, msg: string) => new ParseError(`filters: parse error: [${input} @${pos}]: ${msg}`);
  const unq = (pos: number, s: string, allowAlts: boolean) => {
    if (!allowAlts && s[0] !== "'" && s[0] !== '"') throw mkerr(pos, 'invalid quote encountered');
    try {
      return unquote(s);
    } catch (e) {
      throw mkerr(pos, `unquoting failed: ${(e as Error).message}`);
    }
  };
  const field = (): string => {
    const t = sc.scan();
    if (t.t === 'field') return t.text;
    if (t.t === 'quoted') return unq(t.pos, t.text, false);
    if (t.t === 'illegal') throw mkerr(t.pos, sc.err);
    throw mkerr(t.pos, 'expected field or quoted');
  };
  const fieldpath = (): string[] => {
    const fs = [field()];
    while (sc.peek() === 46) {
      const t = sc.scan();
      if (t.t !== 'sep') throw mkerr(t.pos, 'expected a field separator (`.`)');
      fs.push(field());
    }
    return fs;
  };
  const selector = (): Selector => {
    const fp = fieldpath();
    const pk = sc.peek();
    if (pk === 44 || pk === EOF) return { fieldpath: fp, op: 'present', value: '' };
    const t = sc.scan();
    let op: Selector['op'];
    if (t.t === 'op') {
      if (t.text === '==' || t.text === '!=' || t.text === '~=') op = t.text;
      else throw mkerr(t.pos, `unsupported operator ${JSON.stringify(t.text)}`);
    } else if (t.t === 'illegal') throw mkerr(t.pos, sc.err);
    else throw mkerr(t.pos, 'expected an operator ("=="|"!="|"~=")');
    const v = sc.scan();
    let value: string;
    if (v.t === 'value' || v.t === 'field') value = v.text;
    else if (v.t === 'quoted') value = unq(v.pos, v.text, op === '~=');
    else if (v.t === 'illegal') throw mkerr(v.pos, sc.err);
    else if (v.t === 'eof') throw mkerr(v.pos, 'unexpected EOF');
    else throw mkerr(v.pos, 'expected value or quoted');
    return { fieldpath: fp, op, value };
  };
  const all = [selector()];
  for (;;) {
    const pk = sc.peek();
    if (pk === EOF) break;
    if (pk === 44) {
      const t = sc.scan();
      if (t.t !== 'sep') throw mkerr(t.pos, 'expected a separator');
      all.push(selector());
      continue;
    }
    throw mkerr(sc.ppos, `unexpected input: ${pk >= 0 ? String.fromCodePoint(pk) : 'illegal'}`);
  }
  return all;
}

/** A compiled `~=` pattern: unanchored search, like Go's `regexp.MatchString`. */
interface GoRegexp {
  test(s: string): boolean;
}

interface Re2js {
  RE2JS: { compile(p: string): GoRegexp };
}

let re2: Re2js | null = null;

/** re2js (RE2/J in pure JS): RE2 syntax and linear-time matching, never a backtracking RegExp on the event loop. */
function engine(): Re2js {
  if (re2) return re2;
  try {
    re2 = createRequire(import.meta.url)('re2js') as Re2js;
  } catch (e) {
    throw new InternalError(`the RE2 engine (npm package re2js) is not installed: ${(e as Error).message}`, 'CVMFS_THIN_MISSING_DEPENDENCY');
  }
  return re2;
}

/**
 * A Go (RE2) regular expression, compiled by a linear-time RE2 engine: the
 * matching time is bounded by pattern size × input size (containerd uses Go's
 * regexp for the same reason), so `^(a+)+$` cannot stall the daemon.
 * RE2 syntax only: no backreferences or lookaround. Throws a message naming
 * what is wrong when it does not compile.
 */
export function compileGoRegexp(src: string): GoRegexp {
  try {
    return engine().RE2JS.compile(src);
  } catch (e) {
    if (e instanceof InternalError) throw e;
    throw new ParseError(
      `filters: ~= pattern ${JSON.stringify(src)} is not an RE2 regexp (no backreferences or lookaround): ${(e as Error).message.replace(/^error parsing regexp: /, '')}`,
    );
  }
}

function compile(sels: Selector[]): Filter {
  const compiled = sels.map((s) => {
    if (s.op === '~=') {
      const re = compileGoRegexp(s.value);
      return (a: Adaptor) => {
        const [v] = a(s.fieldpath);
        return re.test(v);
      };
    }
    return (a: Adaptor) => {
      const [v, present] = a(s.fieldpath);
      if (s.op === 'present') return present;
      if (s.op === '==') return present && v === s.value;
      return v !== s.value;
    };
  });
  return (a) => compiled.every((f) => f(a));
}

/** Parse the List filters (OR of filters). Syntax errors → InvalidArgumentError. */
export function parseFilters(filters: readonly string[]): Filter {
  if (filters.length === 0) return () => true;
  const fs = filters.map((f) => {
    if (f === '') return () => true;
    try {
      return compile(parseOne(f));
    } catch (e) {
      if (e instanceof ParseError) throw new InvalidArgumentError(`${e.message}: invalid filter ${JSON.stringify(f)}`, 'CVMFS_THIN_BAD_REQUEST');
      throw e;
    }
  });
  return (a) => fs.some((f) => f(a));
}

/** The fields containerd exposes for snapshots (storage/bolt.go adaptSnapshot). */
export function snapshotAdaptor(info: { name: string; parent: string; kind: string; labels: Record<string, string> }): Adaptor {
  return (fp) => {
    switch (fp[0]) {
      case 'kind':
        return [info.kind, true];
      case 'name':
        return [info.name, true];
      case 'parent':
        return [info.parent, true];
      case 'labels': {
        const key = fp.slice(1).join('.');
        return Object.hasOwn(info.labels, key) ? [info.labels[key]!, true] : ['', false];
      }
      default:
        return ['', false];
    }
  };
}

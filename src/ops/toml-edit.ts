/**
 * Edits of existing TOML files that keep everything else — comments, key
 * order, quoting, indentation, blank lines — byte for byte.
 *
 * smol-toml (our parser) drops comments, so the text is patched with
 * `@decimalturn/toml-patch`, which keeps a concrete syntax tree and rewrites
 * only the values that differ. Each edit is checked three ways: the input must
 * parse (else we refuse and name the line), the edit must change something
 * (else the file is left byte-identical), and the output, parsed again with
 * smol-toml, must equal the input's parse with exactly our change applied
 * (else we refuse to write it).
 */
import { parse as parseToml, TomlError } from 'smol-toml';
import { InternalError, InvalidArgumentError } from '../core/errors/errors.js';

/** A TOML table as the parsers return it. */
export type Table = Record<string, unknown>;

interface TomlPatchModule {
  parse(text: string): Table;
  patch(existing: string, updated: unknown, format?: Record<string, unknown>): string;
}

// loaded on demand, and through a plain string so that only setup needs the package
const TOML_PATCH: string = '@decimalturn/toml-patch';
let tomlPatch: Promise<TomlPatchModule> | undefined;
function loadTomlPatch(): Promise<TomlPatchModule> {
  tomlPatch ??= (import(TOML_PATCH) as Promise<TomlPatchModule>).catch((e: unknown) => {
    tomlPatch = undefined;
    throw new InternalError(`editing TOML needs the npm package ${TOML_PATCH}: ${(e as Error).message}`, 'CVMFS_THIN_MISSING_DEPENDENCY');
  });
  return tomlPatch;
}

/** Parse, or refuse naming the file and the line. */
export function parseTomlFile(text: string, file: string): Table {
  try {
    return parseToml(text) as Table;
  } catch (e) {
    if (e instanceof TomlError) {
      const why = e.message.split('\n')[0]!.replace(/^Invalid TOML document: /, '');
      throw new InvalidArgumentError(`${file}: line ${e.line}, column ${e.column}: not valid TOML (${why}); the file was not changed`, 'CVMFS_THIN_BAD_CONFIG');
    }
    throw e;
  }
}

export function isTable(v: unknown): v is Table {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Date);
}

/**
 * The table at `keys` below `root`, created when missing. Refuses (naming the
 * key) when something other than a table is in the way.
 */
export function tableAt(root: Table, keys: readonly string[], file: string): Table {
  let t = root;
  const seen: string[] = [];
  for (const k of keys) {
    seen.push(/^[A-Za-z0-9_-]+$/.test(k) ? k : JSON.stringify(k));
    const v = t[k];
    if (v === undefined) t[k] = {};
    else if (!isTable(v)) throw new InvalidArgumentError(`${file}: ${seen.join('.')} is not a table; the file was not changed`, 'CVMFS_THIN_BAD_CONFIG');
    t = t[k] as Table;
  }
  return t;
}

/** A canonical text of a parsed document: key order and object prototypes do not matter, types do. */
function canon(v: unknown): string {
  if (typeof v === 'bigint') return `${v}n`;
  if (v instanceof Date) return `D${v.constructor.name}:${String(v)}`;
  if (Array.isArray(v)) return `[${v.map(canon).join(',')}]`;
  if (typeof v === 'object' && v !== null) {
    return `{${Object.keys(v)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canon((v as Table)[k])}`)
      .join(',')}}`;
  }
  return `${typeof v}:${JSON.stringify(v)}`;
}

function sameDocument(a: unknown, b: unknown): boolean {
  return canon(a) === canon(b);
}

/**
 * Apply `mutate` to the document in `text`. `mutate` gets a parsed copy and
 * must be deterministic (it runs on the patcher's tree and on smol-toml's for
 * the check). Returns the new text, identical to `text` when nothing changed.
 */
export async function editToml(text: string, file: string, mutate: (doc: Table) => void): Promise<string> {
  const before = parseTomlFile(text, file);
  const expected = parseTomlFile(text, file);
  mutate(expected);
  if (sameDocument(before, expected)) return text;
  const tp = await loadTomlPatch();
  const doc = tp.parse(text);
  mutate(doc);
  // new tables as [sections], never as inline tables
  let out = tp.patch(text, doc, { inlineTableStart: 64 });
  if (!out.endsWith('\n')) out += '\n';
  let got: Table;
  try {
    got = parseToml(out) as Table;
  } catch (e) {
    throw new InternalError(
      `${file}: the edited file would not be valid TOML (${(e as Error).message.split('\n')[0]}); the file was not changed`,
      'CVMFS_THIN_EDIT_FAILED',
    );
  }
  if (!sameDocument(got, expected)) {
    throw new InternalError(`${file}: the edited file would not hold exactly the intended settings; the file was not changed`, 'CVMFS_THIN_EDIT_FAILED');
  }
  return out;
}

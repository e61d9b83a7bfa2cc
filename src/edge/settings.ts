/**
 * The daemons' settings, one precedence for every edge: a flag given on the
 * command line, else the environment (where an edge names a variable), else
 * the TOML file (`--config`), else the default. TOML files are validated
 * against a spec of their keys (kebab-case, as the flags; unknown keys are
 * errors).
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import type * as SmolToml from 'smol-toml';
import { InvalidArgumentError } from '../core/errors/errors.js';

/** The TOML parser on first use (its CommonJS build, so loading stays synchronous): a daemon started without --config never loads it (~0.4 MiB). */
const parseToml = (text: string): unknown => (createRequire(import.meta.url)('smol-toml') as typeof SmolToml).parse(text);

/**
 * A daemon's TOML keys. A tiny validator rather than zod: the daemons must stay
 * small (zod alone adds ~7 MiB of resident memory to a Node process).
 */
export type Field =
  | { type: 'string'; check?: (v: string) => string | null }
  | { type: 'boolean' }
  | { type: 'integer'; min: number; max: number }
  | { type: 'string[]'; check?: (v: string) => string | null }
  | { type: 'enum'; values: readonly string[] };

type FieldValue<F> = F extends { type: 'string' }
  ? string
  : F extends { type: 'boolean' }
    ? boolean
    : F extends { type: 'integer' }
      ? number
      : F extends { type: 'string[]' }
        ? string[]
        : F extends { type: 'enum'; values: readonly (infer V)[] }
          ? V
          : never;

export type ConfigOf<S extends Record<string, Field>> = { [K in keyof S]?: FieldValue<S[K]> };

/** Read a TOML file and validate it against `spec` (unknown keys are errors). */
export function loadToml<S extends Record<string, Field>>(file: string, spec: S): ConfigOf<S> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new InvalidArgumentError(`config ${file}: cannot read: ${(e as Error).message}`, 'CVMFS_THIN_BAD_CONFIG');
  }
  let raw: Record<string, unknown>;
  try {
    raw = parseToml(text) as Record<string, unknown>;
  } catch (e) {
    throw new InvalidArgumentError(`config ${file}: not valid TOML: ${(e as Error).message}`, 'CVMFS_THIN_BAD_CONFIG');
  }
  return validateConfig(raw, spec, `config ${file}`);
}
/** Validate a parsed config object against `spec`. Pure. */
export function validateConfig<S extends Record<string, Field>>(raw: Record<string, unknown>, spec: S, what = 'config'): ConfigOf<S> {
  const problems: string[] = [];
  const unknown = Object.keys(raw).filter((k) => !Object.hasOwn(spec, k));
  if (unknown.length) problems.push(`unknown key(s) ${unknown.map((k) => JSON.stringify(k)).join(', ')} (known: ${Object.keys(spec).join(', ')})`);
  const out: Record<string, unknown> = {};
  for (const [k, f] of Object.entries(spec)) {
    const v = raw[k];
    if (v === undefined) continue;
    let bad: string | null = null;
    if (f.type === 'string') bad = typeof v !== 'string' ? `must be a string` : (f.check?.(v) ?? null);
    else if (f.type === 'boolean') bad = typeof v !== 'boolean' ? 'must be true or false' : null;
    else if (f.type === 'integer') {
      const n = typeof v === 'bigint' ? Number(v) : v;
      bad = typeof n !== 'number' || !Number.isInteger(n) || n < f.min || n > f.max ? `must be a whole number from ${f.min} to ${f.max}` : null;
      if (!bad) {
        out[k] = n;
        continue;
      }
    } else if (f.type === 'enum') bad = typeof v !== 'string' || !f.values.includes(v) ? `must be one of ${f.values.join(', ')}` : null;
    else if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) bad = 'must be an array of strings';
    else for (const x of v as string[]) bad ??= f.check?.(x) ? `${JSON.stringify(x)}: ${f.check(x)}` : null;
    if (bad) problems.push(`${k}: ${bad}`);
    else out[k] = v;
  }
  if (problems.length) throw new InvalidArgumentError(`${what}: ${problems.join('; ')}`, 'CVMFS_THIN_BAD_CONFIG');
  return out as ConfigOf<S>;
}

/** Which options came from the command line (commander's Command answers 'cli' for those). */
export interface FlagSource {
  getOptionValueSource(key: string): string | undefined;
}

export interface Settings<S extends Record<string, Field>> {
  /** The config file's keys, validated ({} without a file). */
  readonly file: ConfigOf<S>;
  /** Was this flag (camelCase) given on the command line? */
  fromCli(flag: string): boolean;
  /** The flag when given, else `$env` when named and not empty, else the config key, else undefined. */
  pick<T>(flag: string, key: keyof S & string, env?: string): T | undefined;
  /** A --no-x boolean flag over its config key, default true. */
  enabled(flag: string, key: keyof S & string): boolean;
}

/**
 * Resolve an edge's settings: `flags` are commander's option values (with
 * `config`, the TOML file to read), `cmd` tells which were given on the
 * command line (null: none were, as for FlexVolume, which kubelet runs without
 * flags).
 */
export function resolveSettings<S extends Record<string, Field>>(
  spec: S,
  flags: Record<string, unknown>,
  cmd: FlagSource | null,
  env: NodeJS.ProcessEnv = process.env,
): Settings<S> {
  const file: ConfigOf<S> = flags['config'] ? loadToml(String(flags['config']), spec) : {};
  const fromCli = (flag: string) => cmd !== null && cmd.getOptionValueSource(flag) === 'cli';
  const fromEnv = (name: string | undefined) => (name === undefined || env[name] === '' ? undefined : env[name]);
  return {
    file,
    fromCli,
    pick: <T>(flag: string, key: keyof S & string, envName?: string) => (fromCli(flag) ? flags[flag] : (fromEnv(envName) ?? file[key])) as T | undefined,
    enabled: (flag, key) => (fromCli(flag) ? Boolean(flags[flag]) : ((file[key] as boolean | undefined) ?? true)),
  };
}

/**
 * DUCC wishlists (recipes), unchanged: `version: 1`, `user`, `cvmfs_repo`,
 * `output_format` with `$(scheme) $(registry) $(repository) $(tag) $(digest)
 * $(reference) $(image)`, `input` with `*` tag globs expanded against the
 * registry's tag list. Converts what is missing, skips what is done, keeps
 * going past failures.
 */
import { readFileSync } from 'node:fs';
import { parse as parseYaml, YAMLParseError } from 'yaml';
import { z } from 'zod';
import { REPOSITORY_NAME } from '../core/cvmfs/location.js';
import { InvalidArgumentError } from '../core/errors/errors.js';
import { ConvertError } from './errors.js';
import type { Registries } from './image/transports.js';
import { type DockerReference, type ImageReference, parseDockerReference, parseImageReference, parseWishImage, tagGlob, type WishImage } from './reference.js';

interface Recipe {
  version: 1;
  user?: string | undefined;
  cvmfs_repo: string;
  output_format?: string | undefined;
  input: string[];
  ignoreErrors?: string[] | undefined;
}

const recipeSchema = z.strictObject({
  version: z.literal(1, { error: 'only version 1 recipes exist' }),
  user: z.string().optional().nullable(),
  cvmfs_repo: z.string().regex(REPOSITORY_NAME, 'not a CVMFS repository name (like unpacked.cern.ch)'),
  output_format: z.string().optional().nullable(),
  input: z.array(z.string().min(1, 'empty image')).min(1, 'lists no image'),
  ignoreErrors: z.array(z.string()).optional().nullable(),
});

export function parseRecipe(text: string, file: string): Recipe {
  let raw: unknown;
  try {
    raw = parseYaml(text, { uniqueKeys: true });
  } catch (e) {
    const where = e instanceof YAMLParseError && e.linePos ? ` (line ${e.linePos[0].line})` : '';
    throw new InvalidArgumentError(`recipe ${file}: not valid YAML${where}: ${(e as Error).message.split('\n')[0]}`, 'CVMFS_THIN_BAD_RECIPE');
  }
  const res = recipeSchema.safeParse(raw);
  if (!res.success) {
    const msgs = res.error.issues.map((i) => {
      if (i.code === 'unrecognized_keys') return `unknown key(s) ${i.keys.map((k) => JSON.stringify(k)).join(', ')}`;
      return `${i.path.length ? i.path.join('.') : '(top level)'}: ${i.message}`;
    });
    throw new InvalidArgumentError(`recipe ${file}: ${msgs.join('; ')}`, 'CVMFS_THIN_BAD_RECIPE');
  }
  const d = res.data;
  // every input must parse: report all bad lines at once
  const bad: string[] = [];
  d.input.forEach((s, i) => {
    try {
      parseWishImage(s);
    } catch (e) {
      bad.push(`input[${i}]: ${(e as Error).message}`);
    }
  });
  if (bad.length) throw new InvalidArgumentError(`recipe ${file}: ${bad.join('; ')}`, 'CVMFS_THIN_BAD_RECIPE');
  return {
    version: 1,
    user: d.user ?? undefined,
    cvmfs_repo: d.cvmfs_repo,
    output_format: d.output_format ?? undefined,
    input: d.input,
    ignoreErrors: d.ignoreErrors ?? undefined,
  };
}

export function readRecipe(file: string): Recipe {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new InvalidArgumentError(`recipe ${file}: cannot read: ${(e as Error).message}`, 'CVMFS_THIN_BAD_RECIPE');
  }
  return parseRecipe(text, file);
}

const DEFAULT_OUTPUT_FORMAT = '$(scheme)://$(registry)/$(repository)_thin:$(tag)';

/** DUCC's formatOutputImage. */
export function formatOutput(format: string | undefined, w: WishImage, ref: DockerReference): string {
  const f = format && format.trim() !== '' ? format : DEFAULT_OUTPUT_FORMAT;
  const reference =
    ref.tag !== undefined && ref.digest !== undefined ? `:${ref.tag}@${ref.digest}` : ref.tag !== undefined ? `:${ref.tag}` : `@${ref.digest ?? ''}`;
  return f
    .replaceAll('$(scheme)', w.scheme)
    .replaceAll('$(registry)', w.host)
    .replaceAll('$(repository)', ref.repository)
    .replaceAll('$(digest)', ref.digest ?? '')
    .replaceAll('$(tag)', ref.tag ?? '')
    .replaceAll('$(reference)', reference)
    .replaceAll('$(image)', ref.repository + reference);
}

/** The thin target of a formatted output name (`https://host/repo:tag`, or any transport). */
export function outputTarget(s: string): { ref: ImageReference; insecureRegistry?: string } {
  const m = /^(https?):\/\/(.*)$/.exec(s);
  if (m) {
    let rest = m[2]!;
    // a digest cannot be pushed to: keep the tag only
    const at = rest.indexOf('@');
    if (at >= 0 && rest.slice(0, at).lastIndexOf(':') > rest.slice(0, at).lastIndexOf('/')) rest = rest.slice(0, at);
    const ref = parseDockerReference(rest);
    return m[1] === 'http' ? { ref: { transport: 'docker', ref }, insecureRegistry: ref.registry } : { ref: { transport: 'docker', ref } };
  }
  if (/^(docker:\/\/|oci:|oci-archive:|docker-archive:)/.test(s)) return { ref: parseImageReference(s) };
  return { ref: { transport: 'docker', ref: parseDockerReference(s) } };
}

interface Wish {
  input: string;
  wish: WishImage;
  ref: DockerReference;
  thin: ImageReference | null;
  output: string | null;
}

interface ExpansionError {
  input: string;
  error: ConvertError;
}

/** Expand wildcard tags (anchored globs over the registry's tag list) into concrete wishes. */
export async function expandRecipe(
  recipe: Recipe,
  regs: Registries,
  opts: { noThin?: boolean; insecureRegistries?: Set<string> },
): Promise<{ wishes: Wish[]; errors: ExpansionError[] }> {
  const wishes: Wish[] = [];
  const errors: ExpansionError[] = [];
  const seen = new Set<string>();
  const add = (w: WishImage, ref: DockerReference) => {
    const key = `${ref.registry}/${ref.repository}:${ref.tag ?? ''}@${ref.digest ?? ''}`;
    if (seen.has(key)) return;
    seen.add(key);
    let thin: ImageReference | null = null;
    let output: string | null = null;
    if (!opts.noThin) {
      output = formatOutput(recipe.output_format, w, ref);
      const t = outputTarget(output);
      thin = t.ref;
      if (t.insecureRegistry) opts.insecureRegistries?.add(t.insecureRegistry);
    }
    wishes.push({ input: w.input, wish: w, ref, thin, output });
  };
  for (const input of recipe.input) {
    let w: WishImage;
    try {
      w = parseWishImage(input);
    } catch (e) {
      errors.push({ input, error: ConvertError.wrap(e, { image: input }) });
      continue;
    }
    if (w.scheme === 'http') opts.insecureRegistries?.add(w.ref.registry);
    if (!w.wildcard) {
      try {
        add(w, w.ref);
      } catch (e) {
        errors.push({ input, error: ConvertError.wrap(e, { image: input }) });
      }
      continue;
    }
    try {
      const tags = await regs.client(w.ref.registry, 'source').listTags(w.ref.repository);
      const re = tagGlob(w.ref.tag!);
      const matched = tags.filter((t) => re.test(t)).sort();
      if (matched.length === 0)
        throw new InvalidArgumentError(`no tag of ${w.ref.registry}/${w.ref.repository} matches ${JSON.stringify(w.ref.tag)}`, 'CVMFS_THIN_NO_MATCH');
      for (const t of matched) add(w, { ...w.ref, tag: t });
    } catch (e) {
      errors.push({ input, error: ConvertError.wrap(e, { image: input }) });
    }
  }
  return { wishes, errors };
}

/**
 * Image references: skopeo's transport syntax (`docker://`, `oci:`,
 * `oci-archive:`, `docker-archive:`), Docker reference normalisation
 * (distribution/reference's grammar) and DUCC's wishlist image syntax. Pure.
 */
import path from 'node:path';
import { BadReferenceError } from './errors.js';

/** A normalised Docker reference. `registry` is canonical (`docker.io` for Docker Hub). */
export interface DockerReference {
  registry: string;
  repository: string;
  tag?: string | undefined;
  digest?: string | undefined;
}

export type ImageReference =
  | { transport: 'docker'; ref: DockerReference }
  | { transport: 'oci'; path: string; tag?: string | undefined }
  | { transport: 'oci-archive'; path: string; tag?: string | undefined }
  | { transport: 'docker-archive'; path: string; ref?: DockerReference | undefined; index?: number | undefined };

const DOCKER_HUB = 'docker.io';
/** The API endpoint of Docker Hub. */
const DOCKER_HUB_API = 'registry-1.docker.io';
/** The name DUCC and unpacked.cern.ch use for Docker Hub in repository paths. */
const DOCKER_HUB_DUCC = 'registry.hub.docker.com';
const HUB_ALIASES = new Set(['docker.io', 'index.docker.io', 'registry-1.docker.io', 'registry.hub.docker.com', 'hub.docker.com']);

// distribution/reference grammar
const COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const DIGEST = /^sha256:[a-f0-9]{64}$/;
const DOMAIN = /^(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*(?::[0-9]+)?$/;
const IPV6_DOMAIN = /^\[[0-9a-fA-F:.]+\](?::[0-9]+)?$/;

/** Canonical registry name (Docker Hub aliases → `docker.io`, lower case host). */
export function canonicalRegistry(host: string): string {
  const h = host.toLowerCase();
  return HUB_ALIASES.has(h) ? DOCKER_HUB : h;
}

/** The host[:port] to send API requests to. */
export function apiHost(registry: string): string {
  return canonicalRegistry(registry) === DOCKER_HUB ? DOCKER_HUB_API : registry;
}

/** The registry name used in the DUCC tree (`.metadata/<this>/…`, the readable link). */
function duccRegistryName(registry: string): string {
  return canonicalRegistry(registry) === DOCKER_HUB ? DOCKER_HUB_DUCC : registry;
}

/** Parse a Docker reference like `busybox`, `host:5000/a/b:tag`, `a/b@sha256:…`. Adds `latest` when neither tag nor digest is given, if `defaultTag`. */
export function parseDockerReference(s: string, opts: { defaultTag?: boolean; allowWildcardTag?: boolean } = {}): DockerReference {
  const what = `image reference ${JSON.stringify(s)}`;
  if (s === '') throw new BadReferenceError(`${what}: empty`);
  if (/\s/.test(s)) throw new BadReferenceError(`${what}: contains white space`);
  let rest = s;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST.test(digest)) throw new BadReferenceError(`${what}: digest ${JSON.stringify(digest)} is not sha256:<64 lowercase hex>`);
  }
  let tag: string | undefined;
  const lastSlash = rest.lastIndexOf('/');
  const colon = rest.indexOf(':', lastSlash + 1);
  if (colon >= 0) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    const tagOk = opts.allowWildcardTag ? /^[\w*][\w.*-]{0,127}$/.test(tag) : TAG.test(tag);
    if (!tagOk) throw new BadReferenceError(`${what}: tag ${JSON.stringify(tag)} is not valid (letters, digits, _ . -, at most 128, not starting with . or -)`);
  }
  const parts = rest.split('/');
  let registry = DOCKER_HUB;
  const first = parts[0]!;
  if (parts.length > 1 && (first.includes('.') || first.includes(':') || first === 'localhost' || first.startsWith('['))) {
    if (!DOMAIN.test(first) && !IPV6_DOMAIN.test(first)) throw new BadReferenceError(`${what}: ${JSON.stringify(first)} is not a registry host[:port]`);
    registry = canonicalRegistry(first);
    parts.shift();
  }
  if (parts.length === 0 || parts.some((p) => p === '')) throw new BadReferenceError(`${what}: empty repository path component`);
  for (const p of parts) {
    if (!COMPONENT.test(p)) {
      const hint = /[A-Z]/.test(p) ? ' (repository names must be lower case)' : '';
      throw new BadReferenceError(`${what}: repository component ${JSON.stringify(p)} is not valid${hint}`);
    }
  }
  if (registry === DOCKER_HUB && parts.length === 1) parts.unshift('library');
  const repository = parts.join('/');
  if (registry.length + 1 + repository.length > 255) throw new BadReferenceError(`${what}: name longer than 255 characters`);
  if (tag === undefined && digest === undefined && opts.defaultTag !== false) tag = 'latest';
  return { registry, repository, tag, digest };
}

/** `host/repo:tag@digest` (canonical registry). */
export function formatDockerReference(r: DockerReference): string {
  return `${r.registry}/${r.repository}${r.tag !== undefined ? `:${r.tag}` : ''}${r.digest !== undefined ? `@${r.digest}` : ''}`;
}

/** Docker's short form: `busybox:latest`, `user/x:1`, `host:5000/x:1`. */
export function familiarName(r: DockerReference): string {
  if (r.registry === DOCKER_HUB) {
    const repo = r.repository.startsWith('library/') && r.repository.split('/').length === 2 ? r.repository.slice(8) : r.repository;
    return `${repo}${r.tag !== undefined ? `:${r.tag}` : ''}${r.digest !== undefined ? `@${r.digest}` : ''}`;
  }
  return formatDockerReference(r);
}

/** Parse skopeo-style transport syntax. */
export function parseImageReference(s: string): ImageReference {
  const m = /^([a-z-]+):(.*)$/s.exec(s);
  if (!m) {
    throw new BadReferenceError(
      `image ${JSON.stringify(s)}: no transport; use docker://HOST/REPO:TAG, oci:DIR[:TAG], oci-archive:FILE[:TAG] or docker-archive:FILE[:REF]`,
    );
  }
  const transport = m[1]!;
  const rest = m[2]!;
  switch (transport) {
    case 'docker': {
      if (!rest.startsWith('//')) throw new BadReferenceError(`image ${JSON.stringify(s)}: docker transport needs docker://HOST/REPO[:TAG|@DIGEST]`);
      return { transport: 'docker', ref: parseDockerReference(rest.slice(2)) };
    }
    case 'oci':
    case 'oci-archive': {
      const { file, suffix } = splitPath(rest, s);
      if (suffix !== undefined && suffix !== '' && !/^[A-Za-z0-9_.\-:/@]+$/.test(suffix)) {
        throw new BadReferenceError(`image ${JSON.stringify(s)}: ${JSON.stringify(suffix)} is not a valid OCI reference name`);
      }
      return { transport, path: file, tag: suffix === '' ? undefined : suffix };
    }
    case 'docker-archive': {
      const { file, suffix } = splitPath(rest, s);
      if (suffix === undefined || suffix === '') return { transport, path: file };
      if (suffix.startsWith('@')) {
        const n = Number(suffix.slice(1));
        if (!/^@\d+$/.test(suffix)) throw new BadReferenceError(`image ${JSON.stringify(s)}: ${suffix} is not @INDEX`);
        return { transport, path: file, index: n };
      }
      const ref = parseDockerReference(suffix);
      if (ref.digest !== undefined) throw new BadReferenceError(`image ${JSON.stringify(s)}: docker-archive references cannot carry a digest`);
      return { transport, path: file, ref };
    }
    default:
      throw new BadReferenceError(`image ${JSON.stringify(s)}: unknown transport ${JSON.stringify(transport)} (docker, oci, oci-archive, docker-archive)`);
  }
}

/** skopeo splits `PATH:REF` at the first colon: paths cannot contain one. */
function splitPath(rest: string, whole: string): { file: string; suffix: string | undefined } {
  const c = rest.indexOf(':');
  const file = c < 0 ? rest : rest.slice(0, c);
  if (file === '') throw new BadReferenceError(`image ${JSON.stringify(whole)}: empty path`);
  return { file: path.resolve(file), suffix: c < 0 ? undefined : rest.slice(c + 1) };
}

export function formatImageReference(r: ImageReference): string {
  switch (r.transport) {
    case 'docker':
      return `docker://${formatDockerReference(r.ref)}`;
    case 'oci':
    case 'oci-archive':
      return `${r.transport}:${r.path}${r.tag !== undefined ? `:${r.tag}` : ''}`;
    case 'docker-archive':
      return `docker-archive:${r.path}${r.ref ? `:${familiarName(r.ref)}` : r.index !== undefined ? `:@${r.index}` : ''}`;
  }
}

/** A DUCC wishlist image: `[http(s)://]REGISTRY/REPO[:TAG][@DIGEST]`, tag may hold `*`. */
export interface WishImage {
  scheme: 'https' | 'http';
  ref: DockerReference;
  /** The tag has `*` globs (expanded against the registry's tag list). */
  wildcard: boolean;
  /** As written in the recipe. */
  input: string;
  /** The registry host as written (DUCC's `$(registry)`). */
  host: string;
}

export function parseWishImage(s: string): WishImage {
  let rest = s.trim();
  let scheme: 'https' | 'http' = 'https';
  const sm = /^([a-z]+):\/\//.exec(rest);
  if (sm) {
    if (sm[1] === 'http') scheme = 'http';
    else if (sm[1] !== 'https' && sm[1] !== 'docker')
      throw new BadReferenceError(`image ${JSON.stringify(s)}: scheme ${sm[1]}:// is not http, https or docker`);
    rest = rest.slice(sm[0].length);
  }
  const firstSlash = rest.indexOf('/');
  const host = firstSlash < 0 ? '' : rest.slice(0, firstSlash);
  if (!host.includes('.') && !host.includes(':') && host !== 'localhost') {
    throw new BadReferenceError(
      `image ${JSON.stringify(s)}: impossible to identify the registry (write REGISTRY/REPOSITORY[:TAG], e.g. registry.hub.docker.com/library/centos:7)`,
    );
  }
  const ref = parseDockerReference(rest, { allowWildcardTag: true });
  const wildcard = ref.tag !== undefined && ref.tag.includes('*');
  if (wildcard && ref.digest !== undefined) throw new BadReferenceError(`image ${JSON.stringify(s)}: a wildcard tag cannot be combined with a digest`);
  return { scheme, ref, wildcard, input: s, host };
}

/** An anchored glob over tags: `*` matches any run of characters, everything else is literal. */
export function tagGlob(glob: string): RegExp {
  const re = glob
    .split('*')
    .map((p) => p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'))
    .join('.*');
  return new RegExp(`^${re}$`);
}

/** `<ducc registry>/<repository>:<tag>` or `…@sha256:<hex>`: the image's name in the DUCC tree. */
export function duccImageName(r: DockerReference): string {
  const base = `${duccRegistryName(r.registry)}/${r.repository}`;
  if (r.tag !== undefined) return `${base}:${r.tag}`;
  if (r.digest !== undefined) return `${base}@${r.digest}`;
  return base;
}

/** DUCC's default thin-image name: `<registry>/<repository>_thin:<tag>` (a digest-only source gets tag `sha256-<hex>`). */
export function defaultThinReference(r: DockerReference): DockerReference {
  const tag = r.tag ?? (r.digest ? r.digest.replace(':', '-') : 'latest');
  return { registry: r.registry, repository: `${r.repository}_thin`, tag };
}

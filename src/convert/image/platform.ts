/** Platforms (`os/arch[/variant]`), the host's default, and choosing manifests from an index. Pure. */
import { InvalidArgumentError } from '../../core/errors/errors.js';
import type { Descriptor, ImageIndex, Platform } from './types.js';
import { isIndexMediaType, isManifestMediaType } from './types.js';

export interface PlatformSpec {
  os: string;
  architecture: string;
  variant?: string | undefined;
}

const NODE_ARCH: Record<string, { architecture: string; variant?: string }> = {
  x64: { architecture: 'amd64' },
  arm64: { architecture: 'arm64', variant: 'v8' },
  arm: { architecture: 'arm', variant: 'v7' },
  ia32: { architecture: '386' },
  ppc64: { architecture: 'ppc64le' },
  s390x: { architecture: 's390x' },
  riscv64: { architecture: 'riscv64' },
  mips64el: { architecture: 'mips64le' },
  loong64: { architecture: 'loong64' },
};

export function hostPlatform(): PlatformSpec {
  const a = NODE_ARCH[process.arch] ?? { architecture: process.arch };
  return { os: process.platform === 'win32' ? 'windows' : process.platform, ...a };
}

export function parsePlatform(s: string): PlatformSpec {
  const parts = s.split('/');
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => !/^[a-z0-9._-]+$/.test(p))) {
    throw new InvalidArgumentError(`--platform ${JSON.stringify(s)}: want OS/ARCH[/VARIANT], e.g. linux/amd64 or linux/arm64/v8`, 'CVMFS_THIN_BAD_FLAG');
  }
  return { os: parts[0]!, architecture: normaliseArch(parts[1]!), variant: parts[2] };
}

function normaliseArch(a: string): string {
  if (a === 'x86_64' || a === 'x86-64') return 'amd64';
  if (a === 'aarch64') return 'arm64';
  if (a === 'i386') return '386';
  return a;
}

/** Default variants as containerd normalises them. */
function normVariant(arch: string, variant: string | undefined): string | undefined {
  if (arch === 'arm64' && (variant === undefined || variant === '' || variant === 'v8')) return 'v8';
  if (arch === 'arm' && (variant === undefined || variant === '')) return 'v7';
  return variant === '' ? undefined : variant;
}

export function formatPlatform(p: PlatformSpec | Platform): string {
  return `${p.os}/${p.architecture}${p.variant ? `/${p.variant}` : ''}`;
}

/** A directory-safe name: `linux-amd64`, `linux-arm64-v8`. */
export function platformDirName(p: PlatformSpec | Platform): string {
  return `${p.os}-${p.architecture}${p.variant ? `-${p.variant}` : ''}`;
}

/** Does `p` satisfy the wanted platform? A wanted platform without variant accepts any variant. */
export function platformMatches(want: PlatformSpec, p: Platform | PlatformSpec): boolean {
  if (want.os !== p.os || normaliseArch(want.architecture) !== normaliseArch(p.architecture)) return false;
  if (want.variant === undefined) return true;
  return normVariant(want.architecture, want.variant) === normVariant(p.architecture, p.variant);
}

/** Index entries that are runnable images (not attestations, not `unknown/unknown`). */
export function imageEntries(index: ImageIndex): Descriptor[] {
  return index.manifests.filter((d) => {
    if (!isManifestMediaType(d.mediaType) && !isIndexMediaType(d.mediaType) && d.mediaType !== '') return false;
    if (d.annotations?.['vnd.docker.reference.type'] === 'attestation-manifest') return false;
    if (d.platform && (d.platform.os === 'unknown' || d.platform.architecture === 'unknown')) return false;
    return true;
  });
}

/**
 * Pick the entry of an index for `want`. With several matches, prefer the
 * exact variant of `want` (or the host's default variant), then the first.
 */
export function selectPlatform(index: ImageIndex, want: PlatformSpec, what: string): Descriptor {
  const entries = imageEntries(index);
  const withPlatform = entries.filter((d) => d.platform);
  if (withPlatform.length === 0 && entries.length === 1) return entries[0]!;
  const matches = withPlatform.filter((d) => platformMatches(want, d.platform!));
  if (matches.length === 0) {
    const avail = withPlatform.map((d) => formatPlatform(d.platform!)).join(', ') || '(none declared)';
    throw new InvalidArgumentError(
      `${what}: no image for platform ${formatPlatform(want)} (available: ${avail}); choose one with --platform or use --all-platforms`,
      'CVMFS_THIN_NO_PLATFORM',
    );
  }
  const wantVariant = normVariant(want.architecture, want.variant ?? hostDefaultVariant(want));
  const exact = matches.find((d) => normVariant(d.platform!.architecture, d.platform!.variant) === wantVariant);
  return exact ?? matches[0]!;
}

function hostDefaultVariant(want: PlatformSpec): string | undefined {
  const h = hostPlatform();
  return h.architecture === want.architecture ? h.variant : undefined;
}

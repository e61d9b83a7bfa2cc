/**
 * OCI/AUFS whiteout names ↔ overlayfs whiteouts. Pure.
 *
 * In an OCI layer tar, `dir/.wh.name` deletes `dir/name` from the layers below
 * and `dir/.wh..wh..opq` makes `dir` opaque (hides everything below in it).
 * overlayfs expresses the same with a 0/0 character device named `name` and
 * the xattr `trusted.overlay.opaque=y` on `dir`.
 */
export const WHITEOUT_PREFIX = '.wh.';
export const OPAQUE_MARKER = '.wh..wh..opq';
export const OVERLAY_OPAQUE_XATTR = 'trusted.overlay.opaque';
/** Other AUFS metadata entries (`.wh..wh.plnk`, `.wh..wh.aufs`): never part of the image content. */
export const AUFS_META_PREFIX = '.wh..wh.';

type WhiteoutKind = { kind: 'opaque' } | { kind: 'whiteout'; target: string } | { kind: 'aufs-meta' } | null;

/** Classify one base name of a tar entry. */
export function classifyWhiteout(base: string): WhiteoutKind {
  if (!base.startsWith(WHITEOUT_PREFIX)) return null;
  if (base === OPAQUE_MARKER) return { kind: 'opaque' };
  if (base.startsWith(AUFS_META_PREFIX)) return { kind: 'aufs-meta' };
  const target = base.slice(WHITEOUT_PREFIX.length);
  if (target === '' || target === '.' || target === '..') return null;
  return { kind: 'whiteout', target };
}

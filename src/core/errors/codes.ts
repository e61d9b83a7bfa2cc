/**
 * Every `CVMFS_THIN_*` error code, in one typed registry: the `kind` an error
 * with that code has (what the edges map to a gRPC or HTTP status, see
 * errors.ts) and what it means. Each error class takes only `CodeOf<its
 * kind>`, so a code that is not listed here, or is listed with another kind,
 * does not compile (test/core/error-codes.test.ts holds `@ts-expect-error`
 * lines that prove it). docs/errors.md is generated from this table
 * (`npx tsx scripts/gen-errors-doc.ts`); the test also checks that every
 * `CVMFS_THIN_*` literal in src/ is listed (or is one of the environment
 * variable names below), that every code is used or marked `reserved`, and
 * that the document is up to date.
 *
 * Codes are stable: they are what scripts and logs match on. A new failure
 * that a caller may want to tell apart gets a new code here.
 */
import type { ErrorKind } from './errors.js';

export interface ErrorCodeInfo {
  /** The kind errors with this code have; a list when it depends on the case (the first is the usual one). */
  readonly kind: ErrorKind | readonly ErrorKind[];
  /** One line: what went wrong. */
  readonly meaning: string;
  /** Why the code stays listed although nothing in src/ throws it (codes are API: a code is not reused for something else). */
  readonly reserved?: string;
}

export const ERROR_CODES = {
  // ------------------------------------------------------------ generic (the classes' defaults)
  CVMFS_THIN_INVALID_ARGUMENT: { kind: 'invalid-argument', meaning: 'Bad input (default code of InvalidArgumentError).' },
  CVMFS_THIN_NOT_FOUND: { kind: 'not-found', meaning: 'Something named does not exist (default code of NotFoundError).' },
  CVMFS_THIN_ALREADY_EXISTS: { kind: 'already-exists', meaning: 'Something with that name exists already (default code of AlreadyExistsError).' },
  CVMFS_THIN_FAILED_PRECONDITION: {
    kind: 'failed-precondition',
    meaning: 'The request is valid but the state does not allow it (default code of FailedPreconditionError).',
  },
  CVMFS_THIN_UNAVAILABLE: { kind: 'unavailable', meaning: 'A transient failure; retrying later may work (default code of UnavailableError).' },
  CVMFS_THIN_INTERNAL: { kind: 'internal', meaning: 'A bug or an unexpected failure (default code of InternalError; anything thrown that is not typed).' },

  // ------------------------------------------------------------ every program: command line, files, sockets
  CVMFS_THIN_BAD_FLAG: {
    kind: 'invalid-argument',
    meaning:
      'A command-line flag or argument (or the settings-file key or environment variable that stands for it) is missing, malformed, out of range or contradicts another; the message names it. Fix the command line or the settings.',
  },
  CVMFS_THIN_PATH_OCCUPIED: {
    kind: 'invalid-argument',
    meaning:
      'A path cvmfs-thin must create or replace (a socket, an image tag link) holds something else, which is left alone; the message names it. Move it away or choose another path.',
  },
  CVMFS_THIN_ADDRESS_IN_USE: {
    kind: 'failed-precondition',
    meaning: 'Another process is already serving the socket address; stop it, or give this daemon another address.',
  },
  CVMFS_THIN_MOUNTED_BELOW: {
    kind: 'internal',
    meaning:
      'A directory tree to remove has file systems mounted at or below it (a leaked overlay or bind mount); nothing of it was removed. Unmount what the message names, then retry.',
  },

  // ------------------------------------------------------------ thin images and CVMFS layers
  CVMFS_THIN_BAD_MANIFEST: { kind: 'invalid-argument', meaning: 'A thin image manifest (thin.json) is invalid; the message names the field.' },
  CVMFS_THIN_LAYER_MISSING: { kind: 'failed-precondition', meaning: 'A layer a thin image lists does not exist in CVMFS.' },
  CVMFS_THIN_REPO_UNAVAILABLE: { kind: 'failed-precondition', meaning: 'A repository a thin image names is not mounted (is CVMFS mounted?).' },
  CVMFS_THIN_BAD_LAYER_RECORD: {
    kind: 'failed-precondition',
    meaning: "A layer's record (.metadata/cvmfs-thin-layer.json, version 2) is invalid; the message names the field.",
  },
  CVMFS_THIN_LAYER_UNAVAILABLE: { kind: 'unavailable', meaning: 'A CVMFS layer directory cannot be reached right now (is CVMFS mounted?).' },
  CVMFS_THIN_MOUNT: {
    kind: ['internal', 'failed-precondition', 'invalid-argument'],
    meaning:
      "An overlay mount of a layer stack failed, or its options do not fit in one page (failed-precondition), or a directory of it has ':' or ',' in its path, which overlay options cannot carry (invalid-argument: choose another state directory).",
  },
  CVMFS_THIN_TOO_MANY_LAYERS: {
    kind: 'failed-precondition',
    meaning: 'An image has more layers than overlayfs stacks in one mount (the message gives the limit); squash or flatten the image.',
  },
  CVMFS_THIN_ROOT_LOCKED: { kind: 'failed-precondition', meaning: 'Another daemon holds the state directory (one daemon per state directory).' },

  // ------------------------------------------------------------ tar library (src/core/tar)
  CVMFS_THIN_UNSAFE_TAR: {
    kind: 'invalid-argument',
    meaning: 'A layer tar is refused (path escape, bad header, limits…); the message names the entry and the reason.',
  },
  CVMFS_THIN_BAD_EROFS_ENTRY: {
    kind: 'invalid-argument',
    meaning:
      "An entry cannot go into a profile's EROFS image (a path twice or outside a listed directory, an xattr without an EROFS name prefix, a file shorter than listed); the message names it.",
  },
  CVMFS_THIN_TAR_IO: { kind: 'internal', meaning: 'Writing an extracted entry failed (ENOSPC, EACCES…); the message names the entry and the errno.' },
  CVMFS_THIN_INPUT_CLOSED: { kind: 'invalid-argument', meaning: 'The tar stream ended before its end-of-archive marker, or was already destroyed.' },
  CVMFS_THIN_BAD_COMPRESSED_DATA: { kind: 'invalid-argument', meaning: 'A compressed layer does not decompress (corrupt gzip/zstd data).' },
  CVMFS_THIN_DECOMPRESSOR: { kind: 'invalid-argument', meaning: 'The external zstd decompressor could not be started.' },
  CVMFS_THIN_UNSUPPORTED_MEDIA_TYPE: {
    kind: 'invalid-argument',
    meaning: 'A media type that is not a layer (or an unknown compression) was given to the tar library.',
  },
  CVMFS_THIN_UNMAPPED_ID: { kind: 'invalid-argument', meaning: 'Packing a directory met a host uid/gid outside the user-namespace id map.' },

  // ------------------------------------------------------------ converter (convert, wishlist, gc, rm)
  CVMFS_THIN_BAD_REFERENCE: {
    kind: 'invalid-argument',
    meaning: 'An image reference or transport (docker://, oci:, oci-archive:, docker-archive:) is not valid.',
  },
  CVMFS_THIN_BAD_RECIPE: { kind: 'invalid-argument', meaning: 'A wishlist recipe (DUCC YAML) is invalid.' },
  CVMFS_THIN_NO_MATCH: { kind: 'invalid-argument', meaning: 'A wishlist tag pattern matches no tag of the repository.' },
  CVMFS_THIN_NO_PLATFORM: { kind: 'invalid-argument', meaning: 'The image has no variant for the requested platform.' },
  CVMFS_THIN_BAD_CONTENT: { kind: 'invalid-argument', meaning: 'Image content is not what it claims (bad JSON, wrong size, unexpected answer).' },
  CVMFS_THIN_DIGEST_MISMATCH: { kind: 'invalid-argument', meaning: 'A blob or manifest does not match its digest (corrupt or tampered content).' },
  CVMFS_THIN_DIFFID_MISMATCH: { kind: 'invalid-argument', meaning: "A layer's uncompressed content does not match the diff_id of the image config." },
  CVMFS_THIN_UNSUPPORTED: { kind: 'invalid-argument', meaning: 'Valid but unsupported input (encrypted layers, zstd-compressed archives, nested indexes…).' },
  CVMFS_THIN_BAD_ARCHIVE: { kind: 'invalid-argument', meaning: 'An oci-archive or docker-archive is not a readable, safe tar.' },
  CVMFS_THIN_INPUT_NOT_FOUND: {
    kind: 'not-found',
    meaning:
      'An input the command names is not there: a file (image archive, OCI layout, access profile) cannot be opened, or the archive or layout has no image with that tag or index, or lacks a blob it lists; the message names it.',
  },
  CVMFS_THIN_NO_REPOSITORY_DIR: {
    kind: 'invalid-argument',
    meaning:
      'The repository directory (--repository-dir) does not exist or is not a directory: mount the repository, or open a transaction, or create the directory.',
  },
  CVMFS_THIN_BAD_CREDENTIALS: {
    kind: 'invalid-argument',
    meaning:
      'Registry credentials cannot be used: --creds is not USER:PASSWORD, the Docker config file is not valid JSON or holds an auth that is not base64("user:password"), or a credential helper name is not valid.',
  },
  CVMFS_THIN_REGISTRY: {
    kind: ['unavailable', 'not-found', 'invalid-argument'],
    meaning: 'A registry request failed (the kind follows the HTTP status; network errors and 5xx/429 after the retries are unavailable).',
  },
  CVMFS_THIN_REGISTRY_AUTH: { kind: 'failed-precondition', meaning: 'The registry refused the credentials or needs some (HTTP 401/403).' },
  CVMFS_THIN_LOCK: { kind: 'unavailable', meaning: 'Taking the host-wide publishing lock (flock) failed.' },
  CVMFS_THIN_LOCK_TIMEOUT: { kind: 'unavailable', meaning: 'Another process held the publishing lock for longer than the timeout.' },
  CVMFS_THIN_HOOK_FAILED: { kind: 'unavailable', meaning: 'A publishing hook (transaction, publish, abort) could not run or exited non-zero.' },
  CVMFS_THIN_ABORTED: { kind: 'unavailable', meaning: 'The publishing transaction was aborted after a failed write; nothing of it was published.' },
  CVMFS_THIN_INGEST_INCOMPLETE: {
    kind: 'unavailable',
    meaning: 'The ingest hook exited successfully before the layer was streamed to its end; the layer is not taken as published.',
  },
  CVMFS_THIN_IMAGE_NOT_FOUND: {
    kind: 'not-found',
    meaning: 'cvmfs-thin rm: the image is not in the repository (no .metadata record, no readable link, no podman store name); nothing was removed.',
  },
  CVMFS_THIN_CANNOT_PUBLISH: {
    kind: 'invalid-argument',
    meaning:
      'The options ask for a layer form a CVMFS publish destroys (overlay whiteouts, plain .wh.* files through a transaction); refused before any transaction.',
  },

  // ------------------------------------------------------------ podman additional image store
  CVMFS_THIN_PODMAN_BAD_DIGEST: { kind: 'invalid-argument', meaning: 'A podman store record holds something that is not a sha256 digest.' },
  CVMFS_THIN_PODMAN_BAD_INPUT: { kind: 'invalid-argument', meaning: 'The manifest or config given for the podman store is not a usable image.' },
  CVMFS_THIN_PODMAN_BAD_NAME: { kind: 'invalid-argument', meaning: 'A podman store image name is missing or not a full reference.' },
  CVMFS_THIN_PODMAN_BAD_STORE: {
    kind: ['failed-precondition', 'invalid-argument'],
    meaning: 'The podman store directory or one of its files is not what it must be (invalid-argument: the repository directory given does not exist).',
  },
  CVMFS_THIN_PODMAN_IMAGE_MISSING: { kind: 'not-found', meaning: 'The image is not converted in the repository, so it cannot be added to the podman store.' },
  CVMFS_THIN_PODMAN_LAYER_MISSING: { kind: 'not-found', meaning: 'A layer of the image is not in the repository.' },
  CVMFS_THIN_PODMAN_PLAIN_WHITEOUTS: {
    kind: 'failed-precondition',
    meaning: 'A layer keeps OCI whiteouts as plain files, which the podman store cannot serve.',
  },
  CVMFS_THIN_PODMAN_STORE_ROOT: {
    kind: ['invalid-argument', 'failed-precondition'],
    meaning:
      "--podman-store-root is not an absolute path (invalid-argument), or the store's layers already point into another mount point of the repository (failed-precondition).",
  },
  CVMFS_THIN_PODMAN_RECORD_WHITEOUTS: {
    kind: 'failed-precondition',
    meaning:
      'A layer keeps its deletions in its record (the form that survives a CVMFS publish), which podman cannot read: the podman store would show deleted files.',
  },

  // ------------------------------------------------------------ snapshotter
  CVMFS_THIN_REMOTE_SNAPSHOT: {
    kind: 'already-exists',
    meaning: 'A remote (CVMFS) layer was committed for the snapshot: containerd skips the download (expected answer, not a failure).',
  },
  CVMFS_THIN_NO_SUCH_SNAPSHOT: { kind: 'not-found', meaning: 'A snapshot (or the parent snapshot) containerd names does not exist.' },
  CVMFS_THIN_BAD_LABELS: {
    kind: 'invalid-argument',
    meaning: "A snapshot's labels are too large (one key and value, or all of them together; containerd's own limits); the message gives the sizes.",
  },
  CVMFS_THIN_HAS_CHILDREN: {
    kind: 'failed-precondition',
    meaning: 'A snapshot or graph-driver layer cannot be removed while others are based on it (the message names up to three); remove those first.',
  },

  // ------------------------------------------------------------ CVMFS client health (snapshotter, graph driver: core/host/probe.ts)
  CVMFS_THIN_BAD_PROFILE: {
    kind: 'invalid-argument',
    meaning: 'An access profile (.profiles/…json) is not valid; the message names the field. The image starts without prefetch.',
  },
  CVMFS_THIN_CVMFS_STALLED: {
    kind: 'unavailable',
    meaning:
      'A CVMFS mount did not answer within cvmfs-timeout (a stalled client: server or proxy unreachable); the message names the directory and the deadline.',
  },

  // ------------------------------------------------------------ access profiles (core/stack/access-recorder.ts)
  CVMFS_THIN_NO_ACCESS_RECORDING: {
    kind: 'failed-precondition',
    meaning:
      "A container's file opens cannot be recorded (fanotify): not a mount point, not privileged (EPERM), no fanotify (ENOSYS), or a file system that refuses a filesystem mark (EINVAL…); the message names the mount point and the errno.",
  },

  // ------------------------------------------------------------ graph driver and Docker plugins
  CVMFS_THIN_BAD_LAYER_ID: { kind: 'invalid-argument', meaning: 'A layer ID from dockerd is not valid.' },
  CVMFS_THIN_NO_SUCH_LAYER: { kind: 'not-found', meaning: 'A layer (or the parent layer) dockerd names does not exist.' },
  CVMFS_THIN_NOT_INITIALISED: {
    kind: 'failed-precondition',
    meaning: 'The graph driver is not initialised: dockerd has not called GraphDriver.Init and there is no saved state.',
  },
  CVMFS_THIN_BAD_STORAGE_OPT: { kind: 'invalid-argument', meaning: 'A graph driver storage option is unknown, malformed or not supported.' },
  CVMFS_THIN_IDMAP: { kind: 'unavailable', meaning: 'An idmapped mount of a CVMFS layer for --userns-remap cannot be made.' },
  CVMFS_THIN_USERNS: { kind: 'unavailable', meaning: 'A user namespace for an id map could not be created (unshare).' },
  CVMFS_THIN_UNKNOWN_METHOD: {
    kind: 'not-found',
    meaning:
      'A request names a method this front-end does not implement: a Docker plugin endpoint it does not serve (HTTP 404), or a gRPC call a read-only node plugin does not serve, such as CSI NodeExpandVolume (UNIMPLEMENTED). Nothing to fix on the node: the caller asked for a capability the plugin does not advertise.',
  },
  CVMFS_THIN_BAD_REQUEST: {
    kind: 'invalid-argument',
    meaning:
      'A request of the container engine is malformed or contradicts the state: a Docker plugin request (e.g. a mount ID reused for another volume), a snapshotter call (an empty key, a parent that is not committed, an update of more than labels, a bad filter), a FlexVolume call without its arguments.',
  },

  // ------------------------------------------------------------ CVMFS volumes (Docker volume plugin, CSI, FlexVolume)
  CVMFS_THIN_BAD_VOLUME: { kind: 'invalid-argument', meaning: 'A volume name or option is invalid; the message names it.' },
  CVMFS_THIN_REPOSITORY_NOT_ALLOWED: { kind: 'invalid-argument', meaning: 'The volume names a repository that this node does not allow.' },
  CVMFS_THIN_BAD_TARGET: { kind: 'invalid-argument', meaning: 'A volume target path is not absolute, not allowed, or not a directory.' },
  CVMFS_THIN_TARGET_BUSY: { kind: 'already-exists', meaning: 'The target path or holder already holds another volume or a foreign mount.' },
  CVMFS_THIN_VOLUME_EXISTS: { kind: 'already-exists', meaning: 'A volume of that name exists with other options.' },
  CVMFS_THIN_VOLUME_IN_USE: { kind: 'already-exists', meaning: 'The volume cannot be redefined while containers use it.' },
  CVMFS_THIN_NO_SUCH_VOLUME: {
    kind: 'not-found',
    meaning: 'Docker asked for a volume that was never created (nor is mounted or in known-volumes); dockerd then calls Create with the options.',
  },
  CVMFS_THIN_NOT_STAGED: { kind: 'failed-precondition', meaning: 'The staging path is not staged (NodeStageVolume must succeed first).' },
  CVMFS_THIN_CVMFS_UNAVAILABLE: { kind: 'unavailable', meaning: 'The CVMFS repository does not answer or is not a directory (automount or network stuck?).' },
  CVMFS_THIN_MOUNT_FAILED: { kind: 'unavailable', meaning: 'Mounting a CVMFS repository failed, or nothing got mounted.' },
  CVMFS_THIN_SHUTTING_DOWN: {
    kind: 'unavailable',
    meaning: 'The daemon (snapshotter, graph driver, volume manager) is shutting down; retry against its next start.',
  },
  CVMFS_THIN_STATE_UNWRITABLE: { kind: 'unavailable', meaning: 'The volume state file cannot be written; changes are refused until it can.' },
  CVMFS_THIN_CSI_MISSING_FIELD: { kind: 'invalid-argument', meaning: 'A required CSI request field is missing.' },
  CVMFS_THIN_CSI_BAD_FIELD: { kind: 'invalid-argument', meaning: 'A CSI request field is too long or holds a NUL byte.' },
  CVMFS_THIN_CSI_BAD_ATTRIBUTE: { kind: 'invalid-argument', meaning: 'A CSI volume attribute is unknown or has a bad value.' },
  CVMFS_THIN_CSI_BAD_CAPABILITY: {
    kind: ['failed-precondition', 'invalid-argument'],
    meaning:
      'The CSI volume capability is not supported: block access, a writer mode, mount flags (failed-precondition, as the spec says); or it lacks its access type or mode (invalid-argument).',
  },
  CVMFS_THIN_CSI_BAD_STAGING: { kind: 'failed-precondition', meaning: 'The CSI staging path holds something else or was staged for other attributes.' },
  CVMFS_THIN_CSI_VOLUME_NOT_FOUND: { kind: 'not-found', meaning: 'The CSI volume is not published or staged at the given path.' },

  // ------------------------------------------------------------ operations (config files the CLI edits)
  CVMFS_THIN_BAD_CONFIG: {
    kind: 'invalid-argument',
    meaning:
      "A configuration file cannot be read or is not valid: a daemon's settings file (not TOML, an unknown key, a value of the wrong type) or a file the set-up edits (syntax, unsupported version; it was not changed). The message names the file and the key.",
  },
  CVMFS_THIN_BAD_STATE: {
    kind: ['failed-precondition', 'internal'],
    meaning:
      "A state file (the snapshotter's or the volume manager's metadata journal, a set-up record) cannot be read, is not valid JSON or has an unknown format or schema (failed-precondition); or its records contradict each other, e.g. a parent chain that loops or breaks (internal). The message names the file or the record; restore it, or move the state directory away to start empty.",
  },
  CVMFS_THIN_EDIT_FAILED: { kind: 'internal', meaning: 'An edited configuration file would not be valid or exact; the file was not changed.' },
  CVMFS_THIN_MISSING_DEPENDENCY: { kind: 'internal', meaning: 'An optional npm package needed for this operation is not installed.' },
  CVMFS_THIN_NO_DOCKER: { kind: 'failed-precondition', meaning: 'The Docker version cannot be told (dockerd --version failed); pass it explicitly.' },
  CVMFS_THIN_UNSUPPORTED_DOCKER: {
    kind: 'failed-precondition',
    meaning: 'This Docker version does not support the requested mode (graph driver 20.10–27, containerd store 24+).',
  },
  CVMFS_THIN_NAME_CLASH: { kind: 'invalid-argument', meaning: 'Two plugins would get the same socket name.' },
  CVMFS_THIN_SYSTEMCTL_FAILED: { kind: 'failed-precondition', meaning: 'A systemctl call made by the set-up failed.' },
} as const satisfies Record<string, ErrorCodeInfo>;

/** Codes made from an errno name at run time: `CVMFS_THIN_IO_ENOSPC`, `CVMFS_THIN_IO_EACCES`, … */
export const IO_CODE_PREFIX = 'CVMFS_THIN_IO_';
export const IO_CODE_INFO: ErrorCodeInfo = {
  kind: 'internal',
  meaning:
    'An I/O error named by its errno: the converter (CVMFS_THIN_IO_EROFS…), or the snapshotter metadata journal on a full disk (CVMFS_THIN_IO_ENOSPC, answered as RESOURCE_EXHAUSTED).',
};

export type RegisteredErrorCode = keyof typeof ERROR_CODES;
export type IoErrorCode = `CVMFS_THIN_IO_${string}`;
/** Every code an error may carry. */
export type ErrorCode = RegisteredErrorCode | IoErrorCode;

/** The kinds of a registry entry as a union ('not-found' | 'invalid-argument' for a list). */
type KindsOfEntry<E> = E extends { readonly kind: infer K } ? (K extends readonly (infer X)[] ? X : K) : never;

/**
 * The codes an error of kind `K` may carry: the registered codes listed with
 * that kind (alone or in their list), and for 'internal' the errno family.
 * Distributes over a union, so `CodeOf<ErrorKind>` is every `ErrorCode`.
 */
export type CodeOf<K extends ErrorKind> = K extends ErrorKind
  ? | { [C in RegisteredErrorCode]: K extends KindsOfEntry<(typeof ERROR_CODES)[C]> ? C : never }[RegisteredErrorCode]
    | (K extends 'internal' ? IoErrorCode : never)
  : never;

/**
 * Names with the same prefix that are NOT error codes: environment variables
 * the programs read or set.
 */
export const ENVIRONMENT_NAMES = {
  CVMFS_THIN_REPOSITORY: 'Set for publishing hooks: the repository name.',
  CVMFS_THIN_REPOSITORY_DIR: 'Set for publishing hooks: the repository directory.',
  CVMFS_THIN_STEP: 'Set for publishing hooks: transaction, publish, abort or ingest.',
  CVMFS_THIN_BASE: "Set for the ingest hook: the layer's directory in the repository (.layers/<xx>/<digest>), as {base}.",
  CVMFS_THIN_OUTPUT_REGISTRY_PASS: "Read by wishlist: the thin-image registry's password (like DUCC_OUTPUT_REGISTRY_PASS).",
  CVMFS_THIN_FLEXVOLUME_CONFIG: 'Read by the FlexVolume driver: its configuration file.',
} as const;

/** Is `s` a code an error may carry? */
export function isErrorCode(s: string): s is ErrorCode {
  return Object.hasOwn(ERROR_CODES, s) || (s.startsWith(IO_CODE_PREFIX) && /^[A-Z0-9]+$/.test(s.slice(IO_CODE_PREFIX.length)));
}

/** The registry entry of a code (the errno family shares one). */
export function errorCodeInfo(code: ErrorCode): ErrorCodeInfo {
  return Object.hasOwn(ERROR_CODES, code) ? ERROR_CODES[code as RegisteredErrorCode] : IO_CODE_INFO;
}

/** The kinds a code may have, usual one first. */
export function kindsOf(code: ErrorCode): readonly ErrorKind[] {
  const k = errorCodeInfo(code).kind;
  return typeof k === 'string' ? [k] : k;
}

/**
 * `code` when the registry lists it with `kind`, else `fallback`: for a code
 * that arrives at run time (from a summary or across a worker boundary) and
 * must be given to a class of one kind.
 */
export function codeOfKind<K extends ErrorKind>(kind: K, code: ErrorCode, fallback: CodeOf<K>): CodeOf<K> {
  return kindsOf(code).includes(kind) ? (code as CodeOf<K>) : fallback;
}

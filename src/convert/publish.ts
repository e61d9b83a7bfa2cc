/**
 * Publishing hooks around writes to the repository (e.g. `cvmfs_server
 * transaction` / `publish` / `abort -f`): argv lists run without a shell,
 * serialised host-wide by a flock so two converters never publish at once.
 * Concurrent conversions of one process share one transaction (batching,
 * unlike DUCC's transaction per file). A failed transaction step writes
 * nothing; a failed write or publish runs the abort hook.
 */
import { accessSync, constants as fsConstants } from 'node:fs';
import { SERVER_CONF_DIR, xattrWarning } from '../core/cvmfs/server-conf.js';
import os from 'node:os';
import path from 'node:path';
import type { Logger } from 'pino';
import type { Host, StreamingResult } from '../core/host/host.js';
import { InvalidArgumentError, UnavailableError } from '../core/errors/errors.js';
import type { Readable } from 'node:stream';
import { isContained } from './errors.js';
import { acquireLock, type HeldLock } from '../core/state/lock.js';
import { splitCommand } from './util.js';

interface PublishHooks {
  transaction?: string[] | undefined;
  publish?: string[] | undefined;
  abort?: string[] | undefined;
  /**
   * Publishes one layer from a tar on its stdin, in a transaction of its own
   * (`cvmfs_server ingest`); `{base}` is the layer's directory in the repository.
   */
  ingest?: string[] | undefined;
}

/** DUCC's ingest of a layer, keeping the tar's owners (`-k`) and one catalog per layer. */
const CVMFS_SERVER_INGEST = ['cvmfs_server', 'ingest', '--catalog', '-k', '-t', '-', '-b', '{base}', '{repository}'];

interface PublisherOptions {
  hooks: PublishHooks;
  repository: string;
  repositoryDir: string;
  /** Default: `<tmpdir>/cvmfs-thin-<repository>.lock`. */
  lockFile?: string | undefined;
  log: Logger;
  lockTimeoutMs?: number | undefined;
  /** Runs the hooks and takes the lock. */
  host: Host;
}

/** `cvmfs_server transaction {repository}` etc. from CLI strings; `--cvmfs-server` fills all three (and the ingest with `--ingest`). */
export function hooksFromOptions(o: {
  transactionCmd?: string;
  publishCmd?: string;
  abortCmd?: string;
  ingestCmd?: string;
  cvmfsServer?: boolean;
  ingest?: boolean;
}): PublishHooks {
  const h: PublishHooks = {};
  if (o.cvmfsServer) {
    h.transaction = ['cvmfs_server', 'transaction', '{repository}'];
    h.publish = ['cvmfs_server', 'publish', '{repository}'];
    h.abort = ['cvmfs_server', 'abort', '-f', '{repository}'];
    if (o.ingest) h.ingest = CVMFS_SERVER_INGEST;
  }
  if (o.transactionCmd) h.transaction = splitCommand(o.transactionCmd, '--transaction-command');
  if (o.publishCmd) h.publish = splitCommand(o.publishCmd, '--publish-command');
  if (o.abortCmd) h.abort = splitCommand(o.abortCmd, '--abort-command');
  if (o.ingestCmd) h.ingest = splitCommand(o.ingestCmd, '--ingest-command');
  if (o.ingest && !h.ingest) throw new InvalidArgumentError('--ingest needs --cvmfs-server or --ingest-command', 'CVMFS_THIN_BAD_FLAG');
  return h;
}

/** What a Stratum-0's `server.conf` does to published layers, as warnings (core/cvmfs/server-conf.ts). */
export function serverConfWarnings(repository: string, o: { transaction: boolean }, confDir = SERVER_CONF_DIR): string[] {
  const w = o.transaction ? xattrWarning(repository, confDir) : null;
  return w ? [w] : [];
}

/** `/run/lock/cvmfs-thin-<repository>.lock` (shared by every service of the host, unlike a private /tmp), else in the temp dir. */
function defaultLockFile(repository: string): string {
  const dir = (() => {
    try {
      accessSync('/run/lock', fsConstants.W_OK);
      return '/run/lock';
    } catch {
      return os.tmpdir();
    }
  })();
  return path.join(dir, `cvmfs-thin-${repository}.lock`);
}

interface Transaction {
  closed: Promise<void>;
  resolve: () => void;
  reject: (e: unknown) => void;
  poisoned: boolean;
}

export class Publisher {
  private users = 0;
  private tx: Transaction | null = null;
  private lock: HeldLock | null = null;
  private chain: Promise<void> = Promise.resolve();
  /** Steps run, in order (for the summary and tests). */
  readonly steps: { step: string; ok: boolean }[] = [];

  constructor(private readonly o: PublisherOptions) {}

  /** The host the hooks run on (the podman store's lock of the same session goes through it too). */
  get host(): Host {
    return this.o.host;
  }

  get enabled(): boolean {
    const h = this.o.hooks;
    return Boolean(h.transaction || h.publish || h.abort);
  }

  /** Layers go through the ingest hook. */
  get ingests(): boolean {
    return Boolean(this.o.hooks.ingest);
  }

  private serial(fn: () => Promise<void>): Promise<void> {
    const next = this.chain.then(fn);
    this.chain = next.catch(() => undefined);
    return next;
  }

  private argv(cmd: string[], base?: string): string[] {
    return cmd.map((a) => {
      const v = a.replaceAll('{repository}', this.o.repository).replaceAll('{repository_dir}', this.o.repositoryDir);
      return base === undefined ? v : v.replaceAll('{base}', base);
    });
  }

  /**
   * Run a hook. With `input`, it is the hook's stdin; if the input fails, the
   * hook's whole process group is killed *before* its stdin closes (a tar
   * cut short must not be taken for a complete one) and the input's error is
   * thrown.
   */
  private async run(step: 'transaction' | 'publish' | 'abort' | 'ingest', cmd: string[], input?: { base: string; stream: Readable }): Promise<void> {
    const argv = this.argv(cmd, input?.base);
    this.o.log.info({ step, argv }, 'publishing hook');
    let r: StreamingResult;
    try {
      r = await this.o.host.execStreaming(argv[0]!, argv.slice(1), {
        env: {
          ...process.env,
          CVMFS_THIN_REPOSITORY: this.o.repository,
          CVMFS_THIN_REPOSITORY_DIR: this.o.repositoryDir,
          CVMFS_THIN_STEP: step,
          ...(input ? { CVMFS_THIN_BASE: input.base } : {}),
        },
        ...(input ? { input: input.stream } : {}),
      });
    } catch (e) {
      this.steps.push({ step, ok: false });
      throw new UnavailableError(`${step} hook ${JSON.stringify(argv.join(' '))}: ${(e as Error).message}`, 'CVMFS_THIN_HOOK_FAILED');
    }
    const ok = r.code === 0 && !('inputError' in r);
    this.steps.push({ step, ok });
    if (ok) return;
    if ('inputError' in r) throw r.inputError;
    throw new UnavailableError(
      `${step} hook ${JSON.stringify(argv.join(' '))} failed (${r.signal ? `signal ${r.signal}` : `exit status ${r.code}`})`,
      'CVMFS_THIN_HOOK_FAILED',
    );
  }

  /**
   * Publish one layer through the ingest hook, under the host-wide lock and
   * never inside our own transaction (an ingest opens and publishes its own).
   * If the layer's stream fails, the hook is killed and the abort hook runs.
   */
  async ingest(base: string, stream: Readable): Promise<void> {
    if (!this.o.hooks.ingest) throw new InvalidArgumentError('no ingest hook configured', 'CVMFS_THIN_BAD_FLAG');
    // another image's transaction of this process: wait for it (an ingest is never called from inside one)
    while (this.tx) await this.tx.closed.catch(() => undefined);
    const lockFile = this.o.lockFile ?? defaultLockFile(this.o.repository);
    const lock = await acquireLock(lockFile, {
      host: this.o.host,
      ...(this.o.lockTimeoutMs !== undefined ? { timeoutMs: this.o.lockTimeoutMs } : {}),
      onWait: () => this.o.log.warn({ lockFile }, 'another converter is publishing to this repository; waiting'),
    });
    try {
      await this.run('ingest', this.o.hooks.ingest, { base, stream });
    } catch (e) {
      if (this.o.hooks.abort) await this.run('abort', this.o.hooks.abort).catch((ae: unknown) => this.o.log.error({ err: ae }, 'abort hook failed too'));
      throw e;
    } finally {
      lock.release();
    }
  }

  private async openTx(): Promise<void> {
    const lockFile = this.o.lockFile ?? defaultLockFile(this.o.repository);
    this.lock = await acquireLock(lockFile, {
      host: this.o.host,
      ...(this.o.lockTimeoutMs !== undefined ? { timeoutMs: this.o.lockTimeoutMs } : {}),
      onWait: () => this.o.log.warn({ lockFile }, 'another converter is publishing to this repository; waiting'),
    });
    try {
      if (this.o.hooks.transaction) await this.run('transaction', this.o.hooks.transaction);
    } catch (e) {
      this.lock.release();
      this.lock = null;
      throw e;
    }
    let resolve!: () => void;
    let reject!: (e: unknown) => void;
    const closed = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    closed.catch(() => undefined);
    this.tx = { closed, resolve, reject, poisoned: false };
  }

  private async closeTx(tx: Transaction): Promise<void> {
    this.tx = null;
    try {
      if (tx.poisoned) {
        if (this.o.hooks.abort) await this.run('abort', this.o.hooks.abort);
        tx.reject(new UnavailableError('the transaction was aborted after a failed write; nothing of it was published', 'CVMFS_THIN_ABORTED'));
        return;
      }
      try {
        if (this.o.hooks.publish) await this.run('publish', this.o.hooks.publish);
        tx.resolve();
      } catch (e) {
        if (this.o.hooks.abort) {
          await this.run('abort', this.o.hooks.abort).catch((ae: unknown) => this.o.log.error({ err: ae }, 'abort hook failed too'));
        }
        tx.reject(e);
      }
    } catch (e) {
      tx.reject(e);
    } finally {
      this.lock?.release();
      this.lock = null;
    }
  }

  /**
   * Run `fn` inside a transaction: the first concurrent user opens it, the
   * last one closes it. Resolves only once the transaction is published (so
   * "converted" means "published"); rejects if the publish or abort path was
   * taken. Without hooks, just runs `fn`.
   */
  async session<T>(fn: () => Promise<T>): Promise<T> {
    if (!this.enabled) return fn();
    this.users++;
    let tx: Transaction;
    try {
      await this.serial(async () => {
        if (!this.tx) await this.openTx();
      });
      tx = this.tx!;
    } catch (e) {
      this.users--;
      throw e;
    }
    let result: T | undefined;
    let error: unknown;
    let failed = false;
    try {
      result = await fn();
    } catch (e) {
      failed = true;
      error = e;
      if (!isContained(e)) tx.poisoned = true;
    }
    this.users--;
    void this.serial(async () => {
      if (this.users === 0 && this.tx === tx) await this.closeTx(tx);
    });
    if (failed) throw error;
    await tx.closed;
    return result as T;
  }
}

/**
 * The real host's program runs (Host.exec, Host.execStreaming): no shell,
 * never a rejection for a non-zero exit (the caller reads the status).
 */
import { execFile, spawn } from 'node:child_process';
import type { ExecOptions, ExecResult, StreamingOptions, StreamingResult } from './host.js';

export function exec(file: string, args: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
  return new Promise((resolve) => {
    const child = execFile(
      file,
      [...args],
      { timeout: opts.timeoutMs ?? 0, env: opts.env ?? process.env, maxBuffer: 4 << 20, encoding: 'utf8' },
      (err, stdout, stderr) => {
        if (!err) return resolve({ code: 0, stdout, stderr });
        const e = err as NodeJS.ErrnoException & { code?: number | string; killed?: boolean };
        if (typeof e.code === 'number') return resolve({ code: e.code, stdout, stderr });
        // spawn failures (ENOENT, EACCES) and timeouts: no exit code
        const why = e.killed ? `killed after ${opts.timeoutMs} ms` : e.message;
        resolve({ code: 127, stdout, stderr: `${stderr}${stderr ? '\n' : ''}${file}: ${why}` });
      },
    );
    if (opts.input !== undefined) {
      child.stdin?.on('error', () => undefined); // EPIPE: the program did not read it, its status tells
      child.stdin?.end(opts.input);
    }
  });
}

export function execStreaming(file: string, args: readonly string[], opts: StreamingOptions = {}): Promise<StreamingResult> {
  const input = opts.input;
  return new Promise((resolve, reject) => {
    let inputError: unknown = undefined;
    let failed = false;
    // stdout of the program goes to our stderr: our stdout may carry --json
    const child = spawn(file, [...args], { stdio: [input ? 'pipe' : 'ignore', 2, 2], detached: input !== undefined, env: opts.env ?? process.env });
    if (input) {
      const stdin = child.stdin!;
      stdin.on('error', () => undefined); // EPIPE when the program exits early: its exit status tells
      input.on('error', (e) => {
        if (!failed) inputError = e;
        failed = true;
        // the whole process group, before stdin closes: a cut input must not be taken for a complete one
        try {
          if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
        } catch {
          /* already gone */
        }
        input.unpipe(stdin);
        stdin.destroy();
      });
      input.pipe(stdin);
    }
    child.on('error', reject);
    child.on('exit', (code, signal) => resolve(failed ? { code, signal, inputError } : { code, signal }));
  });
}

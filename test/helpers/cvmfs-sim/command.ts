/**
 * How tests and the converter's hooks run the simulator's CLI: this Node, with
 * tsx's loader by absolute path, so it works from any directory (a fresh clone
 * after `npm ci`), without npx and without a shell.
 */
import { createRequire } from 'node:module';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

export const SIM_CLI = path.join(import.meta.dirname, 'cli.ts');

const require = createRequire(import.meta.url);
/** tsx's ESM+CJS loader (its package's "." export). */
export const TSX_LOADER = pathToFileURL(require.resolve('tsx')).href;

/** argv running `cli.ts ...args`. */
export function simArgv(...args: string[]): string[] {
  return [process.execPath, '--import', TSX_LOADER, SIM_CLI, ...args];
}

/** Quote one word for the converter's shell-like command splitting (no expansion happens there). */
export function quoteWord(w: string): string {
  return /^[A-Za-z0-9_@%+=:,./{}-]+$/.test(w) ? w : `'${w.replace(/'/g, `'\\''`)}'`;
}

/** A hook command string, e.g. simCommand('publish', S). */
export function simCommand(...args: string[]): string {
  return simArgv(...args)
    .map(quoteWord)
    .join(' ');
}

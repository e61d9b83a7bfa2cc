#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import { Command } from 'commander';
import { ThinError } from '../core/errors.js';
import { snapshotterCommand } from './snapshotter.js';

const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };

export function buildCli(): Command {
  const program = new Command('cvmfs-thin')
    .description('Run container images straight from CernVM-FS: containerd snapshotter, Docker graph driver, image converter')
    .version(pkg.version, '-v, --version')
    .showHelpAfterError();
  program.addCommand(snapshotterCommand());
  return program;
}

export async function main(argv: string[]): Promise<void> {
  try {
    await buildCli().parseAsync(argv);
  } catch (e) {
    const msg = ThinError.is(e) ? e.message : e instanceof Error ? (e.stack ?? e.message) : String(e);
    process.stderr.write(`cvmfs-thin: ${msg}\n`);
    process.exitCode = ThinError.is(e) && e.kind === 'invalid-argument' ? 2 : 1;
  }
}

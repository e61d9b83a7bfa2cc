/**
 * Publishing hooks: transaction before writing, publish after, abort on a
 * failed write or publish; argv without a shell; two converters on one
 * repository never have overlapping transactions (host-wide flock).
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { needs, tempDir } from '../helpers/env.js';
import { json, runCli } from './cli.js';
import { buildLayer, writeLayout } from './images.js';

interface Summary {
  images: { status: string; error: { message: string; kind: string } | null }[];
  publish_steps: { step: string; ok: boolean }[];
}

describe.skipIf(needs({ binaries: ['tar', 'gzip'] }))('publishing hooks', () => {
  const work = tempDir('cvmfs-thin-publish-');
  const hook = path.join(work, 'hook.sh');
  const log = path.join(work, 'hooks.log');
  const failDir = path.join(work, 'fail');
  const lock = path.join(work, 'publish.lock');
  let layoutA: string;
  let layoutB: string;

  const hooks = (extra: string[] = []) => [
    '--transaction-command',
    `${hook} transaction {repository}`,
    '--publish-command',
    `${hook} publish {repository}`,
    '--abort-command',
    `${hook} abort {repository}`,
    '--lock-file',
    lock,
    ...extra,
  ];
  const logLines = () => (fs.existsSync(log) ? fs.readFileSync(log, 'utf8').trim().split('\n') : []);

  beforeAll(() => {
    fs.writeFileSync(
      hook,
      [
        '#!/bin/sh',
        `echo "$1 start $(date +%s%N) $$ $2 $CVMFS_THIN_REPOSITORY" >> ${log}`,
        'sleep 0.3',
        `if [ -e ${failDir}/$1 ]; then echo "$1 fail $(date +%s%N) $$" >> ${log}; exit 3; fi`,
        `echo "$1 end $(date +%s%N) $$ $3" >> ${log}`,
        '',
      ].join('\n'),
    );
    fs.chmodSync(hook, 0o755);
    fs.mkdirSync(failDir);
    const mk = (name: string, size: number) => {
      const st = path.join(work, `st-${name}`);
      fs.mkdirSync(path.join(st, 'data'), { recursive: true });
      fs.writeFileSync(path.join(st, 'data', name), Buffer.alloc(size, name));
      const lay = path.join(work, `layout-${name}`);
      writeLayout(lay, 'v1', [{ layers: [buildLayer(st, 'gzip', path.join(work, 'blobs'), name)] }]);
      return lay;
    };
    layoutA = mk('a', 3 << 20);
    layoutB = mk('b', 3 << 20);
  });

  it('runs transaction, then the writes, then publish; without a shell', async () => {
    fs.rmSync(log, { force: true });
    const repo = path.join(work, 'repo-ok');
    fs.mkdirSync(repo);
    const marker = path.join(work, 'shell-ran');
    const r = await runCli([
      'convert',
      `oci:${layoutA}:v1`,
      '--repository-dir',
      repo,
      '--repository',
      'test.cern.ch',
      '--no-thin',
      '--json',
      ...hooks(),
      '--publish-command',
      `${hook} publish {repository} "$(touch ${marker})"`,
    ]);
    expect(r.code, r.stderr).toBe(0);
    const s = json<Summary>(r);
    expect(s.publish_steps).toEqual([
      { step: 'transaction', ok: true },
      { step: 'publish', ok: true },
    ]);
    const lines = logLines();
    expect(lines.map((l) => l.split(' ').slice(0, 2).join(' '))).toEqual(['transaction start', 'transaction end', 'publish start', 'publish end']);
    expect(lines[0]).toMatch(/ test\.cern\.ch test\.cern\.ch$/);
    // the "$(touch …)" argument reached the hook literally: no shell ran it
    expect(lines[3]).toContain(`$(touch ${marker})`);
    expect(fs.existsSync(marker)).toBe(false);
    // the layer was written between transaction end and publish start
    const layerDir = fs.readdirSync(path.join(repo, '.layers')).find((n) => n.length === 2)!;
    const mtime = fs.statSync(path.join(repo, '.layers', layerDir)).mtimeMs * 1e6;
    expect(mtime).toBeGreaterThan(Number(lines[1]!.split(' ')[2]) - 5e6);
    expect(mtime).toBeLessThan(Number(lines[2]!.split(' ')[2]));
  });

  it('two converters on one repository never publish at once', async () => {
    fs.rmSync(log, { force: true });
    const repo = path.join(work, 'repo-two');
    fs.mkdirSync(repo);
    const [a, b] = await Promise.all([
      runCli(['convert', `oci:${layoutA}:v1`, '--repository-dir', repo, '--no-thin', ...hooks()]),
      runCli(['convert', `oci:${layoutB}:v1`, '--repository-dir', repo, '--no-thin', ...hooks()]),
    ]);
    expect(a.code, a.stderr).toBe(0);
    expect(b.code, b.stderr).toBe(0);
    const steps = logLines().map((l) => l.split(' ')[0] + ' ' + l.split(' ')[1]);
    expect(steps).toEqual([
      'transaction start',
      'transaction end',
      'publish start',
      'publish end',
      'transaction start',
      'transaction end',
      'publish start',
      'publish end',
    ]);
  });

  it('a failing transaction step writes nothing', async () => {
    fs.rmSync(log, { force: true });
    fs.writeFileSync(path.join(failDir, 'transaction'), '');
    try {
      const repo = path.join(work, 'repo-tx-fail');
      fs.mkdirSync(repo);
      const r = await runCli(['convert', `oci:${layoutA}:v1`, '--repository-dir', repo, '--no-thin', '--json', ...hooks()]);
      expect(r.code).toBe(1);
      expect(json<Summary>(r).images[0]!.error?.message).toMatch(/transaction hook ".*hook\.sh transaction unpacked\.cern\.ch" failed \(exit status 3\)/);
      expect(fs.readdirSync(repo)).toEqual([]);
      expect(logLines().map((l) => l.split(' ').slice(0, 2).join(' '))).toEqual(['transaction start', 'transaction fail']);
    } finally {
      fs.rmSync(path.join(failDir, 'transaction'));
    }
  });

  it('a failing publish step runs abort', async () => {
    fs.rmSync(log, { force: true });
    fs.writeFileSync(path.join(failDir, 'publish'), '');
    try {
      const repo = path.join(work, 'repo-pub-fail');
      fs.mkdirSync(repo);
      const r = await runCli(['convert', `oci:${layoutA}:v1`, '--repository-dir', repo, '--no-thin', '--json', ...hooks()]);
      expect(r.code).toBe(1);
      expect(json<Summary>(r).images[0]!.error?.message).toMatch(/publish hook .* failed/);
      expect(logLines().map((l) => l.split(' ').slice(0, 2).join(' '))).toEqual([
        'transaction start',
        'transaction end',
        'publish start',
        'publish fail',
        'abort start',
        'abort end',
      ]);
    } finally {
      fs.rmSync(path.join(failDir, 'publish'));
    }
  });

  it.skipIf(needs({ root: 'a read-only bind mount', binaries: ['mount'] }))('a failed write (read-only file system) aborts the transaction', async () => {
    fs.rmSync(log, { force: true });
    const repo = path.join(work, 'repo-ro');
    fs.mkdirSync(repo);
    execFileSync('mount', ['--bind', repo, repo]);
    try {
      execFileSync('mount', ['-o', 'remount,ro,bind', repo]);
      const r = await runCli(['convert', `oci:${layoutA}:v1`, '--repository-dir', repo, '--no-thin', '--json', ...hooks()]);
      expect(r.code).toBe(1);
      const s = json<Summary>(r);
      expect(s.images[0]!.error?.message).toMatch(/repo-ro is not writable \(EROFS\)/);
      expect(logLines().map((l) => l.split(' ').slice(0, 2).join(' '))).toEqual(['transaction start', 'transaction end', 'abort start', 'abort end']);
    } finally {
      execFileSync('umount', [repo]);
    }
  });
});

/**
 * User experience: per-layer progress on a terminal (a pty made by
 * `script`), nothing but the result in pipes, a --json summary, usage errors
 * with exit status 2.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { CLI, needs, tempDir } from '../helpers/env.js';
import { json, runCli } from './cli.js';
import { buildLayer, writeLayout } from './images.js';

describe.skipIf(needs({ binaries: ['tar', 'gzip', 'script'] }))('progress, quiet pipes, usage errors', () => {
  const work = tempDir('cvmfs-thin-ux-');
  let layout: string;
  beforeAll(() => {
    const layers = [0, 1].map((i) => {
      const st = path.join(work, `st${i}`);
      fs.mkdirSync(path.join(st, 'data'), { recursive: true });
      for (let f = 0; f < 50; f++) fs.writeFileSync(path.join(st, 'data', `f${i}-${f}`), Buffer.alloc(100_000, f));
      return buildLayer(st, 'gzip', path.join(work, 'blobs'), `l${i}`);
    });
    layout = path.join(work, 'layout');
    writeLayout(layout, 'v1', [{ layers }]);
  });

  it('shows per-layer progress on a terminal', async () => {
    const repo = path.join(work, 'repo-tty');
    fs.mkdirSync(repo);
    const cmd = [process.execPath, CLI, 'convert', `oci:${layout}:v1`, '--repository-dir', repo, '--no-thin'].map((a) => `'${a}'`).join(' ');
    const out = await new Promise<string>((resolve, reject) =>
      execFile('script', ['-qec', cmd, '/dev/null'], { env: { ...process.env, COLUMNS: '120' } }, (e, stdout) => (e ? reject(e) : resolve(stdout))),
    );
    // one finished line per layer: short digest, (i/n), status, size and entries
    expect(out).toMatch(/sha256:[0-9a-f]{12} \(1\/2\)\s+unpacked\s+[\d.]+ [KM]iB, \d+ entries/);
    expect(out).toMatch(/sha256:[0-9a-f]{12} \(2\/2\)\s+unpacked/);
    expect(out).toMatch(/converted\s+oci:.*: 2 layers \(2 unpacked, 0 present/);
  });

  it('is quiet in pipes: the result on stdout, nothing on stderr', async () => {
    const repo = path.join(work, 'repo-pipe');
    fs.mkdirSync(repo);
    const r = await runCli(['convert', `oci:${layout}:v1`, '--repository-dir', repo, '--no-thin']);
    expect(r.code).toBe(0);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim().split('\n')).toHaveLength(1);
    expect(r.stdout).toMatch(/^converted +oci:/);
  });

  it('--json prints one machine-readable document', async () => {
    const repo = path.join(work, 'repo-json');
    fs.mkdirSync(repo);
    const r = await runCli(['convert', `oci:${layout}:v1`, '--repository-dir', repo, '--no-thin', '--json']);
    const s = json<{ images: { status: string; layers: unknown[] }[]; converted: number; failed: number; seconds: number }>(r);
    expect(s).toMatchObject({ converted: 1, failed: 0 });
    expect(s.images[0]!.layers).toHaveLength(2);
    expect(r.stderr).toBe('');
  });

  it('usage errors exit with 2 and say what is wrong', async () => {
    const cases: [string[], RegExp][] = [
      [['convert', 'busybox', '--repository-dir', work], /image "busybox": no transport/],
      [['convert', 'docker://Bad/Name', '--repository-dir', work], /lower case/],
      [['convert', `oci:${layout}:v1`], /--repository-dir is required/],
      [['convert', `oci:${layout}:v1`, '--repository-dir', work, '--platform', 'amd64'], /--platform "amd64": want OS\/ARCH/],
      [['convert', `oci:${layout}:v1`, '--repository-dir', work, '--creds', 'nopass'], /--creds: want USERNAME:PASSWORD/],
      [['convert', `oci:${layout}:v1`, '--repository-dir', work, '--repository', 'Not_A_Repo'], /--repository "Not_A_Repo" is not a CVMFS repository name/],
      [['convert', `oci:${layout}:v1`, '--repository-dir', work, '--publish-command', "cvmfs_server 'publish"], /--publish-command: unbalanced single quote/],
    ];
    for (const [args, re] of cases) {
      const r = await runCli(args);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr).toMatch(re);
    }
    const missing = await runCli(['convert', `oci:${path.join(work, 'nope')}:v1`, '--repository-dir', work, '--no-thin']);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/not an OCI image layout \(no index\.json\)/);
    const notDir = await runCli(['convert', `oci:${layout}:v1`, '--repository-dir', path.join(work, 'missing-dir'), '--no-thin']);
    expect(notDir.code).toBe(1);
    expect(notDir.stderr).toMatch(/missing-dir does not exist/);
  });

  it('writes its figures for the textfile collector on request (converted, then present on a rerun)', async () => {
    const repo = path.join(work, 'repo-metrics');
    fs.mkdirSync(repo);
    const prom = path.join(work, 'textfile', 'cvmfs-thin.prom');
    const r1 = await runCli(['convert', `oci:${layout}:v1`, '--repository-dir', repo, '--no-thin', '-q', '--metrics-textfile', prom]);
    expect(r1.code).toBe(0);
    const t1 = fs.readFileSync(prom, 'utf8');
    expect(t1).toContain('cvmfs_thin_convert_layers_total{result="converted"} 2');
    expect(t1).toContain('cvmfs_thin_convert_images_total{result="ok"} 1');
    expect(Number(/cvmfs_thin_convert_bytes_total (\d+)/.exec(t1)?.[1])).toBeGreaterThan(0);
    const r2 = await runCli(['convert', `oci:${layout}:v1`, '--repository-dir', repo, '--no-thin', '-q', '--force', '--metrics-textfile', prom]);
    expect(r2.code).toBe(0);
    const t2 = fs.readFileSync(prom, 'utf8');
    expect(t2).toContain('cvmfs_thin_convert_layers_total{result="present"} 2');
    expect(t2).toContain('cvmfs_thin_convert_layers_total{result="converted"} 0');
    const r3 = await runCli(['convert', `oci:${layout}:v1`, '--repository-dir', repo, '--no-thin', '-q', '--metrics-textfile', 'relative.prom']);
    expect(r3.code).toBe(2);
    expect(r3.stderr).toMatch(/--metrics-textfile relative.prom must be an absolute path/);
  });
});

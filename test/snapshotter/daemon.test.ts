/**
 * `cvmfs-thin snapshotter` as a process: the gRPC edge (exact status codes for
 * hostile requests), configuration, socket handling, non-destructive stop,
 * crash consistency. Needs root (the snapshotter chowns and the suite mounts).
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { status } from '@grpc/grpc-js';
import { afterAll, describe, expect, it } from 'vitest';
import { addLayer, thinJson } from '../helpers/cvmfs-tree.js';
import { type Daemon, runCli, startDaemon } from '../helpers/daemon.js';
import { needs, tempDir } from '../helpers/env.js';
import { grpcCode } from '../helpers/grpc.js';
import { mountAll, unmountAll } from '../helpers/mount.js';

describe.skipIf(needs({ root: true }))('snapshotter daemon', () => {
  const base = tempDir('snd-');
  const repo = path.join(base, 'unpacked');
  mkdirSync(repo, { recursive: true });
  const daemons: Daemon[] = [];
  afterAll(async () => {
    for (const d of daemons) await d.stop('SIGKILL');
  });
  const start = async (name: string, extra: string[] = []) => {
    const d = await startDaemon(
      ['--root', path.join(base, name), '--absolute-mountpoint', repo, '--log-level', 'debug', ...extra],
      path.join(base, `${name}.sock`),
    );
    daemons.push(d);
    return d;
  };

  it('answers hostile and wrong requests with the codes containerd expects, and stays up', async () => {
    const { client: c } = await start('codes');
    expect(await grpcCode(c.stat('nope'))).toBe(status.NOT_FOUND);
    expect(await grpcCode(c.mounts('nope'))).toBe(status.NOT_FOUND);
    expect(await grpcCode(c.usage('nope'))).toBe(status.NOT_FOUND);
    expect(await grpcCode(c.remove('nope'))).toBe(status.NOT_FOUND);
    expect(await grpcCode(c.commit('x', 'nope'))).toBe(status.NOT_FOUND);
    expect(await grpcCode(c.update({ name: 'nope', labels: { a: 'b' } }))).toBe(status.NOT_FOUND);
    expect(await grpcCode(c.prepare(''))).toBe(status.INVALID_ARGUMENT);
    expect(await grpcCode(c.prepare('p', 'missing-parent'))).toBe(status.NOT_FOUND);
    await c.prepare('a');
    expect(await grpcCode(c.prepare('a'))).toBe(status.ALREADY_EXISTS);
    expect(await grpcCode(c.view('a'))).toBe(status.ALREADY_EXISTS);
    expect(await grpcCode(c.prepare('child', 'a'))).toBe(status.INVALID_ARGUMENT);
    expect(await grpcCode(c.commit('', 'a'))).toBe(status.INVALID_ARGUMENT);
    expect(await grpcCode(c.commit('c', 'a', {}, 'some-other-parent'))).toBe(status.FAILED_PRECONDITION);
    expect(await grpcCode(c.prepare('big', '', { k: 'x'.repeat(4096) }))).toBe(status.INVALID_ARGUMENT);
    await c.commit('c', 'a');
    expect(await grpcCode(c.commit('c2', 'c'))).toBe(status.FAILED_PRECONDITION);
    expect(await grpcCode(c.mounts('c'))).toBe(status.FAILED_PRECONDITION);
    expect(await grpcCode(c.update(undefined))).toBe(status.INVALID_ARGUMENT);
    expect(await grpcCode(c.update({ name: 'c', labels: {} }, ['parent']))).toBe(status.INVALID_ARGUMENT);
    expect(await grpcCode(c.update({ name: 'c', labels: {} }, ['labels', 'kind']))).toBe(status.INVALID_ARGUMENT);
    expect(await grpcCode(c.update({ name: 'c', labels: { k: 'v'.repeat(5000) } }, ['labels.k']))).toBe(status.INVALID_ARGUMENT);
    for (const f of ['kind==', 'name==a,', '"x', 'labels."a==1', 'a b']) expect(await grpcCode(c.list(f)), f).toBe(status.INVALID_ARGUMENT);
    await c.view('v', 'c');
    expect(await grpcCode(c.remove('c'))).toBe(status.FAILED_PRECONDITION);
    // a thin image with a bad manifest: InvalidArgument naming the field; the active snapshot stays
    const ms = await c.prepare('thin-x');
    const t = path.join(base, 'mnt-thin');
    mkdirSync(t, { recursive: true });
    mountAll(ms as never, t);
    writeFileSync(path.join(t, 'thin.json'), '{"version":"1.0","layers":[{"digest":"zz"}]}');
    unmountAll(t);
    const err = await c.commit('thin', 'thin-x').catch((e: Error & { code: number }) => e);
    expect((err as { code: number }).code).toBe(status.INVALID_ARGUMENT);
    expect((err as Error).message).toContain('layers[0].digest');
    expect((await c.stat('thin-x')).kind).toBe(2);
    expect((await c.list()).map((i) => i.name)).toEqual(['c', 'thin-x', 'v']);
  });

  it('works with a containerd-cvmfs-grpc config file unchanged, refuses unknown keys clearly', async () => {
    const cfg = path.join(base, 'old.toml');
    writeFileSync(cfg, `repository = "unpacked.cern.ch"\nabsolute-mountpoint = "${repo}"\n`);
    const d = await startDaemon(['--root', path.join(base, 'cfg'), '--config', cfg], path.join(base, 'cfg.sock'));
    daemons.push(d);
    expect(d.output()).toContain(`"mountpoint":"${repo}"`);
    // the example config shipped for systemd parses too
    const shipped = path.resolve(import.meta.dirname, '../../packaging/systemd/config.toml');
    const d2 = await startDaemon(['--root', path.join(base, 'cfg2'), '--config', shipped, '--absolute-mountpoint', repo], path.join(base, 'cfg2.sock'));
    daemons.push(d2);
    expect(d2.output()).toContain('"repository":"unpacked.cern.ch"');
    const bad = path.join(base, 'bad.toml');
    writeFileSync(bad, 'repository = "unpacked.cern.ch"\nabsolute_mountpoint = "/x"\n');
    const r = await runCli(['snapshotter', '--root', path.join(base, 'bad'), '--address', path.join(base, 'bad.sock'), '--config', bad]);
    expect(r.code).toBe(2);
    expect(r.out).toMatch(/unknown key\(s\) "absolute_mountpoint"/);
    writeFileSync(bad, 'repository = "../etc"\n');
    const r2 = await runCli(['snapshotter', '--root', path.join(base, 'bad'), '--address', path.join(base, 'bad.sock'), '--config', bad]);
    expect(r2.code).toBe(2);
    expect(r2.out).toMatch(/repository/);
    // a timeout of 0 is the user's error: exit 2, with its code
    const r3 = await runCli(['snapshotter', '--root', path.join(base, 'bad'), '--address', path.join(base, 'bad.sock'), '--cvmfs-timeout', '0']);
    expect(r3.code).toBe(2);
    expect(r3.out).toMatch(/--cvmfs-timeout must be at least 1 second \(CVMFS_THIN_BAD_FLAG\)/);
  });

  it('replaces a stale socket, refuses a live one and a non-socket file', async () => {
    const sock = path.join(base, 'stale.sock');
    // a process that binds the socket and dies without cleaning up
    const p = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(sock)}, () => process.kill(process.pid, 'SIGKILL'))`]);
    await new Promise((r) => p.once('exit', r));
    expect(existsSync(sock)).toBe(true);
    const d = await startDaemon(['--root', path.join(base, 'stale')], sock);
    daemons.push(d);
    await d.client.prepare('ok');
    const r = await runCli(['snapshotter', '--root', path.join(base, 'stale2'), '--address', sock]);
    expect(r.code).not.toBe(0);
    expect(r.out).toMatch(/already serving/);
    const file = path.join(base, 'notasocket');
    writeFileSync(file, 'keep me');
    const r2 = await runCli(['snapshotter', '--root', path.join(base, 'nas'), '--address', file]);
    expect(r2.out).toMatch(/not a socket/);
    expect(existsSync(file)).toBe(true);
  });

  it('SIGTERM and SIGINT stop without deleting or unmounting anything; a restart serves the same snapshots', async () => {
    const layer = addLayer(repo, 'sig', { 'hello.txt': 'from cvmfs' }, { converter: true });
    let d = await start('sig');
    const ms = await d.client.prepare('x');
    const t = path.join(base, 'mnt-sig');
    mkdirSync(t, { recursive: true });
    mountAll(ms as never, t);
    writeFileSync(path.join(t, 'thin.json'), thinJson('unpacked.cern.ch', [layer]));
    unmountAll(t);
    await d.client.commit('thin', 'x');
    const cms = await d.client.prepare('ctr', 'thin');
    mountAll(cms as never, t); // a "running container"
    try {
      writeFileSync(path.join(t, 'written'), 'by container');
      const dirsBefore = readdirSync(path.join(base, 'sig', 'snapshots')).sort();
      expect(await d.stop('SIGTERM')).toBe(0);
      expect(existsSync(path.join(base, 'sig.sock'))).toBe(false);
      expect(readdirSync(path.join(base, 'sig', 'snapshots')).sort()).toEqual(dirsBefore);
      // the container keeps working while the snapshotter is down
      expect(execFileSync('cat', [path.join(t, 'hello.txt')]).toString()).toBe('from cvmfs');
      writeFileSync(path.join(t, 'written2'), 'still');
      d = await start('sig');
      expect((await d.client.list()).map((i) => i.name)).toEqual(['ctr', 'thin']);
      expect(await d.stop('SIGINT')).toBe(0);
      d = await start('sig');
      const ms2 = await d.client.prepare('ctr2', 'thin'); // a new container starts
      const t2 = path.join(base, 'mnt-sig2');
      mkdirSync(t2, { recursive: true });
      mountAll(ms2 as never, t2);
      expect(execFileSync('cat', [path.join(t2, 'hello.txt')]).toString()).toBe('from cvmfs');
      unmountAll(t2);
    } finally {
      unmountAll(t);
    }
  });

  it('survives kill -9 during concurrent writes: consistent metadata, orphans removed by Cleanup only', async () => {
    let d = await start('crash');
    const c = d.client;
    await c.prepare('base-x');
    await c.commit('base', 'base-x');
    let stop = false;
    const workers = Array.from({ length: 8 }, async (_, w) => {
      for (let i = 0; !stop; i++) {
        try {
          await c.prepare(`w${w}-${i}`, 'base');
          await c.commit(`w${w}-${i}-c`, `w${w}-${i}`);
        } catch {
          return;
        }
      }
    });
    await sleep(700);
    d.proc.kill('SIGKILL');
    stop = true;
    await Promise.all(workers);
    await d.stop();
    d = await start('crash');
    const infos = await d.client.list();
    expect(infos.length).toBeGreaterThan(2);
    // every recorded snapshot works: actives mount, committed ones are parents
    for (const i of infos.filter((x) => x.kind === 2)) expect((await d.client.mounts(i.name)).length).toBe(1);
    for (const i of infos.filter((x) => x.kind === 3).slice(0, 5)) await d.client.view(`${i.name}-view`, i.name);
    await d.client.cleanup();
    const recorded = (await d.client.list()).length;
    const dirs = readdirSync(path.join(base, 'crash', 'snapshots')).length;
    expect(dirs).toBe(recorded); // one data directory per snapshot, nothing else
  });
});

/**
 * A minimal base image for building the repository's Dockerfile without Docker
 * Hub: this machine's Node (binary + npm) and shared libraries, busybox-static
 * for the shell and the tools the image needs (sh, env, tar, gzip, unshare,
 * nsenter), imported with `docker import`. A few seconds, no network.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, cpSync, existsSync, mkdirSync, realpathSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';

/** The shared libraries a binary loads (ldd), as absolute real paths, plus the names it asks for. */
function sharedLibs(binary: string): { name: string; real: string }[] {
  const out = execFileSync('ldd', [binary], { encoding: 'utf8' });
  const libs: { name: string; real: string }[] = [];
  for (const line of out.split('\n')) {
    const m = /^\s*(\S+)\s+=>\s+(\/\S+)/.exec(line) ?? /^\s*(\/\S+)\s+\(/.exec(line);
    if (!m) continue;
    const p = m[2] ?? m[1]!;
    libs.push({ name: p, real: realpathSync(p) });
  }
  return libs;
}

/** Fill `root` with the base's file system. */
export function makeNodeRootfs(root: string, node = process.execPath): void {
  const put = (dest: string, src: string, mode?: number) => {
    const d = path.join(root, dest);
    mkdirSync(path.dirname(d), { recursive: true });
    copyFileSync(src, d);
    if (mode !== undefined) chmodSync(d, mode);
  };
  for (const d of ['bin', 'sbin', 'usr/bin', 'usr/sbin', 'usr/local/bin', 'etc', 'root', 'tmp', 'var/tmp', 'proc', 'sys', 'dev', 'run'])
    mkdirSync(path.join(root, d), { recursive: true });
  chmodSync(path.join(root, 'tmp'), 0o1777);
  const nodeReal = realpathSync(node);
  put('usr/bin/node', nodeReal, 0o755);
  for (const l of sharedLibs(nodeReal)) put(l.name, l.real);
  // npm, next to node as its installers put it
  const npmCli = realpathSync(execFileSync('sh', ['-c', 'command -v npm'], { encoding: 'utf8' }).trim());
  const npmDir = path.resolve(path.dirname(npmCli), '..');
  cpSync(npmDir, path.join(root, 'usr/lib/node_modules/npm'), { recursive: true, dereference: true });
  symlinkSync('../lib/node_modules/npm/bin/npm-cli.js', path.join(root, 'usr/bin/npm'));
  symlinkSync('../lib/node_modules/npm/bin/npx-cli.js', path.join(root, 'usr/bin/npx'));
  // busybox-static and its applets (sh, env, tar, gzip, unshare, nsenter, …)
  put('bin/busybox', realpathSync('/bin/busybox'), 0o755);
  for (const a of execFileSync('/bin/busybox', ['--list-full'], { encoding: 'utf8' }).split('\n').filter(Boolean)) {
    const p = path.join(root, a);
    if (existsSync(p) || a === 'bin/busybox') continue;
    mkdirSync(path.dirname(p), { recursive: true });
    symlinkSync('/bin/busybox', p);
  }
  if (existsSync('/etc/ssl/certs/ca-certificates.crt')) put('etc/ssl/certs/ca-certificates.crt', '/etc/ssl/certs/ca-certificates.crt');
  writeFileSync(path.join(root, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n');
  writeFileSync(path.join(root, 'etc/group'), 'root:x:0:\nnogroup:x:65534:\n');
}

/** The base as a tar stream for `docker import - TAG` (ENV PATH must be set with --change). */
export function nodeBaseTar(staging: string): Buffer {
  makeNodeRootfs(staging);
  return execFileSync('tar', ['-C', staging, '--numeric-owner', '--owner=0', '--group=0', '-c', '.'], { maxBuffer: 1 << 30 });
}

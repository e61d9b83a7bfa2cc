/**
 * `cvmfs-thin doctor`, the CVMFS client part: CVMFS mounts that answer
 * ENOTCONN (a dead client) or nothing (a stalled one), running containers
 * whose overlay has a lower layer on a dead CVMFS mount, and — where a real
 * client is installed — its effective configuration for the repositories in
 * use (`cvmfs_config showconfig`) and what the running client says
 * (`cvmfs_talk`, read-only questions). Every question to a CVMFS mount goes
 * through the probe (a helper process, with a deadline: a stalled client
 * cannot hang the doctor); programs run through the host seam, found on
 * `env.PATH`, so tests put fake ones there.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { REPOSITORY_NAME } from '../core/cvmfs/location.js';
import type { Host, MountInfo } from '../core/host/host.js';
import { brokenOverlays, cvmfsMountState, overlaysOf } from '../core/stack/mount-health.js';
import type { CvmfsProbe } from '../core/host/probe.js';
import type { Check } from './doctor-check.js';

interface CvmfsDoctorOptions {
  host: Host;
  probe: CvmfsProbe;
  cvmfsRoot: string;
  /** The repositories in use (the layer repository first). */
  repositories: string[];
  /** State directories whose `l/` links containers' overlays use (snapshotter root, graph driver home). */
  stateRoots: string[];
  timeoutMs: number;
  /** The client's programs (default: cvmfs_config and cvmfs_talk on env.PATH). */
  cvmfsConfig?: string | undefined;
  cvmfsTalk?: string | undefined;
  env?: NodeJS.ProcessEnv | undefined;
}

/**
 * Is this a CVMFS client mount (or a bind of one, or a stand-in under the
 * CVMFS root)? mount.cvmfs names its mounts `cvmfs2`; cvmfs2 run by hand
 * (a Stratum-0's spool mount) by the repository.
 */
export function isCvmfsMount(m: MountInfo, cvmfsRoot: string): boolean {
  if (!/^fuse(\.|$)/.test(m.fsType) && m.fsType !== 'cvmfs') return false;
  if (m.source === 'cvmfs2' || m.fsType === 'fuse.cvmfs2' || m.mountPoint === cvmfsRoot || m.mountPoint.startsWith(`${cvmfsRoot}/`)) return true;
  return REPOSITORY_NAME.test(m.source) && m.mountPoint.split('/').includes(m.source);
}

/** CVMFS mounts that do not answer, and containers on a dead CVMFS lower. */
export async function cvmfsMountChecks(o: CvmfsDoctorOptions): Promise<Check[]> {
  const out: Check[] = [];
  const mounts = o.host.mountinfo();
  const cvmfs = [...new Set(mounts.filter((m) => isCvmfsMount(m, o.cvmfsRoot)).map((m) => m.mountPoint))];
  const states = await Promise.all(cvmfs.map((mp) => cvmfsMountState(o.probe, mp)));
  for (const s of states) {
    if (s.state === 'not-connected') {
      out.push({
        id: 'cvmfs-mounts',
        status: 'fail',
        detail: s.detail,
        fix: `umount -l ${s.mount} and mount it again (autofs mounts it on the next access; or cvmfs_config reload); containers using it must be restarted`,
      });
    } else if (s.state === 'stalled') {
      out.push({
        id: 'cvmfs-mounts',
        status: 'fail',
        detail: s.detail,
        fix: 'check the servers and proxies the client uses (cvmfs_talk -i <repository> host info / proxy info, cvmfs_config stat -v)',
      });
    }
  }
  if (cvmfs.length > 0 && out.length === 0) out.push({ id: 'cvmfs-mounts', status: 'pass', detail: `${cvmfs.length} CVMFS mount(s) answer` });

  const overlays = o.stateRoots.flatMap((r) => overlaysOf(mounts, r));
  const broken = await brokenOverlays(o.probe, overlays);
  const dead = broken.filter((b) => b.reason === 'not-connected');
  const stalled = broken.filter((b) => b.reason === 'stalled');
  const list = (bs: typeof broken) => bs.map((b) => `${b.mountPoint}${b.upper ? ` (upper ${b.upper})` : ''}`).join(', ');
  if (dead.length > 0) {
    out.push({
      id: 'container-mounts',
      status: 'fail',
      detail: `${dead.length} running container(s) have a lower layer on a dead CVMFS mount (ENOTCONN; their files there are gone for good): ${list(dead)}`,
      fix: 'restart those containers (their overlay keeps the dead mount; a new container uses the CVMFS mount that is there now)',
    });
  }
  if (stalled.length > 0) {
    out.push({
      id: 'container-mounts',
      status: 'warn',
      detail: `${stalled.length} running container(s) have a lower layer on a CVMFS mount that does not answer: ${list(stalled)}`,
      fix: 'see cvmfs-mounts: once the client answers, they work again',
    });
  }
  if (broken.length === 0) {
    out.push(
      overlays.length > 0
        ? { id: 'container-mounts', status: 'pass', detail: `${overlays.length} running container(s) on CVMFS layers, all answering` }
        : { id: 'container-mounts', status: 'skip', detail: 'no running containers on CVMFS layers' },
    );
  }
  return out;
}

/** `cvmfs_config showconfig` output: `KEY=VALUE    # from FILE` lines (VALUE shell-quoted when needed). Pure. */
export function parseShowconfig(text: string): Map<string, { value: string; from?: string }> {
  const out = new Map<string, { value: string; from?: string }>();
  for (const line of text.split('\n')) {
    const m = /^(CVMFS_[A-Z0-9_]+)=(.*)$/.exec(line);
    if (!m) continue;
    let rest = m[2]!;
    let value = '';
    if (rest.startsWith("'")) {
      // CVMFS quotes with '…' and escapes ' as \'
      let i = 1;
      for (; i < rest.length; i++) {
        if (rest[i] === '\\' && rest[i + 1] === "'") {
          value += "'";
          i++;
        } else if (rest[i] === "'") break;
        else value += rest[i];
      }
      rest = rest.slice(i + 1);
    } else {
      const sp = /^(\S*)(.*)$/.exec(rest)!;
      value = sp[1]!;
      rest = sp[2]!;
    }
    const from = /^\s*#\s*from\s+(.*?)\s*$/.exec(rest)?.[1];
    out.set(m[1]!, from === undefined ? { value } : { value, from });
  }
  return out;
}

const isOn = (v: string | undefined) => v !== undefined && /^(yes|on|1|true)$/i.test(v);
const isOff = (v: string | undefined) => v !== undefined && /^(no|off|0|false)$/i.test(v);

/** What a repository's configuration means for images run from it. Pure. */
export function configChecks(repo: string, cfg: Map<string, { value: string; from?: string }>): Check[] {
  const get = (k: string) => cfg.get(k)?.value;
  const from = (k: string) => (cfg.get(k)?.from ? ` (from ${cfg.get(k)!.from})` : '');
  const out: Check[] = [];
  const local = `/etc/cvmfs/config.d/${repo}.local or /etc/cvmfs/default.local`;
  const server = get('CVMFS_SERVER_URL') ?? '';
  const proxy = get('CVMFS_HTTP_PROXY') ?? '';
  const quota = get('CVMFS_QUOTA_LIMIT');
  out.push({
    id: 'cvmfs-config',
    status: server ? 'pass' : 'fail',
    detail: `${repo}: CVMFS_SERVER_URL=${server || '(empty)'}${from('CVMFS_SERVER_URL')}; CVMFS_HTTP_PROXY=${proxy || '(empty)'}${from('CVMFS_HTTP_PROXY')}; CVMFS_QUOTA_LIMIT=${quota ?? '(unset)'}${quota && quota !== '-1' ? ' MB' : ''}${from('CVMFS_QUOTA_LIMIT')}`,
    ...(server
      ? {}
      : { fix: `the client has no server for ${repo}: install its domain configuration (cvmfs-config-default) or set CVMFS_SERVER_URL in ${local}` }),
  });
  if (isOn(get('CVMFS_CLAIM_OWNERSHIP'))) {
    out.push({
      id: 'cvmfs-config',
      status: 'warn',
      detail: `${repo}: CVMFS_CLAIM_OWNERSHIP=${get('CVMFS_CLAIM_OWNERSHIP')}${from('CVMFS_CLAIM_OWNERSHIP')}: every file shows as owned by the user running cvmfs2, so the owners in images are lost (a file of uid 1000 shows as root or cvmfs)`,
      fix: `CVMFS_CLAIM_OWNERSHIP=no in ${local}, then cvmfs_config reload ${repo}`,
    });
  }
  const vis = get('CVMFS_MAGIC_XATTRS_VISIBILITY');
  if (isOff(get('CVMFS_HIDE_MAGIC_XATTRS')) || vis?.toLowerCase() === 'always') {
    out.push({
      id: 'cvmfs-config',
      status: 'warn',
      detail: `${repo}: ${vis ? `CVMFS_MAGIC_XATTRS_VISIBILITY=${vis}` : `CVMFS_HIDE_MAGIC_XATTRS=${get('CVMFS_HIDE_MAGIC_XATTRS')}`}: every file lists CVMFS's magic attributes (user.pid, user.hash, …), and overlay copies them into a container's layer with each file it copies up (docker commit/diff and images built on top carry them)`,
      fix: `CVMFS_HIDE_MAGIC_XATTRS=yes (or CVMFS_MAGIC_XATTRS_VISIBILITY=rootonly) in ${local}`,
    });
  }
  if (!proxy) {
    out.push({
      id: 'cvmfs-config',
      status: 'warn',
      detail: `${repo}: CVMFS_HTTP_PROXY is not set: the client does not mount ("failed to discover HTTP proxy servers") unless proxy auto-discovery works (CVMFS_CLIENT_PROFILE=single)`,
      fix: `CVMFS_HTTP_PROXY="http://<your squid>:3128" (or DIRECT for a few nodes) in ${local}`,
    });
  }
  const mb = quota === undefined ? NaN : Number(quota);
  if (Number.isFinite(mb) && mb >= 0 && mb < 1024) {
    out.push({
      id: 'cvmfs-config',
      status: 'warn',
      detail: `${repo}: CVMFS_QUOTA_LIMIT=${quota} MB: a cache smaller than 1 GiB evicts the layers of running images and fetches them again (a file larger than the cache cannot be read at all)`,
      fix: `CVMFS_QUOTA_LIMIT=20000 (MB, more for many images) in /etc/cvmfs/default.local`,
    });
  }
  return out;
}

/** Where `cvmfs_talk -i <repo>` connects (cvmfs_talk.cc: DeterminePaths). */
export function talkSocket(repo: string, cfg: Map<string, { value: string }>): string | null {
  const get = (k: string) => cfg.get(k)?.value || undefined;
  const ws =
    get('CVMFS_WORKSPACE') ??
    get('CVMFS_CACHE_DIR') ??
    (get('CVMFS_CACHE_BASE') ? path.join(get('CVMFS_CACHE_BASE')!, isOn(get('CVMFS_SHARED_CACHE')) ? 'shared' : repo) : undefined);
  return ws ? path.join(ws, `cvmfs_io.${repo}`) : null;
}

/** The installed client's configuration and state for each repository in use (skipped without cvmfs_config). */
export async function cvmfsClientChecks(o: CvmfsDoctorOptions): Promise<Check[]> {
  const cfgCmd = o.cvmfsConfig ?? 'cvmfs_config';
  const talkCmd = o.cvmfsTalk ?? 'cvmfs_talk';
  const exec = (file: string, args: string[]) => o.host.exec(file, args, { timeoutMs: o.timeoutMs, ...(o.env ? { env: o.env } : {}) });
  // showconfig takes seconds (it runs cvmfs2 -o parse and a grep per key): the repositories at once, a few at a time
  const shown: Promise<Awaited<ReturnType<typeof exec>>>[] = [];
  for (const [i, repo] of o.repositories.entries())
    shown.push(i < 4 ? exec(cfgCmd, ['showconfig', repo]) : shown[i - 4]!.then(() => exec(cfgCmd, ['showconfig', repo])));
  const out: Check[] = [];
  for (const [i, repo] of o.repositories.entries()) {
    const r = await shown[i]!;
    if (r.code === 127 && /ENOENT|not found/.test(r.stderr))
      return [
        {
          id: 'cvmfs-client',
          status: 'skip',
          detail: `${cfgCmd} not found: no CVMFS client installed here (or not on PATH); its configuration is not checked`,
        },
      ];
    const cfg = parseShowconfig(r.stdout);
    if (r.code !== 0 || !cfg.has('CVMFS_REPOSITORY_NAME')) {
      out.push({
        id: 'cvmfs-config',
        status: 'warn',
        detail: `${cfgCmd} showconfig ${repo} failed (exit ${r.code}): ${(r.stderr || r.stdout).trim().split('\n')[0] ?? ''}`,
        fix: `run ${cfgCmd} showconfig ${repo} and cvmfs_config chksetup`,
      });
      continue;
    }
    out.push(...configChecks(repo, cfg));
    const sock = talkSocket(repo, cfg);
    if (!sock || !existsSync(sock)) {
      out.push({ id: 'cvmfs-client', status: 'skip', detail: `${repo}: no client running (no ${sock ?? 'cvmfs_talk socket'})` });
      continue;
    }
    // read-only questions (not "host probe": it reorders the client's servers)
    const answers: string[] = [];
    let failed: string | undefined;
    for (const q of ['revision', 'host info', 'proxy info']) {
      const t = await exec(talkCmd, ['-i', repo, ...q.split(' ')]);
      if (t.code !== 0) {
        failed = `${talkCmd} -i ${repo} ${q}: exit ${t.code}: ${(t.stderr || t.stdout).trim().split('\n')[0] ?? ''}`;
        break;
      }
      const lines = t.stdout.trim().split('\n');
      const active = lines.find((l) => /^Active (host|proxy)/.test(l.trim()));
      answers.push(q === 'revision' ? `revision ${lines[0]!.trim()}` : (active ?? lines[0] ?? '').trim());
    }
    out.push(
      failed
        ? {
            id: 'cvmfs-client',
            status: 'warn',
            detail: `${repo}: the client does not answer on ${sock}: ${failed}`,
            fix: `cvmfs_config probe ${repo}; if it hangs or fails, cvmfs_config reload ${repo}`,
          }
        : { id: 'cvmfs-client', status: 'pass', detail: `${repo}: ${answers.join('; ')}` },
    );
  }
  return out;
}

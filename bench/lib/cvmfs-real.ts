/**
 * A real CernVM-FS for the start benches (bench/thin-start.ts, bench/layer-count.ts): a
 * Stratum-0 made for the run (`cvmfs_server mkfs`, removed at cleanup), its storage served
 * over HTTP by this process on 127.0.0.1 (what Apache serves on a publisher), and a separate
 * `cvmfs2` client with its own config and cache (no proxy) mounted at a directory of the
 * work dir, to be given to the snapshotter as --absolute-mountpoint. Nothing of CVMFS is in
 * the project: the binaries must be installed on the machine.
 */
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { onCleanup, sh } from './start.js';

export const CVMFS_BINARIES = ['cvmfs_server', 'cvmfs2', 'cvmfs_talk'];
const SRV = '/srv/cvmfs';

/** Serve /srv/cvmfs over HTTP on 127.0.0.1 (each answer delayed by `latencyMs`); the port. */
export async function serveStratum0(latencyMs = 0): Promise<number> {
  const server = http.createServer((req, res) => {
    const p = path.normalize(path.join('/srv', decodeURIComponent((req.url ?? '/').split('?')[0]!)));
    const answer = () =>
      fs.stat(p, (err, st) => {
        if (!p.startsWith(`${SRV}/`) || err || !st.isFile()) return void res.writeHead(404).end();
        res.writeHead(200, { 'content-length': st.size });
        fs.createReadStream(p).pipe(res);
      });
    if (latencyMs > 0) setTimeout(answer, latencyMs);
    else answer();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  onCleanup(() => new Promise((r) => server.close(() => r(undefined))));
  return (server.address() as AddressInfo).port;
}

/** `cvmfs_server mkfs` of `repo` whose clients read http://127.0.0.1:port; `rmfs -f` at cleanup. */
export async function makeStratum0(repo: string, port: number): Promise<void> {
  onCleanup(() => sh('cvmfs_server', ['rmfs', '-f', repo]));
  await sh('cvmfs_server', ['mkfs', '-o', 'root', '-p', '-w', `http://127.0.0.1:${port}/cvmfs/${repo}`, repo]);
}

/** Arguments of `cvmfs-thin convert` that publish into the Stratum-0 (transaction, write, publish). */
export const publishArgs = (repo: string) => ({ repositoryDir: `/cvmfs/${repo}`, repository: repo, extra: ['--cvmfs-server'] });

export interface CvmfsClient {
  mnt: string;
  /** unmount, wipe the cache, mount again: a cold node */
  mountFresh(): Promise<void>;
  /** download counters of the running client (`cvmfs_talk internal affairs`) */
  downloads(): Promise<{ bytes: number; requests: number }>;
}

/** The client of `repo` (config and cache under `work`, mount at work/cvmfs/<repo>); unmounted at cleanup. */
export function cvmfsClient(work: string, repo: string, port: number): CvmfsClient {
  const cache = path.join(work, 'client-cache');
  const mnt = path.join(work, 'cvmfs', repo);
  const conf = path.join(work, 'client.conf');
  const socket = path.join(cache, repo, `cvmfs_io.${repo}`);
  fs.mkdirSync(mnt, { recursive: true });
  fs.writeFileSync(
    conf,
    [
      `CVMFS_SERVER_URL=http://127.0.0.1:${port}/cvmfs/@fqrn@`,
      `CVMFS_PUBLIC_KEY=/etc/cvmfs/keys/${repo}.pub`,
      'CVMFS_HTTP_PROXY=DIRECT',
      `CVMFS_CACHE_BASE=${cache}`,
      `CVMFS_RELOAD_SOCKETS=${cache}`,
      'CVMFS_QUOTA_LIMIT=4000',
      '',
    ].join('\n'),
  );
  const mounted = () =>
    fs
      .readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .some((l) => l.split(' ')[4] === mnt);
  const unmount = async () => {
    if (mounted()) await sh('umount', [mnt]);
  };
  onCleanup(() => (mounted() ? sh('umount', ['-l', mnt]) : undefined));
  return {
    mnt,
    async mountFresh() {
      await unmount();
      fs.rmSync(cache, { recursive: true, force: true });
      fs.mkdirSync(cache, { recursive: true });
      await sh('cvmfs2', ['-o', `config=${conf},allow_other`, repo, mnt]);
    },
    async downloads() {
      const out = await sh('cvmfs_talk', ['-p', socket, 'internal', 'affairs']);
      const get = (k: string) => Number(new RegExp(`^download\\.${k}\\|(\\d+)\\|`, 'm').exec(out)?.[1] ?? NaN);
      return { bytes: get('sz_transferred_bytes'), requests: get('n_requests') };
    },
  };
}

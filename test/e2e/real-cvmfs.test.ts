/**
 * Against a real CernVM-FS, where one is installed (`cvmfs_server` and
 * `cvmfs2` on PATH; every CERN node has the client, a publisher the server):
 * a Stratum-0 made for the run (`cvmfs_server mkfs`, served by a small HTTP
 * server of this test on 127.0.0.1), the 3-layer fixture converted and
 * published through `--cvmfs-server` (a transaction, the repository's
 * default server.conf: no xattrs) and `--cvmfs-server --ingest`, then read
 * through a separate `cvmfs2` client mount with a fresh cache, stacked as the
 * snapshotter does, and compared with containerd's own unpack: identical
 * but for hard links (a publish splits them). Where no CVMFS is installed the
 * test says so and skips; nothing of CVMFS is part of this project.
 */
import { execFile, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MNT_DETACH, umount } from '../../src/core/host/sys.js';
import { systemHost } from '../../src/core/host/host.js';
import { HotLayers } from '../../src/core/stack/hot.js';
import { silentLogger } from '../../src/core/telemetry/log.js';
import { runCli } from '../convert/cli.js';
import { hasBinary, isRoot, tempDir } from '../helpers/env.js';
import { applytoolMissing, buildThreeLayerImage, referenceRootfs, type ThreeLayerImage } from '../helpers/cvmfs-sim/image-fixture.js';
import { mountPublishedStack } from '../helpers/cvmfs-sim/stack.js';
import { hardLinkGroups, treeDiff, treeSnapshot, type TreeNode } from '../helpers/cvmfs-sim/tree-diff.js';

const missing = !isRoot
  ? 'root'
  : !hasBinary('cvmfs_server') || !hasBinary('cvmfs2')
    ? 'a real CernVM-FS (cvmfs_server and cvmfs2 on PATH)'
    : applytoolMissing();
if (missing) process.stderr.write(`[skip] real CernVM-FS end-to-end: needs ${missing}\n`);

const SRV = '/srv/cvmfs';
const execFileP = promisify(execFile);

/** The Stratum-0's storage over HTTP (what Apache serves on a publisher). */
function serveStratum0(): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    const url = decodeURIComponent((req.url ?? '/').split('?')[0]!);
    const p = path.normalize(path.join('/srv', url));
    if (!p.startsWith(`${SRV}/`)) return void res.writeHead(404).end();
    fs.stat(p, (err, st) => {
      if (err || !st.isFile()) return void res.writeHead(404).end();
      res.writeHead(200, { 'content-length': st.size });
      fs.createReadStream(p).pipe(res);
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

/** Run a command without blocking this process: the Stratum-0's HTTP server lives in it. */
async function sh(cmd: string, args: string[]): Promise<string> {
  try {
    return (await execFileP(cmd, args, { encoding: 'utf8', timeout: 180_000, maxBuffer: 16 << 20 })).stdout;
  } catch (e) {
    const x = e as { code?: number; stderr?: string; stdout?: string };
    throw new Error(`${cmd} ${args.join(' ')}: exit ${x.code}\n${x.stderr ?? ''}${x.stdout ?? ''}`);
  }
}

describe.skipIf(missing)('a real CernVM-FS: Stratum-0 publish, client mount', () => {
  const work = tempDir('cvmfs-thin-real-');
  const stamp = `${Date.now().toString(36)}${process.pid}`;
  const repos: string[] = [];
  const mounts: string[] = [];
  let server: http.Server;
  let image: ThreeLayerImage;
  let want: Map<string, TreeNode>;
  const ref = path.join(work, 'reference');

  beforeAll(async () => {
    server = await serveStratum0();
    image = buildThreeLayerImage(path.join(work, 'image'));
    referenceRootfs(image, ref);
    want = treeSnapshot(ref);
  }, 120_000);

  afterAll(async () => {
    for (const m of mounts) spawnSync('umount', ['-l', m]);
    for (const r of repos) await sh('cvmfs_server', ['rmfs', '-f', r]).catch((e: unknown) => process.stderr.write(`rmfs ${r}: ${(e as Error).message}\n`));
    server?.close();
  }, 300_000);

  /** A new repository; its client mount (fresh cache: a client never goes back to a lower revision). */
  async function makeRepo(name: string): Promise<{ repo: string; mountClient: () => Promise<string> }> {
    const repo = `${name}-${stamp}.example.org`;
    const port = (server.address() as AddressInfo).port;
    repos.push(repo);
    await sh('cvmfs_server', ['mkfs', '-o', 'root', '-p', '-w', `http://127.0.0.1:${port}/cvmfs/${repo}`, repo]);
    return {
      repo,
      mountClient: async () => {
        const cache = path.join(work, `cache-${repo}`);
        const mnt = path.join(work, 'mnt', repo);
        fs.mkdirSync(cache, { recursive: true });
        fs.mkdirSync(mnt, { recursive: true });
        const conf = path.join(work, `${repo}.conf`);
        fs.writeFileSync(
          conf,
          [
            `CVMFS_SERVER_URL=file://${SRV}/@fqrn@`,
            `CVMFS_PUBLIC_KEY=/etc/cvmfs/keys/${repo}.pub`,
            'CVMFS_HTTP_PROXY=DIRECT',
            `CVMFS_CACHE_BASE=${cache}`,
            `CVMFS_RELOAD_SOCKETS=${cache}`,
            'CVMFS_QUOTA_LIMIT=1000',
            '',
          ].join('\n'),
        );
        await sh('cvmfs2', ['-o', `config=${conf},allow_other`, repo, mnt]);
        mounts.push(mnt);
        return mnt;
      },
    };
  }

  async function publishAndCompare(name: string, extra: string[], o: { how?: string; profile?: string[] } = {}): Promise<string[]> {
    const { repo, mountClient } = await makeRepo(name);
    const r = await runCli(
      [
        'convert',
        `oci:${image.layout}:${image.tag}`,
        '--repository-dir',
        `/cvmfs/${repo}`,
        '--repository',
        repo,
        '--no-thin',
        '--json',
        '--cvmfs-server',
        '--lock-file',
        path.join(work, `${repo}.lock`),
        ...extra,
      ],
      { timeoutMs: 600_000 },
    );
    expect(r.code, `convert: ${r.stderr}\n${r.stdout}`).toBe(0);
    if (o.profile) {
      // a profile of some of the image's files, published with its pack in a second transaction
      const files = o.profile.map((p) => ({ path: p, size: fs.statSync(path.join(ref, p)).size }));
      const pf = path.join(work, `${name}-profile.json`);
      fs.writeFileSync(
        pf,
        JSON.stringify({ schema: 'cvmfs-thin/access-profile', version: 1, layers: image.hexes, prefetch: true, created: new Date().toISOString(), files }),
      );
      const lock = path.join(work, `${repo}.lock`);
      const pr = await runCli(['profile', 'publish', '--repository-dir', `/cvmfs/${repo}`, '--repository', repo, '--cvmfs-server', '--lock-file', lock, pf]);
      expect(pr.code, pr.stderr).toBe(0);
      expect(pr.stdout).toMatch(new RegExp(`pack of ${files.length} file\\(s\\), \\d+ KiB, image \\d+ \\+ \\d+ KiB`));
    }
    const mnt = await mountClient();
    // without a profile: the stack; with one: its hot layer on top, mounted from the image through the client, then unpacked from the pack
    const diffs: string[] = [];
    for (const form of o.profile ? (['image', 'pack'] as const) : [null]) {
      let top: string | undefined;
      if (form) {
        const masks = path.join(work, `masks-${name}-${form}`);
        fs.mkdirSync(masks);
        const log = silentLogger();
        const hot = await new HotLayers(masks, systemHost, log, {
          waitMs: 60_000,
          maxBytes: 64 << 20,
          readTimeoutMs: 10_000,
          image: form === 'image',
        }).forStack(mnt, image.hexes);
        expect(hot.why).toBe(form);
        top = hot.dir!;
        // unmounted before the client is (an image holds its file open)
        if (form === 'image') mounts.unshift(top);
      }
      const target = path.join(work, `rootfs-${name}${form ? `-${form}` : ''}`);
      const stack = await mountPublishedStack({
        published: mnt,
        repository: repo,
        hexes: image.hexes,
        work: path.join(work, `stack-${name}-${form}`),
        target,
        top,
      });
      try {
        const got = treeSnapshot(target);
        expect(hardLinkGroups(target)).toEqual([]);
        expect(fs.readFileSync(path.join(target, 'hl/two'), 'utf8')).toBe(fs.readFileSync(path.join(target, 'hl/one'), 'utf8'));
        if (o.how) expect(stack.how).toContain(o.how);
        diffs.push(...treeDiff(want, got).map((d) => `${form ?? 'stack'}: ${d}`), ...(stack.how.length ? [] : ['no stack']));
      } finally {
        umount(target, MNT_DETACH);
      }
    }
    return diffs;
  }

  it("transaction path (--cvmfs-server, default server.conf): a client sees containerd's rootfs but for hard links", async () => {
    expect(await publishAndCompare('tx', [])).toEqual([]);
  }, 600_000);

  it('ingest path (--cvmfs-server --ingest): the same', async () => {
    expect(await publishAndCompare('in', ['--ingest'])).toEqual([]);
  }, 600_000);

  it("--top-chain, default server.conf (the publish drops xattrs): the chain alone, restored from its marker, is containerd's rootfs", async () => {
    expect(await publishAndCompare('ch', ['--top-chain'], { how: 'chain' })).toEqual([]);
  }, 600_000);

  it("a profile's image and pack through the client: the hot layer above the stack, mounted or unpacked, changes nothing a container sees", async () => {
    const files = [...want].filter(([, n]) => n.type === 'file').map(([p]) => p);
    expect(files.length).toBeGreaterThan(3);
    expect(await publishAndCompare('hot', [], { profile: files })).toEqual([]);
  }, 600_000);

  it('the publisher checks its repositories: no problems found', async () => {
    for (const r of repos) expect(await sh('cvmfs_server', ['check', r])).toMatch(/no problems/i);
  }, 300_000);
});

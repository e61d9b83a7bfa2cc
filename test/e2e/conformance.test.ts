/**
 * containerd's own snapshotter test suite (SnapshotterSuite, 21 cases from
 * containerd 1.6.20) plus the harness's 12 extra gRPC checks, run against
 * `cvmfs-thin snapshotter` through containerd's proxy client, one fresh server
 * per case. The Go binary is built by scripts/setup.sh from
 * ../shared/containerd-testsuite (CTDTS_BIN overrides /tmp/ctdts/bin).
 */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { CLI, needs } from '../helpers/env.js';

const BIN = path.join(process.env['CTDTS_BIN'] ?? '/tmp/ctdts/bin', 'proxysuite.test');

const SUITE = [
  'Basic',
  'StatActive',
  'StatComitted',
  'TransitivityTest',
  'PreareViewFailingtest',
  'Update',
  'Remove',
  'Walk',
  'LayerFileupdate',
  'RemoveDirectoryInLowerLayer',
  'Chown',
  'DirectoryPermissionOnCommit',
  'RemoveIntermediateSnapshot',
  'DeletedFilesInChildSnapshot',
  'MoveFileFromLowerLayer',
  'ViewReadonly',
  'StatInWalk',
  'CloseTwice',
  'RootPermission',
  '128LayersMount',
];
const CONFORMANCE = [
  'ErrorCodes',
  'KindsParentsTimestamps',
  'Labels',
  'WalkFilters',
  'ContainerdStyleKeys',
  'Usage',
  'MountsRPC',
  'ViewReadonlyMultiLayer',
  'CleanupRPC',
  'ConcurrentPrepare',
  'RestartPersistence',
  'RemoteSnapshots',
];

describe.skipIf(needs({ root: true, binaries: [BIN] }))("containerd's snapshotter conformance suite against cvmfs-thin", () => {
  const results = new Map<string, string>();
  let output = '';
  beforeAll(async () => {
    const cmd = `${process.execPath} ${CLI} snapshotter --root {root} --address {socket} --absolute-mountpoint {unpacked} --log-level warn`;
    try {
      const r = await promisify(execFile)(BIN, ['-test.v', '-test.timeout', '600s', '-server-cmd', cmd], {
        cwd: '/tmp',
        maxBuffer: 64 << 20,
        timeout: 900_000,
      });
      output = r.stdout + r.stderr;
    } catch (e) {
      const x = e as { stdout?: string; stderr?: string };
      output = (x.stdout ?? '') + (x.stderr ?? '');
    }
    for (const m of output.matchAll(/--- (PASS|FAIL|SKIP): (Test\w+\/\S+)/g)) results.set(m[2]!, m[1]!);
  }, 900_000);

  const failureLog = (name: string) => {
    const i = output.indexOf(`--- FAIL: ${name}`);
    return i < 0 ? '' : output.slice(Math.max(0, i - 4000), i + 200);
  };

  it.each(SUITE)('SnapshotterSuite/%s', (c) => {
    const name = `TestSnapshotterSuite/${c}`;
    expect(results.get(name), failureLog(name)).toBe('PASS');
  });
  it('SnapshotterSuite/Rename is skipped upstream (and only that case)', () => {
    expect(results.get('TestSnapshotterSuite/Rename')).toBe('SKIP');
    expect([...results.values()].filter((v) => v === 'SKIP')).toHaveLength(1);
  });
  it.each(CONFORMANCE)('Conformance/%s', (c) => {
    const name = `TestConformance/${c}`;
    expect(results.get(name), failureLog(name)).toBe('PASS');
  });
});

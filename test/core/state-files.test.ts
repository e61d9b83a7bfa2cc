/**
 * A state file of an unknown schema stops the daemon that owns it with a
 * typed error (CVMFS_THIN_BAD_STATE, failed-precondition) naming the file,
 * instead of starting empty over it.
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { VolumeStore } from '../../src/core/volumes/store.js';
import { MetaStore } from '../../src/snapshotter/metastore.js';
import { tempDir } from '../helpers/env.js';

const fatal = (e: Error) => {
  throw e;
};

describe('state files of an unknown schema', () => {
  it('the snapshotter metadata: refused, naming metadata.state', async () => {
    const dir = tempDir();
    writeFileSync(path.join(dir, 'metadata.state'), JSON.stringify({ schema: 99, nextId: 1, snapshots: [] }));
    const err = await MetaStore.open(dir, fatal).catch((e: unknown) => e);
    expect(err).toMatchObject({ kind: 'failed-precondition', code: 'CVMFS_THIN_BAD_STATE', name: 'FailedPreconditionError' });
    expect((err as Error).message).toBe(`${path.join(dir, 'metadata.state')}: metadata schema 99 is not supported (want 1)`);
  });

  it('the volume manager: refused, naming volumes.state', async () => {
    const dir = tempDir();
    writeFileSync(path.join(dir, 'volumes.state'), JSON.stringify({ schema: 'cvmfs-thin/volumes', version: 7, volumes: [], definitions: [] }));
    const err = await VolumeStore.open(dir, fatal).catch((e: unknown) => e);
    expect(err).toMatchObject({ kind: 'failed-precondition', code: 'CVMFS_THIN_BAD_STATE' });
    expect((err as Error).message).toBe(`${path.join(dir, 'volumes.state')}: volume state schema cvmfs-thin/volumes/7 is not supported`);
  });
});

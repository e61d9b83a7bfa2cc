/** The converter's warning for a Stratum-0 whose server.conf does not publish xattrs. */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { serverConfWarnings } from '../../src/convert/publish.js';
import { tempDir } from '../helpers/env.js';

describe('server.conf warnings', () => {
  const dir = tempDir('cvmfs-thin-serverconf-');
  const conf = (repo: string, text: string) => {
    fs.mkdirSync(path.join(dir, repo), { recursive: true });
    fs.writeFileSync(path.join(dir, repo, 'server.conf'), text);
  };

  it('warns when a transaction would drop xattrs, naming the file and the setting', () => {
    conf('a.example.org', 'CVMFS_REPOSITORY_NAME=a.example.org\nCVMFS_INCLUDE_XATTRS=false\n');
    const w = serverConfWarnings('a.example.org', { transaction: true }, dir);
    expect(w).toHaveLength(1);
    expect(w[0]).toContain(path.join(dir, 'a.example.org', 'server.conf'));
    expect(w[0]).toContain('CVMFS_INCLUDE_XATTRS=true');
  });

  it('is quiet when xattrs are published, without a transaction, or without a server.conf (not a Stratum-0)', () => {
    conf('b.example.org', '# comment\nCVMFS_INCLUDE_XATTRS=true\n');
    expect(serverConfWarnings('b.example.org', { transaction: true }, dir)).toEqual([]);
    conf('c.example.org', 'CVMFS_INCLUDE_XATTRS="yes"\n');
    expect(serverConfWarnings('c.example.org', { transaction: true }, dir)).toEqual([]);
    conf('d.example.org', '');
    expect(serverConfWarnings('d.example.org', { transaction: false }, dir)).toEqual([]);
    expect(serverConfWarnings('none.example.org', { transaction: true }, dir)).toEqual([]);
  });
});

describe('options that cannot publish together', () => {
  it('--overwrite-layers with --ingest is refused before anything runs', async () => {
    const { runCli } = await import('./cli.js');
    const dir = tempDir('cvmfs-thin-ovw-');
    const marker = path.join(dir, 'TX');
    const r = await runCli([
      'convert',
      'oci:/nonexistent:v1',
      '--repository-dir',
      dir,
      '--overwrite-layers',
      '--ingest-command',
      'false',
      '--transaction-command',
      `touch ${marker}`,
    ]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--overwrite-layers cannot be used with --ingest/);
    expect(fs.existsSync(marker)).toBe(false);
  });
});

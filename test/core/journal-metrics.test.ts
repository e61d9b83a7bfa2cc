import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Journal, journalMetrics } from '../../src/core/state/journal.js';
import { createRegistry, noMetrics } from '../../src/core/telemetry/metrics.js';
import { tempDir } from '../helpers/env.js';
import { metricValue } from '../e2e/metrics-scrape.js';

describe('journal commit observer', () => {
  const dir = tempDir('journal-metrics-');

  it('reports each group commit once, with its record count, after the write', async () => {
    const seen: [number, number][] = [];
    const { journal } = await Journal.open<{ n: number }>({
      dir: path.join(dir, 'a'),
      name: 'kv',
      onFatal: (e) => {
        throw e;
      },
      onCommit: (s, n) => seen.push([s, n]),
    });
    await Promise.all([journal.append({ n: 1 }), journal.append({ n: 2 }), journal.append({ n: 3 })]);
    await journal.append({ n: 4 });
    expect(seen.map(([, n]) => n)).toEqual([3, 1]);
    expect(seen.every(([s]) => s >= 0)).toBe(true);
    expect(journal.commits).toBe(2);
    await journal.close();
  });

  it('records into journal_commit_seconds and journal_batch_records by store; nothing without metrics', async () => {
    expect(journalMetrics(noMetrics, 'volumes')).toBeUndefined();
    const r = await createRegistry({ defaultMetrics: false });
    const { journal } = await Journal.open<{ n: number }>({
      dir: path.join(dir, 'b'),
      name: 'kv',
      onFatal: (e) => {
        throw e;
      },
      onCommit: journalMetrics(r.metrics, 'volumes'),
    });
    await Promise.all([journal.append({ n: 1 }), journal.append({ n: 2 })]);
    await journal.append({ n: 3 });
    const text = await r.registry.metrics();
    expect(metricValue(text, 'cvmfs_thin_journal_commit_seconds_count', { store: 'volumes' })).toBe(2);
    expect(metricValue(text, 'cvmfs_thin_journal_batch_records_sum', { store: 'volumes' })).toBe(3);
    expect(metricValue(text, 'cvmfs_thin_journal_batch_records_bucket', { store: 'volumes', le: '2' })).toBe(2);
    expect(metricValue(text, 'cvmfs_thin_journal_batch_records_bucket', { store: 'volumes', le: '1' })).toBe(1);
    await journal.close();
  });
});

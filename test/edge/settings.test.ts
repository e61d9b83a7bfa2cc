/** The one settings resolver of every edge (src/edge/settings.ts): flags, then the environment, then the TOML file, then the defaults. */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { resolveSettings } from '../../src/edge/settings.js';
import { tempDir } from '../helpers/env.js';

const spec = {
  endpoint: { type: 'string' },
  prefetch: { type: 'boolean' },
  'record-window': { type: 'integer', min: 1, max: 600 },
} as const;

/** A command line where `given` are the flags typed (the others are commander's defaults). */
const cli = (given: string[]) => ({ getOptionValueSource: (k: string) => (given.includes(k) ? 'cli' : 'default') });

describe('resolveSettings', () => {
  const dir = tempDir('cvmfs-thin-edge-settings-');
  const cfg = path.join(dir, 'a.toml');
  writeFileSync(cfg, 'endpoint = "/from/file"\nprefetch = false\nrecord-window = 5\n');

  it('a flag typed beats the environment, which beats the file; a flag only defaulted does not count', () => {
    const env = { EP: '/from/env' };
    const typed = resolveSettings(spec, { config: cfg, endpoint: '/from/flag' }, cli(['endpoint']), env);
    expect(typed.pick('endpoint', 'endpoint', 'EP')).toBe('/from/flag');
    const defaulted = resolveSettings(spec, { config: cfg, endpoint: '/commander/default' }, cli([]), env);
    expect(defaulted.pick('endpoint', 'endpoint', 'EP')).toBe('/from/env');
    expect(defaulted.pick('endpoint', 'endpoint')).toBe('/from/file');
    expect(resolveSettings(spec, { config: cfg }, null, { EP: '' }).pick('endpoint', 'endpoint', 'EP')).toBe('/from/file');
    expect(resolveSettings(spec, {}, null, {}).pick('endpoint', 'endpoint', 'EP')).toBeUndefined();
    expect(defaulted.pick('recordWindow', 'record-window')).toBe(5);
    expect(defaulted.file).toEqual({ endpoint: '/from/file', prefetch: false, 'record-window': 5 });
  });

  it('--no-x flags: the flag typed, else the file, else on', () => {
    expect(resolveSettings(spec, { config: cfg, prefetch: true }, cli([]), {}).enabled('prefetch', 'prefetch')).toBe(false);
    expect(resolveSettings(spec, { config: cfg, prefetch: true }, cli(['prefetch']), {}).enabled('prefetch', 'prefetch')).toBe(true);
    expect(resolveSettings(spec, { prefetch: true }, cli([]), {}).enabled('prefetch', 'prefetch')).toBe(true);
  });

  it('refuses a file with unknown keys or bad values, naming them', () => {
    const bad = path.join(dir, 'bad.toml');
    writeFileSync(bad, 'endpont = "x"\nrecord-window = 0\n');
    expect(() => resolveSettings(spec, { config: bad }, null, {})).toThrow(
      /config .*bad\.toml: unknown key\(s\) "endpont" \(known: endpoint, prefetch, record-window\); record-window: must be a whole number from 1 to 600/,
    );
  });
});

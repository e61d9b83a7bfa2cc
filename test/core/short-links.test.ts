import { mkdirSync, readdirSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ShortLinks } from '../../src/core/stack/links.js';
import { tempDir } from '../helpers/env.js';

describe('ShortLinks', () => {
  const base = tempDir('links-');
  let n = 0;
  const fresh = () => {
    const dir = path.join(base, String(n++), 'l');
    mkdirSync(dir, { recursive: true });
    return dir;
  };

  it('ensure() makes a missing link, corrects one pointing elsewhere or not a link, and checks each name once', async () => {
    const dir = fresh();
    const links = new ShortLinks(dir);
    await links.recover([]);
    links.ensure('a', '/x/a');
    expect(readlinkSync(path.join(dir, 'a'))).toBe('/x/a');
    symlinkSync('/wrong', path.join(dir, 'b'));
    writeFileSync(path.join(dir, 'c'), 'not a link');
    links.ensure('b', '/x/b');
    links.ensure('c', '/x/c');
    expect(readlinkSync(path.join(dir, 'b'))).toBe('/x/b');
    expect(readlinkSync(path.join(dir, 'c'))).toBe('/x/c');
    // verified once: a link removed behind its back afterwards is not looked at again by ensure
    rmSync(path.join(dir, 'a'));
    links.ensure('a', '/x/a');
    expect(readdirSync(dir).sort()).toEqual(['b', 'c']);
    // after a restart, the first ensure checks again
    const again = new ShortLinks(dir);
    await again.recover([]);
    again.ensure('a', '/x/a');
    expect(readlinkSync(path.join(dir, 'a'))).toBe('/x/a');
  });

  it('remove() after recover skips names known not to exist, and removes those on disk before the restart', async () => {
    const dir = fresh();
    symlinkSync('/old', path.join(dir, 'k'));
    const links = new ShortLinks(dir);
    await links.recover([]);
    links.create('m', '/x/m');
    // a name made behind the registry's back after it listed the directory is not looked at: no system call
    symlinkSync('/x', path.join(dir, 'ghost'));
    links.remove(['never-made', 'k', 'm', 'ghost']);
    expect(readdirSync(dir)).toEqual(['ghost']);
    rmSync(path.join(dir, 'ghost'));
    // before recover listed the directory, every name is tried (nothing is known)
    symlinkSync('/x', path.join(dir, 'z'));
    const cold = new ShortLinks(dir);
    cold.remove(['z']);
    expect(readdirSync(dir)).toEqual([]);
  });

  it('a link rolled back or collected as an orphan is known gone: ensure() makes it again', async () => {
    const dir = fresh();
    const links = new ShortLinks(dir);
    await links.recover([]);
    const batch = await links.link(['/t1', '/t2']);
    const names = [...batch.made.keys()];
    batch.rollback();
    expect(readdirSync(dir)).toEqual([]);
    links.ensure(names[0]!, '/t1');
    expect(readlinkSync(path.join(dir, names[0]!))).toBe('/t1');
    expect(await links.collectOrphans(new Set())).toBe(1);
    links.ensure(names[0]!, '/t1');
    expect(readdirSync(dir)).toEqual([names[0]]);
  });
});

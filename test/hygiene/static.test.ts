/**
 * What a contributor's change must keep (CI counts each as a test): no ESLint
 * finding (`npm run lint`), every file formatted (`npm run format:check`),
 * sources, tests and benches type-check (`npm run typecheck`), no hand-written
 * source file over 400 lines, no unused file, export or exported type in src/
 * (`npm run knip`; the issue types are knip.json's `include`; knip.json reads tests
 * and benches too, so what they use counts as used). The last block proves each
 * check can fail: the same runner on a broken input, the line counter on a
 * temporary tree.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { tempDir } from '../helpers/env.js';
import { filesOverCap, lineCount } from './line-cap.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const CAP = 400;
/** The whole tree, on 2 shared cores: generous. */
const SLOW = 600_000;

/** Run a devDependency's binary in the repository root: exit code and everything it printed. */
function tool(name: string, args: string[], input?: string): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(path.join(ROOT, 'node_modules/.bin', name), args, { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, output }));
    child.stdin.end(input ?? '');
  });
}

describe('the tree', () => {
  it('has no ESLint finding (npm run lint)', { timeout: SLOW }, async () => {
    const r = await tool('eslint', ['.']);
    expect(r.code, r.output).toBe(0);
  });

  it('is formatted (npm run format:check)', { timeout: SLOW }, async () => {
    const r = await tool('prettier', ['--check', '.']);
    expect(r.code, r.output).toBe(0);
  });

  it('type-checks: src, test, bench (npm run typecheck)', { timeout: SLOW }, async () => {
    const r = await tool('tsc', ['-p', 'tsconfig.json', '--noEmit']);
    expect(r.code, r.output).toBe(0);
  });

  it(`has no hand-written source file over ${CAP} lines (src/, generated src/*/proto/ excepted)`, () => {
    expect(filesOverCap(path.join(ROOT, 'src'), CAP)).toEqual([]);
  });

  it('has no unused file, export or exported type (npm run knip, knip.json)', { timeout: SLOW }, async () => {
    const r = await tool('knip', ['--no-progress']);
    expect(r.code, r.output).toBe(0);
  });
});

describe('the checks can fail', () => {
  it('ESLint, Prettier and tsc report a broken file through the same runner', { timeout: SLOW }, async () => {
    const dir = tempDir();
    const lint = await tool('eslint', ['--stdin', '--stdin-filename', 'src/hygiene-probe.ts'], 'let never = 1;\nexport const x = never;\n');
    expect(lint.code).toBe(1);
    expect(lint.output).toContain('prefer-const');
    const ugly = path.join(dir, 'ugly.ts');
    writeFileSync(ugly, 'export const x = {a:1,\n    b:2}\n');
    const fmt = await tool('prettier', ['--check', ugly]);
    expect(fmt.code).not.toBe(0);
    expect(fmt.output).toContain('ugly.ts');
    writeFileSync(path.join(dir, 'bad.ts'), "export const n: number = 'one';\n");
    writeFileSync(path.join(dir, 'tsconfig.json'), JSON.stringify({ compilerOptions: { strict: true, noEmit: true, types: [] }, files: ['bad.ts'] }));
    const tsc = await tool('tsc', ['-p', dir]);
    expect(tsc.code).not.toBe(0);
    expect(tsc.output).toContain('bad.ts');
  });

  it("knip, with the repository's issue types, names an unused export and an unused exported type", { timeout: SLOW }, async () => {
    const { include } = JSON.parse(readFileSync(path.join(ROOT, 'knip.json'), 'utf8')) as { include: string[] };
    expect(include).toEqual(expect.arrayContaining(['files', 'exports', 'types']));
    const dir = tempDir();
    writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name: 'knip-probe', type: 'module' }));
    writeFileSync(path.join(dir, 'knip.json'), JSON.stringify({ include, entry: ['main.ts'], project: ['*.ts'] }));
    writeFileSync(path.join(dir, 'main.ts'), "import { used, type UsedType } from './lib.js';\nconst u: UsedType = { n: used };\nconsole.log(u);\n");
    writeFileSync(
      path.join(dir, 'lib.ts'),
      'export const used = 1;\nexport const unusedValue = 2;\nexport interface UsedType {\n  n: number;\n}\nexport interface UnusedType {\n  n: number;\n}\n',
    );
    const probe = await tool('knip', ['--directory', dir, '--no-progress']);
    expect(probe.code, probe.output).not.toBe(0);
    expect(probe.output).toMatch(/unusedValue\s+lib\.ts:2/);
    expect(probe.output).toMatch(/UnusedType\s+interface\s+lib\.ts:6/);
    expect(probe.output).not.toMatch(/\bused\s|\bUsedType\b/);
  });

  it('counts lines as wc -l does, a last line without newline included', () => {
    expect(lineCount('')).toBe(0);
    expect(lineCount('a')).toBe(1);
    expect(lineCount('a\n')).toBe(1);
    expect(lineCount('a\nb')).toBe(2);
    expect(lineCount('\n\n\n')).toBe(3);
  });

  it('names every file over the cap with its count, and only hand-written .ts files', () => {
    const src = path.join(tempDir(), 'src');
    const lines = (n: number, last = '\n') => Array.from({ length: n }, (_, i) => `const l${i} = ${i};`).join('\n') + last;
    const put = (rel: string, text: string) => {
      mkdirSync(path.dirname(path.join(src, rel)), { recursive: true });
      writeFileSync(path.join(src, rel), text);
    };
    put('at-cap.ts', lines(CAP));
    put('over.ts', lines(CAP + 1));
    put('deep/er/over-no-newline.ts', lines(CAP + 1, ''));
    put('edge/proto/generated.ts', lines(3 * CAP));
    put('edge/notproto/proto/nested.ts', lines(CAP + 7));
    put('notes.md', lines(3 * CAP));
    mkdirSync(path.join(src, 'dir.ts'));
    expect(filesOverCap(src, CAP)).toEqual([
      `src/deep/er/over-no-newline.ts: ${CAP + 1} lines`,
      `src/edge/notproto/proto/nested.ts: ${CAP + 7} lines`,
      `src/over.ts: ${CAP + 1} lines`,
    ]);
    expect(filesOverCap(src, 3 * CAP)).toEqual([]);
  });
});

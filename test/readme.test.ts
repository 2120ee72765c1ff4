// The README is executable (issue 14 §1): every ```ts, ```js and ```sh block a user would copy runs as written,
// against ../shared/models, in a folder of its own whose node_modules links llama-addon to this checkout (so
// the programs run the built package, dist/, as a user's code would). TypeScript blocks are also type-checked
// with the tsconfig.json the README recommends (tsc --strict). Blocks that are deliberately partial carry an
// HTML comment before them (`<!-- readme-test: skip (why) -->`); an unmarked block that does not run fails.
// The markers, the model-file table (MODEL_FILES: `model.gguf` is stories260k...) and the other substitutions
// are in scripts/readme-examples.mjs, which scripts/runtime-smoke.mjs uses too, under Node.js 22 and 24, Bun
// and Deno.
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  describeProgram,
  MODEL_FILES,
  prepareRunDir,
  programKind,
  readmePrograms,
  runProgram,
  typecheck,
  writePrograms,
  type Program,
} from '../scripts/readme-examples.mjs';
import { describeShared, repoRoot, sharedModels } from './helpers/models.js';

const readme = readmePrograms();
const named = (name: string): Program | undefined => readme.programs.find((p) => p.name === name);

describe('README code blocks', () => {
  it('each block is run or marked, and every marker is understood', () => {
    expect(readme.problems).toEqual([]);
    expect(readme.tsconfig, 'the README recommends a tsconfig.json (a ```json block marked readme-test: tsconfig)').not.toBeNull();
    for (const s of readme.skipped) expect(s.reason.length).toBeGreaterThan(3);
    // The quick start and the chat after it are one program, in one file, as a reader would paste them.
    expect(named('quick-start')?.parts.length).toBe(2);
    // A CommonJS example is run as CommonJS.
    expect(readme.programs.some((p) => programKind(p) === 'cjs')).toBe(true);
  });

  it('no example uses `await using` (a SyntaxError on Node.js 22)', () => {
    for (const p of readme.programs) for (const part of p.parts) expect(part.code, `README.md:${part.line}`).not.toMatch(/\bawait\s+using\b/);
  });

  it('the extractor: unmarked blocks run, markers chain and skip them', () => {
    const md = [
      '# A',
      '<!-- readme-test: name first -->',
      '```ts',
      "const a: number = 1;",
      '```',
      'text',
      '<!-- readme-test: continues -->',
      '```ts',
      'console.log(a);',
      '```',
      '<!-- readme-test: skip (a fragment) -->',
      '```js',
      'x.y();',
      '```',
      '## B',
      '```js',
      'x.y();',
      '```',
      '<!-- readme-test: after first -->',
      '```ts',
      'console.log(a + 1);',
      '```',
      '<!-- readme-test: skip -->',
      '```sh',
      'ls',
      '```',
      '<!-- readme-test: sometimes -->',
      '```sh',
      'ls other.gguf',
      '```',
      '```text',
      'output',
      '```',
    ].join('\n');
    const r = readmePrograms(md);
    expect(r.programs.map((p) => [p.name, p.parts.map((x) => x.line)])).toEqual([
      ['first', [3, 8]],
      ['b', [16]],
      ['b-2', [3, 20]],
    ]);
    expect(r.skipped.map((s) => s.line)).toEqual([12]);
    expect(r.problems).toEqual([
      'README.md:23: a skip marker gives its reason: <!-- readme-test: skip (why) -->',
      'README.md:27: unknown readme-test marker "sometimes"',
    ]);
    expect(readmePrograms('```sh\nls other.gguf\n```\n').problems[0]).toMatch(/"other.gguf" is not in the model table/);
  });
});

describeShared('README examples run as written', () => {
  let root = '';
  let app = '';
  // An unmarked fragment, as a README block could be: it must fail.
  const fragment: Program = { name: 'fragment', line: 0, heading: '', parts: [{ lang: 'js', code: "import { loadModel } from 'llama-addon';\nawait session.complete('...');", line: 0 }] };

  beforeAll(async () => {
    if (!existsSync(join(repoRoot, 'dist', 'index.js')) || !existsSync(join(repoRoot, 'dist', 'cjs', 'index.js'))) {
      throw new Error('dist/ is missing: the README programs run the built package (npm run build:ts)');
    }
    for (const file of new Set(Object.values(MODEL_FILES))) expect(existsSync(join(sharedModels, file)), file).toBe(true);
    root = mkdtempSync(join(tmpdir(), 'llama-addon-readme-'));
    app = prepareRunDir(root, { sharedModels, programs: readme.programs, tsconfig: readme.tsconfig });
    await writePrograms(app, [...readme.programs, fragment]);
  });

  afterAll(() => {
    if (root) rmSync(root, { recursive: true, force: true });
  });

  it('TypeScript blocks type-check with the README tsconfig.json (tsc --strict)', () => {
    const r = typecheck(app, readme.programs);
    expect(r.errors.map((e) => `README.md:${e.readmeLine} (${e.program}): ${e.message}`)).toEqual([]);
    expect(r.ok, r.output).toBe(true);
  }, 300_000);

  it('a block that refers to what it does not define fails', async () => {
    const r = await runProgram(app, fragment, { timeout: 60_000 });
    expect(r.ok).toBe(false);
    expect(r.stderr).toMatch(/session is not defined/);
  }, 120_000);

  for (const p of readme.programs) {
    it(`${describeProgram(p)} runs (${programKind(p) === 'cjs' ? 'CommonJS' : programKind(p) ? 'ES module' : 'sh'})`, async () => {
      const r = await runProgram(app, p, { timeout: 240_000 });
      expect(r.ok, `${r.why}\n--- stdout\n${r.stdout.slice(-3000)}\n--- stderr\n${r.stderr.slice(-6000)}`).toBe(true);
    }, 600_000);
  }
});

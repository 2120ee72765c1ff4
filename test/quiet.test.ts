// Quiet by default: loading the real models of ../shared/models with default options, creating a default
// context and generating prints no warning; the known-harmless lines llama.cpp prints as warnings are still
// there at the info level. Each run in a child process, so that what reaches stderr is what a user sees.
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { describeShared, fixtures, repoRoot, shared } from './helpers/models.js';

function run(model: string, level: 'default' | 'info', vocabOnly = false): { stderr: string; lines: string[] } {
  const script = `
    import { loadModel, setLogLevel, setLogger } from ${JSON.stringify(join(repoRoot, 'dist', 'index.js'))};
    const lines = [];
    if (${JSON.stringify(level)} === 'info') { setLogLevel('info'); setLogger((l, m) => lines.push(l + ' ' + m)); }
    const m = await loadModel(${JSON.stringify(model)}, { vocabOnly: ${vocabOnly} });
    if (!${vocabOnly}) {
      const ctx = await m.createContext();
      const s = ctx.createSession();
      await s.complete('Once upon a time', { maxTokens: 2 });
      s.dispose();
      await ctx.dispose();
    }
    await m.dispose();
    await new Promise((r) => setTimeout(r, 50));
    console.log(JSON.stringify(lines));`;
  mkdirSync(fixtures, { recursive: true });
  const file = join(fixtures, `quiet-${level}.mjs`);
  writeFileSync(file, script);
  const r = spawnSync(process.execPath, [file], { cwd: repoRoot, encoding: 'utf8', timeout: 60_000 });
  expect(r.status, r.stderr).toBe(0);
  return { stderr: r.stderr, lines: JSON.parse(r.stdout.trim().split('\n').pop()!) as string[] };
}

describeShared('quiet by default', () => {
  for (const name of ['stories260k.gguf', 'tinystories-656k-q8_0.gguf', 'tinystories-656k-f16.gguf', 'llama-2-tiny-random.gguf']) {
    it(`${name}: nothing on stderr with default options`, () => {
      expect(run(shared(name), 'default').stderr).toBe('');
    });
  }

  it('vocab-phi-3.gguf (vocabOnly): nothing on stderr', () => {
    expect(run(shared('vocab-phi-3.gguf'), 'default', true).stderr).toBe('');
  });

  it('an embedding context of several sequences (one shared KV stream) prints nothing either', () => {
    const script = `
      import { loadModel } from ${JSON.stringify(join(repoRoot, 'dist', 'index.js'))};
      const m = await loadModel(${JSON.stringify(shared('stories260k.gguf'))});
      const ctx = await m.createContext({ embeddings: true, pooling: 'mean', sequences: 8 });
      console.log((await ctx.embed(['a', 'b'])).length);
      await m.dispose();`;
    const file = join(fixtures, 'quiet-embed.mjs');
    writeFileSync(file, script);
    const r = spawnSync(process.execPath, [file], { cwd: repoRoot, encoding: 'utf8', timeout: 60_000 });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout.trim()).toBe('2');
    expect(r.stderr).toBe('');
  });

  it('the demoted lines are still there at the info level, as info', () => {
    const { lines } = run(shared('stories260k.gguf'), 'info');
    expect(lines.some((l) => l.startsWith('info ') && l.includes('bad special token'))).toBe(true);
    expect(lines.some((l) => l.startsWith('warn '))).toBe(false);
    const eog = run(shared('tinystories-656k-q8_0.gguf'), 'info').lines;
    expect(eog.some((l) => l.startsWith('info ') && l.includes('special_eos_id is not in special_eog_ids'))).toBe(true);
  });
});

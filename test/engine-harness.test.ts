// The engine without Node: native/harness/engine_harness.cpp runs la::Engine (native/engine.*) with a sink of
// its own, built from the engine's files alone, none of which includes N-API. Built from the addon's build
// tree on first use (as the bench builds llama-bench); its greedy output must be the package's.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, expect, it } from 'vitest';
import { loadModel, setLogLevel } from 'llama-addon';
import { describeShared, repoRoot, shared } from './helpers/models.js';

setLogLevel('error');

const buildDir = join(repoRoot, 'build');
const configured = existsSync(join(buildDir, 'build.ninja')) || existsSync(join(buildDir, 'Makefile'));
if (!configured && process.env.CI) throw new Error(`CI is set but ${buildDir} holds no configured build`);
if (!configured) console.warn(`[llama-addon tests] skipping the engine harness: ${buildDir} holds no configured build (npm run build)`);

interface HarnessResult {
  seq: number;
  stopReason: string;
  tokens: number[];
  text: string;
}

describeShared('the engine without Node (native/harness)', () => {
  let bin = '';
  beforeAll(() => {
    if (!configured) return;
    const r = spawnSync('cmake', ['--build', buildDir, '--target', 'llama-addon-engine-harness', '--parallel'], { encoding: 'utf8' });
    expect(r.status, `${r.stdout}\n${r.stderr}`).toBe(0);
    bin = join(buildDir, 'Release', 'llama-addon-engine-harness');
  }, 600_000);

  function run(...args: Array<string | number>): HarnessResult[] {
    const r = spawnSync(bin, [shared('stories260k.gguf'), ...args.map(String)], { encoding: 'utf8', timeout: 120_000 });
    expect(r.status, r.stderr).toBe(0);
    return r.stdout.trim().split('\n').map((l) => JSON.parse(l) as HarnessResult);
  }

  it.skipIf(!configured)('generates what the package generates, alone and three at once, and stops when aborted', async () => {
    const model = await loadModel(shared('stories260k.gguf'));
    await using ctx = await model.createContext({ contextSize: 512 });
    using session = ctx.createSession();
    const expected = await session.complete('Once upon a time', { maxTokens: 24, temperature: 0 });
    await model.dispose();

    const [one] = run('Once upon a time', 24);
    expect(one).toEqual({ seq: 0, stopReason: 'maxTokens', tokens: expected.tokens, text: expected.text });

    // Three sequences decoded in one batch per step give the same tokens.
    const three = run('Once upon a time', 24, 3);
    expect(three.map((r) => r.seq)).toEqual([0, 1, 2]);
    for (const r of three) expect(r.tokens).toEqual(expected.tokens);

    // Aborted once it has streamed 5 tokens: it ends with what it had, a prefix of the greedy text.
    const aborted = run('Once upon a time', 200, 2, 5);
    for (const r of aborted) {
      expect(r.stopReason).toBe('abort');
      expect(r.tokens.length).toBeGreaterThanOrEqual(5);
      expect(r.tokens.length).toBeLessThan(200);
      expect(expected.text.startsWith(r.text) || r.text.startsWith(expected.text)).toBe(true);
    }
  }, 120_000);
});

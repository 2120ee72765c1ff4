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
  evaluated: number;
  discarded: number;
  sequence: number[];
  mediaDecodes: number;
  error?: string;
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
    return runWith({}, ...args);
  }
  function runWith(env: Record<string, string>, ...args: Array<string | number>): HarnessResult[] {
    const r = spawnSync(bin, [shared('stories260k.gguf'), ...args.map(String)], { encoding: 'utf8', timeout: 120_000, env: { ...process.env, ...env } });
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
    expect(one).toMatchObject({ seq: 0, stopReason: 'maxTokens', tokens: expected.tokens, text: expected.text, mediaDecodes: 0 });

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

  // A prompt is chunks down to the engine (native/prompt.h): media chunks fill several positions and decode on
  // their own. The harness's stand-in media chunk decodes prompt tokens in a llama_decode of its own, so its
  // output must be the all-text prompt's; every cut the engine makes (the kept prefix, a context shift) keeps
  // a chunk whole.
  const story = 'Once upon a time there was a little girl';

  it.skipIf(!configured)('decodes a media chunk in its place and keeps it whole in every cut', () => {
    const [text] = run(story, 12);
    const [media] = runWith({ HARNESS_MEDIA: '3:7' }, story, 12);
    expect(media.tokens).toEqual(text.tokens);
    expect(media.evaluated).toBe(text.evaluated);
    expect(media.mediaDecodes).toBe(1);
    // The sequence holds the chunk's positions (LLAMA_TOKEN_NULL), the text around it as it was.
    expect(media.sequence).toEqual([...text.sequence.slice(0, 3), -1, -1, -1, -1, ...text.sequence.slice(7)]);

    // A second turn that keeps 5 positions (inside the chunk) decodes again from the chunk's start; one that
    // keeps 8 (after it) reuses it. Two sequences at once, each with its own chunk.
    const inside = runWith({ HARNESS_MEDIA: '3:7', HARNESS_KEEP2: '5' }, story, 12, 2);
    expect(inside).toHaveLength(4);
    for (const r of inside.slice(2)) {
      expect(r.tokens).toEqual(text.tokens);
      expect(r.evaluated).toBe(text.evaluated - 3);
      expect(r.mediaDecodes).toBe(2);
    }
    const after = runWith({ HARNESS_MEDIA: '3:7', HARNESS_KEEP2: '8' }, story, 12)[1];
    expect(after.tokens).toEqual(text.tokens);
    expect(after.evaluated).toBe(text.evaluated - 8);
    expect(after.mediaDecodes).toBe(1);

    // Context shifts in 64 cells (llama.cpp makes 256 of them), 400 tokens. Keep 3, drop 20: the chunk at 3..6
    // goes whole, the same cut as the text prompt's, and the same output.
    const shiftText = runWith({ HARNESS_CTX: '64', HARNESS_SHIFT: '3:20' }, story, 400)[0];
    const shiftMedia = runWith({ HARNESS_CTX: '64', HARNESS_MEDIA: '3:7', HARNESS_SHIFT: '3:20' }, story, 400)[0];
    expect(shiftText.discarded).toBeGreaterThan(0);
    expect(shiftMedia).toMatchObject({ stopReason: 'maxTokens', tokens: shiftText.tokens, discarded: shiftText.discarded, sequence: shiftText.sequence });
    // Keep 5, drop 2: both ends fall inside the chunk, so the first shift keeps 3 and drops it whole (4).
    const split = runWith({ HARNESS_CTX: '64', HARNESS_MEDIA: '3:7', HARNESS_SHIFT: '5:2' }, story, 400)[0];
    expect(split.stopReason).toBe('maxTokens');
    expect(split.discarded).toBeGreaterThan(0);
    expect(split.sequence).not.toContain(-1);
    expect(split.sequence.slice(0, 5)).toEqual([...text.sequence.slice(0, 3), ...text.sequence.slice(7, 9)]);

    // A prompt that ends with media has no logits to start from.
    const [ends] = runWith({ HARNESS_MEDIA: '1:12' }, story, 12);
    expect(ends).toMatchObject({ stopReason: 'error', tokens: [] });
    expect(ends.error).toMatch(/ends with a media chunk/);
  }, 120_000);

  it.skipIf(!configured)('cuts and bounds media chunks as a plain model of them does (random prompts)', () => {
    const r = spawnSync(bin, ['--prompt-sweep'], { encoding: 'utf8', timeout: 60_000 });
    expect(r.status, r.stderr).toBe(0);
    expect((JSON.parse(r.stdout) as { promptSweep: number }).promptSweep).toBeGreaterThan(10_000);
  });
});

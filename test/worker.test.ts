// Worker threads: each loads its own model; the addon runs in several threads at once, and a thread that is
// terminated in the middle of a generation takes nothing else down.
import { spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { pathToFileURL } from 'node:url';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { loadModel } from 'llama-addon';
import { writeSyntheticLlama } from '../lib/gguf/index.js';
import { describeShared, fixtures, repoRoot, shared, vocab } from './helpers/models.js';

// Worker threads do not inherit the test runner's TypeScript loader: register tsx in the thread first.
const bootstrap = "import('tsx/esm/api').then((api) => { api.register(); return import(require('node:worker_threads').workerData.file); })";
const workerFile = pathToFileURL(join(repoRoot, 'test', 'helpers', 'worker-generate.ts')).href;

function startWorker(data: Record<string, unknown>): Worker {
  return new Worker(bootstrap, { eval: true, workerData: { file: workerFile, ...data } });
}

const firstMessage = <T>(w: Worker) =>
  new Promise<T>((resolve, reject) => {
    w.once('message', resolve);
    w.once('error', reject);
    w.once('exit', (code) => reject(new Error(`worker exited with code ${code} before answering`)));
  });


describeShared('worker threads', () => {
  it('two threads generate at once, each with its own model, the same text as the main thread', async () => {
    const path = shared('stories260k.gguf');
    const prompts = ['Once upon a time', 'The little dog'];
    const model = await loadModel(path);
    const ctx = await model.createContext({ contextSize: 512 });
    const expected = [];
    for (const p of prompts) {
      using session = ctx.createSession();
      expected.push((await session.complete(p, { maxTokens: 24, temperature: 0 })).text);
    }
    await model.dispose();

    const workers = prompts.map((prompt) => startWorker({ model: path, prompt }));
    const exits = workers.map((w) => new Promise<number>((r) => w.once('exit', r)));
    const answers = await Promise.all(workers.map((w) => firstMessage<{ text: string }>(w)));
    expect(answers.map((a) => a.text)).toEqual(expected);
    // Each thread ends by itself once its model is disposed: nothing native keeps it alive.
    expect(await Promise.all(exits)).toEqual([0, 0]);
  });

  it('terminating a thread in the middle of a generation leaves the process and other threads working', async () => {
    const path = shared('stories260k.gguf');
    const busy = startWorker({ model: path, prompt: 'Once upon a time', endless: true });
    await firstMessage(busy);
    expect(await busy.terminate()).toBe(1);
    // The main thread and a new thread still work.
    const model = await loadModel(path);
    const ctx = await model.createContext({ contextSize: 256 });
    const r = await ctx.createSession().complete('Once upon a time', { maxTokens: 8, temperature: 0 });
    expect(r.tokens.length).toBe(8);
    await model.dispose();
    const again = startWorker({ model: path, prompt: 'Once upon a time' });
    const exited = new Promise<number>((r) => again.once('exit', r));
    const { text } = await firstMessage<{ text: string }>(again);
    expect(text.length).toBeGreaterThan(10);
    expect(await exited).toBe(0);
  });
});

// Work off the JS thread settles through thread-safe functions, which Node frees when a thread ends; a work
// thread that called one afterwards ended the whole process with SIGABRT (native/env_gate.h).
describeShared('worker threads terminated during native work', () => {
  it('a load, a context, a quantize or a grammar match in flight when its thread ends takes nothing down', async () => {
    const model = join(fixtures, 'terminate-f32.gguf');
    await writeSyntheticLlama(model, { vocabFrom: vocab('llama-spm'), embeddingLength: 512, layers: 4, heads: 8, headsKv: 4, feedForwardLength: 2048, type: 'f32', seed: 1 });
    const out = join(fixtures, 'terminate-q8.gguf');
    const r = spawnSync(process.execPath, ['--import', 'tsx', join(repoRoot, 'test', 'helpers', 'terminate-work-child.ts'), model, shared('stories260k.gguf'), out], {
      cwd: repoRoot,
      encoding: 'utf8',
      timeout: 240_000,
    });
    rmSync(out, { force: true });
    rmSync(`${out}.partial`, { force: true });
    expect(r.signal, r.stderr.slice(-2000)).toBeNull();
    expect(r.status, r.stderr.slice(-2000)).toBe(0);
    expect(r.stdout).toContain('terminated during match (after 150 ms)');
    expect(r.stdout).toContain('main still works');
  }, 300_000);
});

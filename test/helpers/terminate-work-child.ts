// Run by test/worker.test.ts in a child process: a worker thread starts native work (a model load without
// mmap, a context, a quantize, a long grammar match, embeddings, session saves, a beam search), posts once it
// is under way, and is terminated while the work runs; then the main thread loads and generates. Prints "main still works" at the end; a crash
// (the work thread calling into the torn-down thread's functions) ends the process before.
import { rmSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { loadModel, setLogLevel } from '../../lib/index.js';

setLogLevel('error');
const [model, small, out] = process.argv.slice(2);
const bootstrap = "import('tsx/esm/api').then((api) => { api.register(); return import(require('node:worker_threads').workerData.file); })";
const file = new URL('./terminate-work-worker.ts', import.meta.url).href;
for (const mode of ['load', 'context', 'quantize', 'match', 'embed', 'save', 'beam']) {
  for (const delay of [0, 20, 150]) {
    const w = new Worker(bootstrap, { eval: true, workerData: { file, mode, model, small, out } });
    await new Promise((resolve, reject) => {
      w.once('message', resolve);
      w.once('error', reject);
    });
    await new Promise((r) => setTimeout(r, delay));
    await w.terminate();
    console.log(`terminated during ${mode} (after ${delay} ms)`);
  }
}
await new Promise((r) => setTimeout(r, 1500)); // the abandoned work finishes on the pools meanwhile
const m = await loadModel(small);
const ctx = await m.createContext({ contextSize: 128 });
const r = await ctx.createSession().complete('Once', { maxTokens: 3, temperature: 0 });
await m.dispose();
rmSync(`${out}.session`, { force: true });
console.log(r.tokens.length === 3 ? 'main still works' : 'main generated nothing');

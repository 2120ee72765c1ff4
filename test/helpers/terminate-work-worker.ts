// The worker side of terminate-work-child.ts: starts the asked-for native work, posts, and waits.
import { parentPort, workerData } from 'node:worker_threads';
import { loadModel, quantize, setLogLevel } from '../../lib/index.js';

setLogLevel('error');
const { mode, model, small, out } = workerData as { mode: string; model: string; small: string; out: string };
if (mode === 'load') {
  const p = loadModel(model, { useMmap: false });
  parentPort!.postMessage('started');
  await p;
} else if (mode === 'context') {
  const m = await loadModel(model);
  const p = m.createContext({ contextSize: 4096 });
  parentPort!.postMessage('started');
  await p;
} else if (mode === 'quantize') {
  const p = quantize(model, out, 'Q8_0');
  parentPort!.postMessage('started');
  await p;
} else if (mode === 'embed') {
  // Work on the context's engine thread (an EngineTask), settled through its own thread-safe function.
  const m = await loadModel(small);
  const ctx = await m.createContext({ embeddings: true, contextSize: 512 });
  const p = Promise.all(Array.from({ length: 20 }, () => ctx.embed('Once upon a time there was '.repeat(10))));
  parentPort!.postMessage('started');
  await p;
} else if (mode === 'save') {
  const m = await loadModel(small);
  const ctx = await m.createContext({ contextSize: 512 });
  const s = ctx.createSession();
  await s.complete('Once upon a time there was '.repeat(12), { maxTokens: 1 });
  const p = (async () => {
    for (let i = 0; i < 20; i++) await s.save(out + '.session');
  })();
  parentPort!.postMessage('started');
  await p;
} else if (mode === 'beam') {
  const m = await loadModel(small);
  const ctx = await m.createContext({ contextSize: 512, sequences: 8 });
  const p = ctx.createSession().complete('Once upon a time', { beams: 4, maxTokens: 60 });
  parentPort!.postMessage('started');
  await p;
} else {
  const m = await loadModel(small);
  const p = m.matchesGrammar('a'.repeat(20_000) + 'b'.repeat(20_000), 'root ::= "a" root "b" | ""');
  parentPort!.postMessage('started');
  await p;
}

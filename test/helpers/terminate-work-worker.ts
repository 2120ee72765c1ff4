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
} else {
  const m = await loadModel(small);
  const p = m.matchesGrammar('a'.repeat(20_000) + 'b'.repeat(20_000), 'root ::= "a" root "b" | ""');
  parentPort!.postMessage('started');
  await p;
}

// A worker thread with its own model: generates greedily and posts the text back; with `endless`, it keeps
// generating until the test terminates the thread.
import { parentPort, workerData } from 'node:worker_threads';
import { loadModel, setLogLevel } from '../../lib/index.js';

const { model: path, prompt, endless } = workerData as { model: string; prompt: string; endless?: boolean };
setLogLevel('error');
const model = await loadModel(path);
const ctx = await model.createContext({ contextSize: 512 });
// Context shift keeps the endless generation going past the end of the context until the thread is ended.
const session = ctx.createSession({ contextShift: 'auto' });
if (endless) {
  const gen = session.generate(prompt, { maxTokens: 100_000, temperature: 0.8, seed: 1, logitBias: { [model.vocab.eos!]: -Infinity } });
  let n = 0;
  for await (const _ of gen) if (++n === 5) parentPort!.postMessage({ generating: true });
} else {
  const r = await session.complete(prompt, { maxTokens: 24, temperature: 0 });
  parentPort!.postMessage({ text: r.text });
  await model.dispose();
}

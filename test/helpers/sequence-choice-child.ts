// A child process for test/sequence-choice.test.ts: sixteen sessions hold the sixteen sequences of a context
// (their caches idle), used last in an order that makes sequences 0, 8 and 15 the least recently used; then
// three new conversations start at once, and their sequences must be evicted. Prints the new sessions' texts
// as one line of JSON, and `phase:` marks on stderr around their generation (the engine's step trace is on
// stderr too, with LLAMA_ADDON_PROFILE=steps from the parent).
import { loadModel, setLogLevel } from 'llama-addon';

setLogLevel('error');
const model = await loadModel(process.argv[2]);
const ctx = await model.createContext({ contextSize: 128, sequences: 16, threads: 1 });
const greedy = { temperature: 0 } as const;
const old = Array.from({ length: 16 }, () => ctx.createSession({ sharePrefix: false }));
// One at a time, so that session i holds sequence i ...
for (const [i, s] of old.entries()) await s.complete(`Tale ${i}: once upon a time`, { maxTokens: 2, ...greedy });
// ... and then used again in an order that leaves 0, 8 and 15 the least recently used.
for (const i of [1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14]) await old[i]!.complete([...old[i]!.tokens], { maxTokens: 1, ...greedy });
process.stderr.write('phase: busy\n');
const fresh = Array.from({ length: 3 }, () => ctx.createSession({ sharePrefix: false }));
const texts = await Promise.all(fresh.map((s, i) => s.complete(`Story ${i}: a little dog`, { maxTokens: 24, ...greedy }).then((r) => r.text)));
process.stderr.write('phase: after\n');
// The evicted sessions' caches wait in host memory: the next turn finds them whole.
const back = await old[0]!.complete([...old[0]!.tokens], { maxTokens: 1, ...greedy });
console.log(JSON.stringify({ texts, cachedBack: back.usage.cachedTokens, heldBack: old[0]!.tokens.length - 1 }));
await ctx.dispose();
await model.dispose();

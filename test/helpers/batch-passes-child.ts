// A child process for test/batch-passes.test.ts: eight sessions on eight sequences; six generate at once
// while sessions 2 and 3 stay idle between turns, then those two take their next turn on their caches.
// Prints the results as one line of JSON. The engine reads LLAMA_ADDON_NO_PLACEHOLDERS and
// LLAMA_ADDON_PROFILE from the environment the parent gives.
import { rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModel, setLogLevel } from 'llama-addon';

setLogLevel('error');
const model = await loadModel(process.argv[2]);
const ctx = await model.createContext({ contextSize: 256, sequences: 8, threads: 1 });
const sessions = Array.from({ length: 8 }, () => ctx.createSession({ sharePrefix: false }));
const greedy = { temperature: 0, repeatPenalty: 1.1 } as const;
const first = await Promise.all(sessions.map((s, i) => s.complete(`Story ${i}: once upon a time`, { maxTokens: 2 + i, ...greedy })));
// The parent reads the busy phase's steps between these marks (the first phase may run all eight at once).
process.stderr.write('phase: busy\n');
const busy = await Promise.all(
  sessions.map((s, i) => (i === 2 || i === 3 ? null : s.complete([...s.tokens, ...model.tokenize(' and then', { addBos: false })], { maxTokens: 40, ...greedy }))),
);
process.stderr.write('phase: after\n');
// What the idle sessions' sequences hold now: their saved states, byte for byte as without placeholders.
const states: number[] = [];
for (const i of [2, 3]) {
  const file = join(tmpdir(), `llama-addon-batch-passes-${process.pid}-${i}.session`);
  await sessions[i].save(file);
  states.push(statSync(file).size);
  rmSync(file);
}
const idle = [];
for (const i of [2, 3]) {
  const s = sessions[i];
  const held = s.tokens.length;
  const r = await s.complete([...s.tokens, ...model.tokenize(' so', { addBos: false })], { maxTokens: 16, ...greedy });
  idle.push({ text: r.text, cached: r.usage.cachedTokens, held });
}
console.log(JSON.stringify({ first: first.map((r) => r.text), busy: busy.map((r) => r?.text ?? null), idle, states }));
await ctx.dispose();
await model.dispose();

// Measures llama-addon in its own process. Usage: tsx bench/addon-worker.ts '<WorkerArgs JSON>'
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { jsonSchemaToGrammar, loadModel, setLogLevel } from '../lib/index.js';
import { promptTokens, report, type WorkerArgs } from './stats.js';

setLogLevel('error');
const args = JSON.parse(process.argv[2]) as WorkerArgs;

const loadMs: number[] = [];
for (let i = 0; i < 2; i++) {
  const t = performance.now();
  await (await loadModel(args.model, { gpuLayers: args.gpuLayers ?? 0 })).dispose();
  loadMs.push(performance.now() - t);
}
const t0 = performance.now();
const model = await loadModel(args.model, { gpuLayers: args.gpuLayers ?? 0 });
loadMs.push(performance.now() - t0);
const ctx = await model.createContext({
  contextSize: args.prompt + args.gen + 16,
  ...(args.threads ? { threads: args.threads } : {}),
});
const tokens = Int32Array.from(promptTokens(args.prompt, args.vocabSize, args.bos));
const banned: Record<number, number> = {};
for (let t = 0; t < model.vocab.size; t++) if (model.vocab.isEndOfGeneration(t)) banned[t] = -Infinity;

const pp: number[] = [];
const tg: number[] = [];
const ttft: number[] = [];
const p99: number[] = [];
const json: number[] = [];
const notes = new Set<string>();
// Generation under llama.cpp's grammar for a JSON schema (an array of strings), with the array left open so
// that the grammar never ends it: end-of-generation tokens are banned, as in the other runs.
const grammar = jsonSchemaToGrammar({ type: 'array', items: { type: 'string' } }).replace(
  /^root ::= .*$/m,
  'root ::= "[" space string ("," space string)*',
);
const session = ctx.createSession();
// One warm-up run, as llama-bench does.
await session.complete(tokens.subarray(0, 16), { maxTokens: 4, temperature: 0, logitBias: banned });
const start = args.bos !== null ? [args.bos] : [tokens[0]];
for (let r = 0; r < args.reps; r++) {
  // Prompt processing and time to first token: the whole prompt, one token out.
  session.reset();
  const pr = await session.complete(tokens, { maxTokens: 1, temperature: 0, logitBias: banned });
  pp.push((args.prompt * 1000) / pr.timings.promptMs);
  ttft.push(pr.timings.timeToFirstTokenMs);
  // Generation as llama-bench's tg test does it (from an empty context), streamed to a for-await loop.
  for (const monitored of [false, true]) {
    // Speed is measured without the event-loop monitor (its timer wakes the JS thread every millisecond);
    // the event-loop delay in a second, identical run.
    session.reset();
    const histogram = monitorEventLoopDelay({ resolution: 1 });
    const signal = AbortSignal.timeout(args.budgetSeconds * 1000);
    const gen = session.generate(start, { maxTokens: args.gen, temperature: 0, logitBias: banned, signal });
    if (monitored) histogram.enable();
    for await (const _ of gen) {
      // a consumer that does nothing, as a fast UI would
    }
    histogram.disable();
    const result = await gen.result;
    if (monitored) p99.push(histogram.percentile(99) / 1e6);
    else tg.push(result.timings.tokensPerSecond);
  }
  session.reset();
  try {
    const constrained = session.generate(start, { maxTokens: args.gen, temperature: 0, logitBias: banned, grammar, signal: AbortSignal.timeout(args.budgetSeconds * 1000) });
    for await (const _ of constrained) {
      // as above
    }
    json.push((await constrained.result).timings.tokensPerSecond);
  } catch (e) {
    // A vocabulary without the grammar's characters (no "[" token, no byte fallback) cannot follow it.
    notes.add(`no JSON-schema run: ${(e as Error).message.slice(0, 120)}`);
  }
}
session.dispose();
const threads = ctx.threads;
await model.dispose();

report('llama-addon', threads, { loadMs, pp, tg, ttft, p99, json }, [...notes], args.gpuLayers ?? 0);

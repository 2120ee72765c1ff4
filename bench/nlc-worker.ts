// Measures node-llama-cpp (the pinned devDependency, with its prebuilt binary) in its own process.
// Usage: tsx bench/nlc-worker.ts '<WorkerArgs JSON>'   (threads absent: node-llama-cpp's own defaults)
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { getLlama, LlamaLogLevel, TokenBias, type Token } from 'node-llama-cpp';
import { promptTokens, report, type WorkerArgs } from './stats.js';

const args = JSON.parse(process.argv[2]) as WorkerArgs;
const notes: string[] = [];
const llama = await getLlama({ gpu: false, build: 'never', usePrebuiltBinaries: true, skipDownload: true, logLevel: LlamaLogLevel.error, progressLogs: false });

const loadMs: number[] = [];
const t0 = performance.now();
const model = await llama.loadModel({ modelPath: args.model, gpuLayers: 0 });
loadMs.push(performance.now() - t0);
const context = await model.createContext({
  contextSize: args.prompt + args.gen + 16,
  ...(args.threads ? { threads: args.threads } : {}),
});
const threads = context.currentThreads;
const tokens = promptTokens(args.prompt, args.vocabSize, args.bos) as Token[];
const bias = new TokenBias(model.tokenizer);
if (model.tokens.eos !== null) bias.set(model.tokens.eos, 'never');
if (model.tokens.eot !== null) bias.set(model.tokens.eot, 'never');

const pp: number[] = [];
const tg: number[] = [];
const ttft: number[] = [];
const p99: number[] = [];
const sequence = context.getSequence();
// One warm-up run, as llama-bench and the llama-addon worker do.
{
  let n = 0;
  for await (const _ of sequence.evaluate(tokens.slice(0, 16), { temperature: 0, tokenBias: bias })) if (++n >= 4) break;
}
const first = (args.bos !== null ? [args.bos] : [tokens[0]]) as Token[];
for (let r = 0; r < args.reps; r++) {
  // Prompt processing and time to first token: the whole prompt, one token out.
  await sequence.clearHistory();
  let start = performance.now();
  for await (const _ of sequence.evaluate(tokens, { temperature: 0, tokenBias: bias })) break;
  const ttftMs = performance.now() - start;
  ttft.push(ttftMs);
  pp.push((args.prompt * 1000) / ttftMs);
  // Generation from an empty context, as llama-bench's tg test; speed without the event-loop monitor,
  // the event-loop delay in a second run.
  let deadline = 0;
  for (const monitored of [false, true]) {
    await sequence.clearHistory();
    const histogram = monitorEventLoopDelay({ resolution: 1 });
    start = performance.now();
    let firstAt = 0;
    let n = 0;
    deadline = start + args.budgetSeconds * 1000;
    if (monitored) histogram.enable();
    for await (const _ of sequence.evaluate(first, { temperature: 0, tokenBias: bias })) {
      n++;
      if (n === 1) firstAt = performance.now();
      if (n >= args.gen || performance.now() > deadline) break;
    }
    histogram.disable();
    const end = performance.now();
    if (monitored) {
      p99.push(histogram.percentile(99) / 1e6);
    } else {
      if (n < args.gen) notes.push(`run ${r + 1}: stopped after ${n} of ${args.gen} tokens (${args.budgetSeconds} s budget)`);
      if (n > 1) tg.push(((n - 1) * 1000) / (end - firstAt));
      if (performance.now() > deadline) break; // no time left for the monitored run
    }
  }
  if (performance.now() > deadline && r + 1 < args.reps) {
    notes.push(`stopped after ${r + 1} runs (time budget)`);
    break;
  }
}
await context.dispose();
await model.dispose();
await llama.dispose();

report('node-llama-cpp', threads, { loadMs, pp, tg, ttft, p99 }, notes);

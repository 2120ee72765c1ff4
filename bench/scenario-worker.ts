// Measures llama-addon in scenarios beyond one session. Usage: tsx bench/scenario-worker.ts '<ScenarioArgs JSON>'
//   batched:     N sessions of one context generating at once (as llama-batched-bench does it)
//   speculative: a target model alone, with a draft model, and with prompt lookup
//   sessions:    many conversations of several turns, interleaved, on few resident sequences: caches kept in
//                host memory against every turn decoding its prompt again (cacheRamBytes: 0)
//   contention:  one session's prompt and generation speed at a thread setting (a count or 'auto'), while
//                the parent keeps cores busy or not
import { loadModel, setLogLevel } from '../lib/index.js';
import { promptTokens } from './stats.js';

setLogLevel('error');

export interface ScenarioArgs {
  scenario: 'batched' | 'speculative' | 'sessions' | 'contention';
  /** contention: the context's threads option, and the longest a generation may take (seconds) */
  threadSetting?: number | 'auto';
  seconds?: number;
  /** sessions: conversations, turns each, resident sequences, new tokens per turn */
  chats?: number;
  turns?: number;
  sequences?: number;
  model: string;
  draft?: string;
  threads?: number;
  prompt: number;
  gen: number;
  parallel: number[];
  reps: number;
  vocabSize: number;
  bos: number | null;
}

const args = JSON.parse(process.argv[2]) as ScenarioArgs;
const model = await loadModel(args.model, { gpuLayers: 0 });
const banned: Record<number, number> = {};
for (let t = 0; t < model.vocab.size; t++) if (model.vocab.isEndOfGeneration(t)) banned[t] = -Infinity;
const out: Record<string, number[]> = {};
const push = (k: string, v: number) => (out[k] ??= []).push(v);

if (args.scenario === 'batched') {
  const maxPl = Math.max(...args.parallel);
  const ctx = await model.createContext({
    contextSize: args.prompt + args.gen + 16,
    sequences: maxPl,
    ...(args.threads ? { threads: args.threads } : {}),
  });
  // Different prompts per session, as llama-batched-bench uses (no shared prefix).
  const prompts = Array.from({ length: maxPl }, (_, i) => promptTokens(args.prompt + i + 1, args.vocabSize, args.bos).slice(i + 1));
  if (args.bos !== null) prompts.forEach((p) => (p[0] = args.bos!));
  const sessions = Array.from({ length: maxPl }, () => ctx.createSession({ sharePrefix: false }));
  await sessions[0].complete(prompts[0].slice(0, 16), { maxTokens: 2, temperature: 0, logitBias: banned }); // warm-up
  for (let r = 0; r < args.reps; r++) {
    for (const pl of args.parallel) {
      const active = sessions.slice(0, pl);
      active.forEach((s) => s.reset());
      // Prompts first (decoded together), then the timed generation phase, as the reference measures it.
      await Promise.all(active.map((s, i) => s.complete(prompts[i], { maxTokens: 1, temperature: 0, logitBias: banned })));
      const t0 = performance.now();
      const results = await Promise.all(
        active.map((s, i) => s.complete(prompts[i], { maxTokens: args.gen, temperature: 0, logitBias: banned })),
      );
      const seconds = (performance.now() - t0) / 1000;
      push(`tg${pl}`, results.reduce((n, x) => n + x.usage.completionTokens, 0) / seconds);
    }
  }
} else if (args.scenario === 'contention') {
  const ctx = await model.createContext({ contextSize: args.prompt + args.gen + 16, sequences: 1, threads: args.threadSetting ?? 'auto' });
  const session = ctx.createSession({ sharePrefix: false });
  const prompt = promptTokens(args.prompt, args.vocabSize, args.bos);
  await session.complete(prompt.slice(0, 8), { maxTokens: 8, temperature: 0, logitBias: banned }); // warm-up
  for (let r = 0; r < args.reps; r++) {
    session.reset();
    let t0 = performance.now();
    await session.complete(prompt, { maxTokens: 1, temperature: 0, logitBias: banned });
    push('pp', prompt.length / ((performance.now() - t0) / 1000));
    // Generation: `gen` tokens, or as many as `seconds` allow (a slow setting would take minutes).
    const signal = AbortSignal.timeout((args.seconds ?? 10) * 1000);
    t0 = performance.now();
    const g = await session.complete(prompt, { maxTokens: args.gen, temperature: 0, logitBias: banned, signal });
    push('tg', (g.usage.completionTokens - 1) / ((performance.now() - t0 - g.timings.timeToFirstTokenMs) / 1000));
    push('threadsInUse', ctx.threadsInUse.generation);
  }
} else if (args.scenario === 'sessions') {
  const chats = args.chats ?? 64;
  const turns = args.turns ?? 4;
  for (const mode of ['kept', 'redecoded'] as const) {
    const ctx = await model.createContext({
      contextSize: 1 + turns * (args.prompt + args.gen) + 16,
      sequences: args.sequences ?? 4,
      ...(mode === 'redecoded' ? { cacheRamBytes: 0 } : {}),
      ...(args.threads ? { threads: args.threads } : {}),
    });
    const sessions = Array.from({ length: chats }, () => ctx.createSession({ sharePrefix: false }));
    const history: number[][] = sessions.map(() => (args.bos !== null ? [args.bos] : []));
    let cached = 0;
    let prompt = 0;
    const t0 = performance.now();
    for (let turn = 0; turn < turns; turn++) {
      // Round robin: every conversation's turn comes after all the others', as users of one server.
      for (let c = 0; c < chats; c++) {
        const user = promptTokens(args.prompt + 1, args.vocabSize, null).slice(1).map((t, i) => 3 + ((t + c * 7919 + turn * 104729 + i) % (args.vocabSize - 3)));
        const input = [...history[c], ...user];
        const r = await sessions[c].complete(input, { maxTokens: args.gen, temperature: 0, logitBias: banned });
        history[c] = [...input, ...r.tokens];
        if (turn > 0) {
          cached += r.usage.cachedTokens;
          prompt += r.usage.promptTokens;
          push(`${mode}.ttft`, r.timings.timeToFirstTokenMs);
        }
      }
    }
    push(`${mode}.seconds`, (performance.now() - t0) / 1000);
    push(`${mode}.hitRate`, prompt > 0 ? cached / prompt : 0);
    push(`${mode}.savedMiB`, ctx.savedCacheBytes / 2 ** 20);
    await ctx.dispose();
  }
} else {
  const draft = await loadModel(args.draft!, { gpuLayers: 0 });
  const base = { contextSize: args.prompt + args.gen + 64, ...(args.threads ? { threads: args.threads } : {}) };
  const contexts = {
    plain: await model.createContext(base),
    draft: await model.createContext({ ...base, draftModel: draft }),
    lookup: await model.createContext({ ...base, lookupNgram: 3 }),
  };
  const prompt = '<|start_story|>Once upon a time';
  for (let r = 0; r < args.reps; r++) {
    for (const [name, ctx] of Object.entries(contexts)) {
      const s = ctx.createSession({ sharePrefix: false });
      const res = await s.complete(prompt, { maxTokens: args.gen, temperature: 0 });
      push(`${name}.tps`, res.timings.tokensPerSecond);
      if (res.speculative) push(`${name}.acceptance`, res.speculative.acceptanceRate);
      s.dispose();
    }
  }
  await draft.dispose();
}
await model.dispose();
console.log(JSON.stringify(out));

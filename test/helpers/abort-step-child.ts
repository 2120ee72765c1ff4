// A child process for test/abort-step.test.ts: long prompts alone on a context, cut off by an abort or a
// dispose while a step decodes. Prints `phase:` marks on stderr around each part (the engine's step trace is
// on stderr too, with LLAMA_ADDON_PROFILE=steps from the parent) and what it measured as one line of JSON.
import { loadModel, setLogLevel } from 'llama-addon';

setLogLevel('error');
const model = await loadModel(process.argv[2]!);
const options = { contextSize: 2048, sequences: 1, batchSize: 512, threads: 1 } as const;
const long = model.tokenize('the quick brown fox jumps over the lazy dog '.repeat(160)).slice(0, 1500);
const question = 'Once upon a time';
const greedy = { temperature: 0, maxTokens: 12 } as const;
// Until the engine has taken the prompt's first step: a step of 512 tokens takes far longer than this.
const intoTheStep = () => new Promise((r) => setTimeout(r, 150));

let ctx = await model.createContext(options);
process.stderr.write('phase: full\n');
const full = performance.now();
await ctx.createSession().complete(long.slice(0, 512), { ...greedy, maxTokens: 1 });
const fullMs = performance.now() - full;

process.stderr.write('phase: abort\n');
const session = ctx.createSession();
const ac = new AbortController();
const pending = session.complete(long, { ...greedy, signal: ac.signal });
await intoTheStep();
const t0 = performance.now();
ac.abort();
const aborted = await pending;
const abortMs = performance.now() - t0;
// The session goes on from what its sequence holds: the same answer as a context that never saw the prompt.
const after = await session.complete(question, greedy);
process.stderr.write('phase: fresh\n');
const fresh = await (await model.createContext(options)).createSession().complete(question, greedy);

process.stderr.write('phase: dispose\n');
ctx = await model.createContext(options);
const cut = ctx.createSession().complete(long, greedy);
await intoTheStep();
const t1 = performance.now();
await ctx.dispose();
const disposeMs = performance.now() - t1;
const cutResult = await cut;

// Work that runs on the engine as a whole (a beam search, embeddings) is cut off by a dispose too, and
// rejects with ERR_DISPOSED.
process.stderr.write('phase: tasks\n');
const settle = (p: Promise<unknown>) => p.then(() => 'resolved', (e: { code?: string }) => String(e.code));
ctx = await model.createContext({ ...options, sequences: 8 });
const beam = settle(ctx.createSession().complete(long.slice(0, 1000), { beams: 4, maxTokens: 64 }));
await intoTheStep();
const t2 = performance.now();
await ctx.dispose();
const beamDisposeMs = performance.now() - t2;
// A beam search's own abort (its signal) cuts off its prompt's decode too; the session goes on from the
// batches decoded before it (none here).
ctx = await model.createContext({ ...options, sequences: 8 });
const searcher = ctx.createSession();
const beamAc = new AbortController();
const searching = searcher.complete(long.slice(0, 1000), { beams: 4, maxTokens: 64, signal: beamAc.signal });
await intoTheStep();
const t4 = performance.now();
beamAc.abort();
const beamAborted = await searching;
const beamAbortMs = performance.now() - t4;
const beamAfter = await searcher.complete(question, greedy);
await ctx.dispose();
ctx = await model.createContext({ contextSize: 2048, embeddings: true, threads: 1 });
const embed = settle(ctx.embed(Array.from({ length: 8 }, (_, i) => `text ${i} ` + 'the quick brown fox jumps over the lazy dog '.repeat(40))));
await intoTheStep();
const t3 = performance.now();
await ctx.dispose();
const embedDisposeMs = performance.now() - t3;
process.stderr.write('phase: end\n');
console.log(
  JSON.stringify({
    fullMs,
    abortMs,
    abortedReason: aborted.stopReason,
    after: after.text,
    afterCached: after.usage.cachedTokens,
    fresh: fresh.text,
    disposeMs,
    cutReason: cutResult.stopReason,
    beam: await beam,
    beamDisposeMs,
    beamAbortReason: beamAborted.stopReason,
    beamAbortTokens: beamAborted.tokens.length,
    beamAbortMs,
    beamAfter: beamAfter.text,
    embed: await embed,
    embedDisposeMs,
  }),
);
await model.dispose();

// A child process for test/gather.test.ts: four prompts submitted a fraction of a millisecond apart to an
// engine with nothing to run, after a warm-up that gives it the pace of its steps. Prints `phase:` marks on
// stderr around them (the engine's step trace is on stderr too, with LLAMA_ADDON_PROFILE=steps from the
// parent) and the texts as one line of JSON. Then six prompts that one batch cannot hold (phase `overflow`),
// a prompt that comes while another session generates (`late`), one long prompt alone (`alone`), and short
// prompts on a context that never decoded a long one (`short`).
import { loadModel, setLogLevel } from 'llama-addon';

setLogLevel('error');
const model = await loadModel(process.argv[2]!);
const greedy = { temperature: 0, maxTokens: 200 } as const;
const text = (i: number) => `Prompt ${i}: ` + 'the quick brown fox jumps over the lazy dog '.repeat(25);
type Context = Awaited<ReturnType<typeof model.createContext>>;

/** A context whose engine has decoded a prompt: it knows the pace of its steps (and sizes its waits by it). */
async function warmed(options: Parameters<typeof model.createContext>[0]): Promise<Context> {
  const ctx = await model.createContext(options);
  const warm = ctx.createSession();
  await warm.complete(text(9), { ...greedy, maxTokens: 8 });
  warm.dispose();
  return ctx;
}

/** `n` prompts submitted 0.3 ms apart (phase `phase`). */
async function burst(ctx: Context, n: number, phase: string, maxTokens: number): Promise<{ texts: string[]; prompts: number[] }> {
  const sessions = Array.from({ length: n }, () => ctx.createSession({ sharePrefix: false }));
  // Token ids, so that nothing asynchronous stands between a call and its submission to the engine.
  const prompts = sessions.map((_, i) => model.tokenize(text(i)));
  process.stderr.write(`phase: ${phase}\n`);
  const results: Array<Promise<string>> = [];
  for (const [i, s] of sessions.entries()) {
    results.push(s.complete(prompts[i]!, { ...greedy, maxTokens }).then((r) => r.text));
    const until = performance.now() + 0.3;
    while (performance.now() < until) {
      // 0.3 ms between submissions, as requests parsed one after another reach it
    }
  }
  const texts = await Promise.all(results);
  process.stderr.write(`phase: after-${phase}\n`);
  return { texts, prompts: prompts.map((p) => p.length) };
}

const ctx = await warmed({ contextSize: 512, sequences: 4, batchSize: 2048, threads: 1 });
const { texts } = await burst(ctx, 4, 'burst', greedy.maxTokens);
await ctx.dispose();
// Six prompts together, more than one batch holds: the ones cut off finish in the next step, whole (they
// came with the ones that started), so that all six generate in step.
const six = await warmed({ contextSize: 512, sequences: 6, batchSize: 1024, threads: 1 });
const { prompts: sixPrompts } = await burst(six, 6, 'overflow', 24);
// A prompt that comes while another session generates is decoded in chunks of promptChunkSize tokens (the
// default, 128), so that it does not stall the other for long.
const [first, late] = [six.createSession({ sharePrefix: false }), six.createSession({ sharePrefix: false })];
process.stderr.write('phase: late\n');
const running = first.generate('Once upon a time', { ...greedy, maxTokens: 60 });
const iterator = running[Symbol.asyncIterator]();
await iterator.next();  // its first token: it is generating
const lateDone = late.complete(model.tokenize(text(7)), { ...greedy, maxTokens: 2 });
for (let c = await iterator.next(); !c.done; c = await iterator.next()) {
  // the rest of its tokens
}
await lateDone;
process.stderr.write('phase: late-end\n');
// A long prompt (P) and a short one (Q) come while G generates (60 tokens: it still does when they come),
// with promptChunkSize 32: P goes in chunks, and Q's few tokens are not kept waiting for all of P.
const chunky = await warmed({ contextSize: 512, sequences: 3, batchSize: 1024, threads: 1, promptChunkSize: 32 });
const [gSession, pSession, qSession] = [0, 1, 2].map(() => chunky.createSession({ sharePrefix: false }));
process.stderr.write('phase: reclass\n');
const gGen = gSession!.generate('Once upon a time', { ...greedy, maxTokens: 60 });
const gChunks = gGen[Symbol.asyncIterator]();
await gChunks.next();
const pDone = pSession!.complete(model.tokenize('the quick brown fox jumps over the lazy dog '.repeat(60)).slice(0, 420), { ...greedy, maxTokens: 2 });
const qDone = qSession!.complete(model.tokenize('Lily and Tom'), { ...greedy, maxTokens: 40 });
for (let c = await gChunks.next(); !c.done; c = await gChunks.next()) {
  // G's other tokens
}
await Promise.all([pDone, qDone]);
process.stderr.write('phase: reclass-end\n');
await chunky.dispose();
await six.dispose();
// A long prompt that came with a short one, too long for the next step: while the short one generates, it
// is decoded in chunks of 128 tokens, so that the short one gets a token every chunk.
const mixed = await warmed({ contextSize: 2048, sequences: 2, batchSize: 512, threads: 1 });
const [shortOne, longOne] = [mixed.createSession({ sharePrefix: false }), mixed.createSession({ sharePrefix: false })];
const longPrompt = model.tokenize('the quick brown fox jumps over the lazy dog '.repeat(140)).slice(0, 1200);
process.stderr.write('phase: long-burst\n');
// Told that the long one is coming, as the server tells its context of each request it prepares: the short
// one alone makes a wait of about 1 ms, and where it was under 1 ms on a fast run the two went apart.
const comingLong = (mixed as unknown as { expectPrompt(): () => void }).expectPrompt();
const shortDone = shortOne.complete(model.tokenize('Once upon a time'), { ...greedy, maxTokens: 40 });
const longDone = longOne.complete(longPrompt, { ...greedy, maxTokens: 2 });
comingLong();
await Promise.all([shortDone, longDone]);
process.stderr.write('phase: after-long-burst\n');
await mixed.dispose();
// The same, and a long prompt of a higher priority (H) that comes once the short one generates: H's chunks
// go first in each step, and the short one waits for the long one's rest once at most (it waited in every
// step while H took them, 8 steps; a hostile review).
const prio = await warmed({ contextSize: 2048, sequences: 3, batchSize: 512, threads: 1 });
const [sPrio, lPrio, hPrio] = [0, 1, 2].map(() => prio.createSession({ sharePrefix: false }));
const hPrompt = model.tokenize('the quick brown fox jumps over the lazy dog '.repeat(140)).slice(0, 1000);
process.stderr.write('phase: prio-hold\n');
const sPrioGen = sPrio!.generate(model.tokenize('Once upon a time'), { ...greedy, maxTokens: 60 });
const lPrioDone = lPrio!.complete(longPrompt, { ...greedy, maxTokens: 2 });
let hPrioDone: Promise<unknown> | undefined;
for await (const chunk of sPrioGen) {
  if (chunk.tokens.length > 0) hPrioDone ??= hPrio!.complete(hPrompt, { ...greedy, maxTokens: 2, priority: 5 });
}
await Promise.all([lPrioDone, hPrioDone]);
process.stderr.write('phase: after-prio-hold\n');
await prio.dispose();
// An abort ends the idle engine's wait for more prompts: a 2,000-token prompt (a wait of 20 ms, the most),
// aborted by its signal right after it reached the engine, settles at once, not at the end of the wait.
const abortCtx = await warmed({ contextSize: 4096, sequences: 2, batchSize: 4096, threads: 1 });
const abortPrompt = model.tokenize('the quick brown fox jumps over the lazy dog '.repeat(240)).slice(0, 2000);
const abortSettle: number[] = [];
for (let i = 0; i < 5; i++) {
  const s = abortCtx.createSession({ sharePrefix: false });
  await new Promise((r) => setTimeout(r, 30));
  const ac = new AbortController();
  const gen = s.generate(abortPrompt, { ...greedy, maxTokens: 32, signal: ac.signal });
  await new Promise((r) => setImmediate(r));  // it reaches the engine, which starts its wait
  const t0 = performance.now();
  ac.abort();
  const r = await gen.result;
  abortSettle.push(performance.now() - t0);
  if (r.stopReason !== 'abort') throw new Error(`expected an abort, got ${r.stopReason}`);
  s.dispose();
}
await abortCtx.dispose();
// A prompt alone, on a context that may decode 2,048 tokens a step: it still takes steps of one 512-token
// micro-batch, so that a request arriving meanwhile (or an abort) waits for one of those, not for all of it.
const wide = await model.createContext({ contextSize: 2048, sequences: 2, batchSize: 2048, threads: 1 });
const alone = model.tokenize('the quick brown fox jumps over the lazy dog '.repeat(140)).slice(0, 1200);
process.stderr.write('phase: alone\n');
await wide.createSession().complete(alone, { ...greedy, maxTokens: 2 });
// Short prompts only (under 32 tokens each), on a context that has never decoded a long one: gathered too.
process.stderr.write('phase: short-warm-up\n');
// A model twice as deep (argv[3]): its steps take ~10 ms, so that 32 of them make a wait of over 1 ms.
const deeper = await loadModel(process.argv[3]!);
const fresh = await deeper.createContext({ contextSize: 512, sequences: 4, batchSize: 2048, threads: 1 });
const shortWarm = fresh.createSession();
await shortWarm.complete('Hello there', { ...greedy, maxTokens: 8 });
shortWarm.dispose();
const shortSessions = Array.from({ length: 4 }, () => fresh.createSession({ sharePrefix: false }));
const shortPrompts = shortSessions.map((_, i) => deeper.tokenize(`Short prompt number ${i}, please.`));
process.stderr.write('phase: short\n');
// In one tick: the engine's wait is sized by what they will take (here ~2 ms), and the first submission wakes it.
await Promise.all(shortSessions.map((s, i) => s.complete(shortPrompts[i]!, { ...greedy, maxTokens: 40 })));
process.stderr.write('phase: end\n');
await fresh.dispose();
// Prompts on their way (a server's request being parsed, rendered and tokenized) are waited for: B comes
// 25 ms after A, past the engine's usual wait for A (0.5% of their work, ~10 ms here), but A's context was
// told that another prompt was coming (as the server tells it for each request it prepares), so both go
// in the first step (phase `expected`); the same without the word, apart (`expected-control`).
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const expectCtx = await deeper.createContext({ contextSize: 2048, sequences: 2, batchSize: 2048, threads: 1 });
const expectWarm = expectCtx.createSession();
await expectWarm.complete(deeper.tokenize(text(8)), { ...greedy, maxTokens: 8 });
expectWarm.dispose();
const pair = async (phase: string, expecting: boolean) => {
  const [a, b] = [expectCtx.createSession({ sharePrefix: false }), expectCtx.createSession({ sharePrefix: false })];
  const [pa, pb] = [deeper.tokenize(`${phase} A. ${text(1).repeat(3)}`).slice(0, 250), deeper.tokenize(`${phase} B. ${text(2).repeat(3)}`).slice(0, 250)];
  process.stderr.write(`phase: ${phase}\n`);
  const queued = expecting ? (expectCtx as unknown as { expectPrompt(): () => void }).expectPrompt() : () => {};
  const aDone = a.complete(pa, { ...greedy, maxTokens: 4 });
  await sleep(25);
  const bDone = b.complete(pb, { ...greedy, maxTokens: 4 });
  queued();
  await Promise.all([aDone, bDone]);
  a.dispose();
  b.dispose();
};
await pair('expected', true);
await pair('expected-control', false);
await expectCtx.dispose();
// Prompts that keep coming alone (one client): after 4 waits that found no company, a wait of 1 ms (phase
// `lone`), which still gathers prompts submitted 0.3 ms apart (`lone-tight`); after 4 more lone ones
// (`lone-2`), a burst of prompts 3 ms apart finds the first gone alone (`lone-burst`), and the second's
// arrival within the window the wait would have had brings the wait back: the next such burst starts
// together (`lone-burst-again`).
const loneCtx = await deeper.createContext({ contextSize: 2048, sequences: 2, batchSize: 2048, threads: 1 });
const loneWarm = loneCtx.createSession();
await loneWarm.complete(deeper.tokenize(text(8)), { ...greedy, maxTokens: 8 });
loneWarm.dispose();
const lone = async (n: number) => {
  for (let i = 0; i < n; i++) {
    const s = loneCtx.createSession({ sharePrefix: false });
    await s.complete(deeper.tokenize(`Alone ${i}. ${text(i)}`).slice(0, 200), { ...greedy, maxTokens: 4 });
    s.dispose();
  }
};
const pairApart = async (tag: string, apartMs: number, length: number) => {
  const two = [loneCtx.createSession({ sharePrefix: false }), loneCtx.createSession({ sharePrefix: false })];
  const prompts = two.map((_, i) => deeper.tokenize(`${tag} ${i}. ${text(i).repeat(4)}`).slice(0, length));
  const done: Array<Promise<unknown>> = [];
  for (const [i, s] of two.entries()) {
    done.push(s.complete(prompts[i]!, { ...greedy, maxTokens: 4 }));
    const until = performance.now() + apartMs;
    while (performance.now() < until) {
      // apart, as requests parsed one after another reach it
    }
  }
  await Promise.all(done);
  for (const s of two) s.dispose();
};
process.stderr.write('phase: lone\n');
await lone(6);
process.stderr.write('phase: lone-tight\n');
await pairApart('Tight', 0.3, 200);
process.stderr.write('phase: lone-2\n');
await lone(4);
process.stderr.write('phase: lone-burst\n');
await pairApart('Burst', 3, 500);
process.stderr.write('phase: lone-burst-again\n');
await pairApart('Again', 3, 500);
process.stderr.write('phase: lone-end\n');
await loneCtx.dispose();
await deeper.dispose();
console.log(JSON.stringify({ texts, alone: alone.length, prompts: sixPrompts, abortSettle, late: model.tokenize(text(7)).length }));
await wide.dispose();
await model.dispose();

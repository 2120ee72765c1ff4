// Which sequence a session gets (lib/core/residency.ts). With a KV stream per sequence, llama.cpp decodes a
// step's rows in one pass over the weights per run of consecutive sequence ids, so the sessions that
// generate together should hold neighbouring sequences: a session gets a free sequence next to a busy one,
// and, when one must be evicted, an idle session's next to a busy one rather than the least recently used
// one far away. The evicted caches wait in host memory as before.
import { expect, it } from 'vitest';
import { loadModel, type LlamaSession } from 'llama-addon';
import { describeShared, shared } from './helpers/models.js';
import { stepTrace } from './helpers/step-trace.js';

describeShared('the sequences of sessions that generate together', () => {
  it('are neighbours, even where the least recently used idle sessions hold sequences far apart', () => {
    const { steps: trace, stdout } = stepTrace('sequence-choice-child.ts', [shared('stories260k.gguf')], 'busy');
    const steps = trace.map((rows) => rows.map(([seq]) => seq));
    // The three generate together in most steps, on one run of consecutive sequences (the least recently
    // used were 0, 8 and 15: three runs, three passes a step).
    const together = steps.filter((seqs) => seqs.length === 3);
    expect(together.length).toBeGreaterThan(15);
    for (const seqs of together) expect(seqs[2]! - seqs[0]!, seqs.join(' ')).toBe(2);
    const out = JSON.parse(stdout.trim().split('\n').pop()!) as { texts: string[]; cachedBack: number; heldBack: number };
    expect(out.texts.every((t) => t.length > 0)).toBe(true);
    // Session 0's cache went to host memory and came back whole.
    expect(out.cachedBack).toBe(out.heldBack);
  }, 180_000);
});

describeShared('the sequence given up for a new session', () => {
  it("is not a recently used one's next to a busy session when host memory cannot keep its cache", async () => {
    // cacheRamBytes: 0 keeps no evicted cache: the hot conversation (used last, next to the busy one) must
    // keep its sequence, and the cold one (least recently used) give up its own (a hostile review).
    for (const cacheRamBytes of [0, 2 ** 30]) {
      const model = await loadModel(shared('stories260k.gguf'));
      const ctx = await model.createContext({ contextSize: 256, sequences: 3, threads: 1, cacheRamBytes });
      const g = { temperature: 0 } as const;
      const [cold, hot, busy] = [0, 1, 2].map(() => ctx.createSession({ sharePrefix: false })) as [LlamaSession, LlamaSession, LlamaSession];
      await cold.complete('Cold: once upon a time there was a cat', { ...g, maxTokens: 8 });
      await hot.complete('Hot: once upon a time there was a dog', { ...g, maxTokens: 8 });
      await busy.complete('Busy: once upon a time there was a frog', { ...g, maxTokens: 2 });
      await hot.complete([...hot.tokens], { ...g, maxTokens: 4 });
      expect([cold.sequence, hot.sequence, busy.sequence]).toEqual([0, 1, 2]);
      const hotTokens = [...hot.tokens];
      const coldTokens = [...cold.tokens];
      const running = busy.complete([...busy.tokens], { ...g, maxTokens: 100 });
      const fresh = ctx.createSession({ sharePrefix: false });
      const f = fresh.complete('New: a bird', { ...g, maxTokens: 4 });
      // With room in host memory the neighbour of the busy sequence goes (its cache comes back whole);
      // without, the least recently used.
      expect(fresh.sequence, `cacheRamBytes ${cacheRamBytes}`).toBe(cacheRamBytes > 0 ? 1 : 0);
      await Promise.all([running, f]);
      const h = await hot.complete(hotTokens, { ...g, maxTokens: 1 });
      expect(h.usage.cachedTokens).toBe(hotTokens.length - 1);
      const c = await cold.complete(coldTokens, { ...g, maxTokens: 1 });
      expect(c.usage.cachedTokens).toBe(cacheRamBytes > 0 ? coldTokens.length - 1 : 0);
      await model.dispose();
    }
  });
});

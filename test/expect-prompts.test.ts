// Prompts on their way: while a prompt is being prepared (a chat rendered and tokenized off the JS thread, a
// server's request from when it has a session until its generation starts), its context counts it, and an idle
// engine waits for it to decode it with others that arrive together (native/engine.cpp, step();
// test/gather.test.ts shows the steps). The count must come back to zero however the preparation ends, or
// every later request would wait for a prompt that never comes.
import { EventEmitter } from 'node:events';
import { describe, expect, it } from 'vitest';
import type { LlamaContext, LlamaSession } from 'llama-addon';
import { withRequest, type ServerState } from '../lib/server/state.js';
import type { Entry } from '../lib/server/registry.js';
import { tinyContext } from './helpers/tiny-context.js';
import { rejectsWith } from './helpers/errors.js';

type Internal = { expectPrompt(): () => void; handle(caller: Function): { info(): { promptsExpected: number } } };
const expected = (ctx: LlamaContext) => (ctx as unknown as Internal).handle(expected).info().promptsExpected;
const TEMPLATE = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";

describe('prompts on their way', () => {
  const t = tinyContext();

  it('are counted while a chat renders and tokenizes, and not after, however it ends', async () => {
    const greedy = { temperature: 0, maxTokens: 4 } as const;
    using chat = t.ctx.createChat({ template: TEMPLATE });
    const reply = chat.send('Once upon a time', greedy);
    // The render runs off the JS thread: the reply is on its way.
    expect(expected(t.ctx)).toBe(1);
    await reply.result;
    expect(expected(t.ctx)).toBe(0);
    // Aborted while it renders.
    const ac = new AbortController();
    const aborted = chat.send('And then', { ...greedy, signal: ac.signal });
    ac.abort();
    expect((await aborted.result).stopReason).toBe('abort');
    expect(expected(t.ctx)).toBe(0);
    // A template that fails.
    using failing = t.ctx.createChat({ template: "{{ raise_exception('no') }}" });
    await rejectsWith(failing.send('Hi', greedy).result, 'ERR_INVALID_TEMPLATE');
    expect(expected(t.ctx)).toBe(0);
    // The session disposed while it renders.
    const s = t.ctx.createSession();
    using doomed = t.ctx.createChat({ session: s, template: TEMPLATE });
    const gone = doomed.send('Bye', greedy);
    s.dispose();
    expect((await gone.result).stopReason).toBe('abort');
    expect(expected(t.ctx)).toBe(0);
    // Many at once, on one sequence: they take turns, and none stays counted.
    const chats = Array.from({ length: 6 }, () => t.ctx.createChat({ template: TEMPLATE }));
    await Promise.all(chats.map((c, i) => c.send(`Story ${i}`, greedy).result));
    for (const c of chats) c.dispose();
    expect(expected(t.ctx)).toBe(0);
  });

  it('are not counted while they wait for a sequence: they cannot come before a running one ends', async () => {
    // One sequence, held by a generation paused on its full queue (nobody reads it).
    const a = t.ctx.createSession();
    const held = a.generate('Once upon a time', { temperature: 0, maxTokens: 200 });
    using chat = t.ctx.createChat({ template: TEMPLATE });
    const reply = chat.send('Hello', { temperature: 0, maxTokens: 4 });
    expect(expected(t.ctx)).toBe(1);  // rendering
    // Rendered, it waits for the sequence: no longer on its way (an idle engine waited for it in vain).
    for (let i = 0; i < 200 && expected(t.ctx) > 0; i++) await new Promise((r) => setTimeout(r, 5));
    expect(expected(t.ctx)).toBe(0);
    held.abort();
    await held.result;
    a.dispose();
    expect((await reply.result).text.length).toBeGreaterThan(0);
    expect(expected(t.ctx)).toBe(0);
  });

  it("count a server's request from its handler until its generation starts, or it fails", async () => {
    // withRequest (lib/server/state.ts) with a stand-in for the request, its reply and the registry.
    const session = {} as LlamaSession;
    const entry = { ctx: t.ctx } as unknown as Entry;
    const state = (acquire: () => Promise<LlamaSession>) =>
      ({ running: new Set(), metrics: { count() {} }, models: { acquire, release() {} } }) as unknown as ServerState;
    const reply = () => ({ raw: Object.assign(new EventEmitter(), { writableFinished: false }) }) as never;
    const ok = state(async () => session);
    let during = -1;
    await withRequest(ok, {} as never, reply(), entry, null, async (_s, _signal, started) => {
      during = expected(t.ctx);
      started();
      started();  // more calls do nothing
      expect(expected(t.ctx)).toBe(0);
      return null;
    });
    expect(during).toBe(1);
    expect(expected(t.ctx)).toBe(0);
    // The handler fails before its generation starts (a bad option, say).
    await expect(withRequest(ok, {} as never, reply(), entry, null, async () => {
      throw new Error('bad option');
    })).rejects.toThrow('bad option');
    expect(expected(t.ctx)).toBe(0);
    // No session for it (the server closes).
    const closing = state(() => Promise.reject(new Error('closing')));
    await expect(withRequest(closing, {} as never, reply(), entry, null, async () => null)).rejects.toThrow('closing');
    expect(expected(t.ctx)).toBe(0);
    // Waiting for a session (every one busy), it is not on its way yet: only once it has one.
    let grant!: (s: LlamaSession) => void;
    const queued = state(() => new Promise((r) => (grant = r)));
    const running = withRequest(queued, {} as never, reply(), entry, null, async (_s, _signal, started) => {
      during = expected(t.ctx);
      started();
      return null;
    });
    await new Promise((r) => setTimeout(r, 10));
    expect(expected(t.ctx)).toBe(0);
    grant(session);
    await running;
    expect(during).toBe(1);
    expect(expected(t.ctx)).toBe(0);
  });

  it('come to nothing on a disposed context', async () => {
    const ctx = await t.model.createContext({ contextSize: 128 });
    const release = (ctx as unknown as Internal).expectPrompt();
    await ctx.dispose();
    expect(() => release()).not.toThrow();
    expect(() => (ctx as unknown as Internal).expectPrompt()()).not.toThrow();
  });
});

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadModel, LlamaError, setLogLevel, type ChatTool, type LlamaModel } from 'llama-addon';
import { llamaCppDir, synthetic } from './helpers/models.js';

setLogLevel('error');

const template = (name: string) => readFileSync(join(llamaCppDir, 'models', 'templates', `${name}.jinja`), 'utf8');
const shape = { embeddingLength: 32, layers: 1, heads: 2, headsKv: 1, feedForwardLength: 64, type: 'f16', seed: 5 } as const;

// Synthetic models (random weights) with tokenizers that fit the templates; the Qwen and Mistral
// vocabularies in llama.cpp's source lack the tool-call markers of later releases, so they are added.
const models = {
  qwen: () =>
    synthetic('tools-qwen2', {
      ...shape,
      vocab: 'qwen2',
      extraTokens: ['<tool_call>', '</tool_call>', '<think>', '</think>'].map((text) => ({ text, type: 'user' as const })),
    }),
  llama3: () => synthetic('tools-llama-bpe', { ...shape, vocab: 'llama-bpe' }),
  mistral: () => synthetic('tools-llama-spm', { ...shape, vocab: 'llama-spm', extraTokens: [{ text: '[TOOL_CALLS]', type: 'control' }] }),
};

const weather: ChatTool = {
  name: 'get_weather',
  description: 'The weather in a city',
  parameters: { type: 'object', properties: { city: { const: 'Paris' }, days: { const: 3 } }, required: ['city', 'days'] },
};
const clock: ChatTool = { name: 'get_time', description: 'The time', parameters: { type: 'object', properties: {} } };

// The templates let the model write text before a call; these biases steer the random model into the call
// (the marker, then its next character), and out of it (the closing marker, then the end). The grammar
// decides everything else, so the parsed call is exact.
interface Case {
  name: string;
  model: keyof typeof models;
  open: string;
  next: string;
  close?: string;
}
const cases: Case[] = [
  { name: 'Qwen-Qwen2.5-7B-Instruct', model: 'qwen', open: '<tool_call>', next: '\n', close: '</tool_call>' },
  { name: 'Qwen-Qwen3-0.6B', model: 'qwen', open: '<tool_call>', next: '\n', close: '</tool_call>' },
  { name: 'NousResearch-Hermes-3-Llama-3.1-8B-tool_use', model: 'qwen', open: '<tool_call>', next: '\n', close: '</tool_call>' },
  { name: 'meta-llama-Llama-3.1-8B-Instruct', model: 'llama3', open: '{"', next: 'name' },
  { name: 'meta-llama-Llama-3.2-3B-Instruct', model: 'llama3', open: '{"', next: 'name' },
  { name: 'mistralai-Mistral-Nemo-Instruct-2407', model: 'mistral', open: '[TOOL_CALLS]', next: '[' },
];

function steering(model: LlamaModel, c: Case): Record<number, number> {
  const tok = (s: string) => model.tokenize(s, { special: true, addBos: false })[0];
  // Margins well above the random logits' spread: the opening marker first, then (once the marker is
  // penalized as the last token) its next character, the closing marker after that, and the end above all.
  const bias: Record<number, number> = { [tok(c.open)]: 20, [tok(c.next)]: 15, [model.vocab.eos!]: 30 };
  if (c.close) bias[tok(c.close)] = 10;
  if (model.vocab.eot !== null) bias[model.vocab.eot] = 30;
  return bias;
}

describe('tool calling with the templates of the pinned source', () => {
  for (const c of cases) {
    it(`${c.name}: the call is constrained to the tool's schema and parsed exactly`, async () => {
      await using model = await loadModel(await models[c.model]());
      await using ctx = await model.createContext({ contextSize: 2048, sequences: 2 });
      using chat = ctx.createChat({ template: template(c.name), tools: [weather, clock], toolChoice: { name: 'get_weather' } });
      const r = await chat.send('What is the weather in Paris?', {
        temperature: 0, maxTokens: 160, logitBias: steering(model, c), repeatPenalty: 100, penaltyLastN: 1,
      }).result;
      expect(r.toolCalls.length, r.text).toBeGreaterThanOrEqual(1);
      // A reply cut short keeps only whole, valid calls.
      const complete = r.toolCalls;
      expect(complete.length, r.text).toBeGreaterThanOrEqual(1);
      for (const call of complete) {
        expect(call.name).toBe('get_weather');
        expect(call.arguments).toEqual({ city: 'Paris', days: 3 });
        expect(call.id).toMatch(/^[A-Za-z0-9]{9}$/);
      }
      // The call's markup is not part of the reply's content.
      expect(r.content).not.toContain('get_weather');
      const assistant = chat.messages.at(-1)!;
      expect(assistant.role).toBe('assistant');
      expect(assistant.toolCalls?.[0]).toEqual(complete[0]);

      // Answer the call and go on: the result is rendered into the conversation by the template.
      chat.addToolResult(complete[0].id, { temperature: 21, unit: 'celsius' });
      for (const extra of complete.slice(1)) chat.addToolResult(extra.id, 'same');
      expect(chat.messages.find((m) => m.role === 'tool')).toMatchObject({ toolCallId: complete[0].id, name: 'get_weather', content: '{"temperature":21,"unit":"celsius"}' });
      const next = await chat.send(undefined, { toolChoice: 'none', maxTokens: 4, temperature: 0 }).result;
      expect(next.toolCalls).toEqual([]);
      expect(next.usage.cachedTokens).toBeGreaterThan(0);
      const rendered = model.detokenize(chat.session.tokens, { special: true });
      expect(rendered).toContain('21');
    });
  }

  it("validates every call's arguments against its tool's parameters: what the converter cannot enforce is ERR_SCHEMA_MISMATCH", async () => {
    // llama.cpp's converter does not enforce multipleOf; the call is still checked.
    await using model = await loadModel(await models.qwen());
    await using ctx = await model.createContext({ contextSize: 2048 });
    const c = cases[0];
    const loose: ChatTool = { name: 'pick', parameters: { type: 'object', properties: { n: { type: 'integer', multipleOf: 1000003 } }, required: ['n'] } };
    let mismatches = 0;
    for (const seed of [1, 2, 3, 4]) {
      using chat = ctx.createChat({ template: template(c.name), tools: [loose], toolChoice: { name: 'pick' } });
      const e = await chat.send('Pick a number', { temperature: 1, seed, maxTokens: 80, logitBias: steering(model, c), repeatPenalty: 100, penaltyLastN: 1 }).result.catch((x: unknown) => x);
      if (e instanceof LlamaError) {
        expect(e.code, e.message).toBe('ERR_SCHEMA_MISMATCH');
        expect(e.message).toMatch(/^The arguments of the call to "pick": The output does not match the JSON schema/);
        mismatches++;
      } else {
        // Whatever is returned validates.
        for (const call of (e as { toolCalls: Array<{ arguments: Record<string, unknown> }> }).toolCalls) {
          expect((call.arguments.n as number) % 1000003).toBe(0);
        }
      }
    }
    expect(mismatches).toBeGreaterThan(0);
  });

  it("llama.cpp's converter's warning about a tool's schema goes through the logger, not straight to stderr", async () => {
    const { setLogger } = await import('llama-addon');
    await using model = await loadModel(await models.qwen());
    await using ctx = await model.createContext({ contextSize: 2048 });
    const lines: Array<[string, string]> = [];
    setLogLevel('warn');
    setLogger((level, message) => lines.push([level, message]));
    try {
      const tool: ChatTool = { name: 'code', parameters: { type: 'object', properties: { c: { type: 'string', pattern: '^(?!x)[a-z]{2}$' } }, required: ['c'] } };
      using chat = ctx.createChat({ template: template(cases[0].name), tools: [tool], toolChoice: { name: 'code' } });
      await chat.send('x', { maxTokens: 2 }).result.catch(() => {});
      await new Promise((r) => setTimeout(r, 50));
      expect(lines.some(([level, m]) => level === 'warn' && m.startsWith('JSON schema conversion was incomplete: pattern ^(?!x)'))).toBe(true);
    } finally {
      setLogger(null);
      setLogLevel('error');
    }
  });

  it('makes parallel calls where the template supports them', async () => {
    await using model = await loadModel(await models.llama3());
    await using ctx = await model.createContext({ contextSize: 2048 });
    const c = cases.find((x) => x.name === 'meta-llama-Llama-3.1-8B-Instruct')!;
    using chat = ctx.createChat({ template: template(c.name), tools: [weather], toolChoice: 'required', parallelToolCalls: true });
    // Without a pull toward the end, the model goes on calling.
    const bias = steering(model, c);
    delete bias[model.vocab.eos!];
    delete bias[model.vocab.eot!];
    const r = await chat.send('Weather in Paris, twice?', { temperature: 0, maxTokens: 200, logitBias: bias, repeatPenalty: 100, penaltyLastN: 1 }).result;
    // A reply cut short keeps only whole, valid calls.
      const complete = r.toolCalls;
    expect(complete.length).toBeGreaterThanOrEqual(2);
    for (const call of complete) expect(call).toMatchObject({ name: 'get_weather', arguments: { city: 'Paris', days: 3 } });
    expect(new Set(complete.map((x) => x.id)).size).toBe(complete.length);
  });

  it("with toolChoice 'auto', constrains a call once the model starts one (lazy grammar)", async () => {
    await using model = await loadModel(await models.qwen());
    await using ctx = await model.createContext({ contextSize: 2048 });
    const c = cases[0];
    using chat = ctx.createChat({ template: template(c.name), tools: [weather, clock] });
    const bias = steering(model, c);
    delete bias[model.vocab.eos!];
    delete bias[model.vocab.eot!];
    const r = await chat.send('Weather in Paris?', { temperature: 0, maxTokens: 120, logitBias: bias, repeatPenalty: 100, penaltyLastN: 1 }).result;
    // A reply cut short keeps only whole, valid calls.
      const complete = r.toolCalls;
    expect(complete.length, r.text).toBeGreaterThanOrEqual(1);
    // Either tool may be called, but each call follows its own schema.
    for (const call of complete) {
      if (call.name === 'get_weather') expect(call.arguments).toEqual({ city: 'Paris', days: 3 });
      else expect(call).toMatchObject({ name: 'get_time', arguments: {} });
    }
  });

  it("searches a template's own unbounded trigger patterns in bounded time per token (gpt-oss)", async () => {
    // gpt-oss's template makes its lazy grammar wait for patterns such as `<\|start\|>assistant(\s+to)` and
    // `^\s+to$`, which can read any length of text. llama.cpp searched them over the whole output at every
    // token (and std::regex recurses once per character read): a reply of whitespace got slower with every
    // token (1,000 tokens took 3.9 s at first and 35 s after 5,000; past ~300,000 characters the engine
    // thread's stack overflowed). They are searched within the last 16 KiB now (patches/llama.cpp/0007).
    await using model = await loadModel(await models.mistral());
    let spaces = -1;
    for (let t = 0, best = 0; t < model.vocab.size; t++) {
      const piece = model.detokenize([t]);
      if (/^ +$/.test(piece) && piece.length > best) [spaces, best] = [t, piece.length];
    }
    const tokens = 5000;
    await using ctx = await model.createContext({ contextSize: tokens + 256, threads: 1 });
    using chat = ctx.createChat({ template: template('openai-gpt-oss-120b'), tools: [clock] });
    const g = chat.send('Hi', { temperature: 0, maxTokens: tokens, logitBias: { [spaces]: 100 } });
    // The time per token over the first and the last 1,000 tokens, in the same run: it stays flat.
    const at: number[] = [];
    for await (const chunk of g) for (let i = 0; i < chunk.tokens.length; i++) at.push(performance.now());
    const r = await g.result;
    expect(r.stopReason).toBe('maxTokens');
    expect(r.text.length).toBeGreaterThan(16384 * 4);
    expect(r.toolCalls).toEqual([]);
    const first = at[1500]! - at[500]!;
    const last = at[tokens - 1]! - at[tokens - 1001]!;
    expect(last / first).toBeLessThan(3);
  }, 120_000);

  it('validates tools and tool results', async () => {
    await using model = await loadModel(await models.qwen());
    await using ctx = await model.createContext({ contextSize: 1024 });
    const t = template('Qwen-Qwen2.5-7B-Instruct');
    const code = (fn: () => unknown) => {
      try {
        fn();
      } catch (e) {
        return (e as LlamaError).code;
      }
      return 'none';
    };
    expect(code(() => ctx.createChat({ template: t, tools: [{ name: 'has space' }] }))).toBe('ERR_INVALID_ARGUMENT');
    expect(code(() => ctx.createChat({ template: t, tools: [weather, weather] }))).toBe('ERR_INVALID_ARGUMENT');
    expect(code(() => ctx.createChat({ template: t, tools: [weather], toolChoice: { name: 'nope' } }))).toBe('ERR_INVALID_ARGUMENT');
    expect(code(() => ctx.createChat({ template: t, tools: [{ name: 'x', parameters: 'nope' as never }] }))).toBe('ERR_INVALID_ARGUMENT');
    using chat = ctx.createChat({ template: t, tools: [weather] });
    expect(code(() => chat.addToolResult('call_unknown', 1))).toBe('ERR_INVALID_ARGUMENT');
    expect(code(() => chat.send('x', { toolChoice: 'sometimes' as never }))).toBe('ERR_INVALID_ARGUMENT');
    expect(chat.messages).toEqual([]);
    // With tools: 'auto' lets the model answer in text.
    const r = await chat.send('Hi', { maxTokens: 3, temperature: 0 }).result;
    expect(r.stopReason).toBe('maxTokens');
  });
});

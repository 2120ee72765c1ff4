// gguf: model files made by lib/gguf's synthetic writer, then mutated (hparams: NaN/-1/0/huge epsilons,
// head counts, context lengths; tensor types I8/I16/I32/F64/F16 where F32 is expected; shapes; tokenizer
// models like "none" or "bogus"; truncations; byte flips in the header), then loaded, tokenized and run for 4
// greedy tokens. LoRA adapters likewise, with mutated tensor types and shapes. Expected: success or
// ERR_INVALID_MODEL / ERR_INVALID_ADAPTER, never a crash.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeGguf } from '../../lib/gguf/writer.js';
import { GGML_TYPES, GgufType } from '../../lib/gguf/types.js';
import { miniVocabSize as V, readParts, smallLora, smallModel, type SmallType } from '../fixtures.js';
import { Rng } from '../prng.js';
import { runSteps, step, type Env, type Target } from './common.js';
import type { LlamaContext, LlamaModel } from '../../lib/index.js';

type Mutation =
  /** Sets (or adds) a metadata entry; float values may be "NaN", "Infinity", big integers strings. */
  | { op: 'kv'; key: string; type: GgufType; value: unknown }
  /** Replaces an array entry with `length` items of `fill` (length: a number, or relative: "same", "half", "+1"). */
  | { op: 'array'; key: string; itemType: GgufType; length: number | 'same' | 'half' | '+1' | 'empty'; fill: unknown }
  | { op: 'del'; key: string }
  /** Changes a tensor's type; its data is replaced by random bytes of the new size. */
  | { op: 'tensorType'; name: string; type: number; seed: number }
  /** Changes a tensor's shape; its data is replaced by random bytes of the new size. */
  | { op: 'dims'; name: string; dims: number[]; seed: number }
  | { op: 'dropTensor'; name: string }
  | { op: 'dupTensor'; name: string }
  | { op: 'renameTensor'; name: string; to: string }
  /** The alignment the file is written with (independent of general.alignment). */
  | { op: 'alignment'; value: number }
  /** Flips bits of a byte: in the header (at modulo its length) or anywhere. */
  | { op: 'flip'; at: number; xor: number; header: boolean }
  /** Keeps this fraction of the file. */
  | { op: 'truncate'; keep: number };

type Input = { kind: 'model'; base: SmallType; mutations: Mutation[] } | { kind: 'lora'; mutations: Mutation[] };

const MODEL_TENSORS = ['token_embd.weight', 'output_norm.weight', 'output.weight', 'blk.0.attn_norm.weight', 'blk.0.attn_q.weight', 'blk.0.attn_k.weight', 'blk.0.attn_v.weight', 'blk.0.attn_output.weight', 'blk.0.ffn_norm.weight', 'blk.0.ffn_gate.weight', 'blk.0.ffn_up.weight', 'blk.0.ffn_down.weight'];
const LORA_TENSORS = ['blk.0.attn_q.weight.lora_a', 'blk.0.attn_q.weight.lora_b', 'blk.0.attn_v.weight.lora_a', 'blk.0.attn_v.weight.lora_b'];
const T = { F32: 0, F16: 1, Q4_0: 2, Q8_0: 8, I8: 24, I16: 25, I32: 26, I64: 27, F64: 28, BF16: 30 } as const;
const MAX_ELEMENTS = 1 << 21;

// ------------------------------------------------------------------ building a mutated file

function randomBytes(n: number, seed: number): Uint8Array {
  const r = new Rng(seed);
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i += 4) {
    const v = Math.floor(r.next() * 4294967296);
    for (let j = 0; j < 4 && i + j < n; j++) out[i + j] = (v >>> (8 * j)) & 0xff;
  }
  return out;
}

function sizeOf(type: number, dims: number[]): number | null {
  const t = GGML_TYPES[type];
  if (!t || dims[0] % t[1] !== 0) return null;
  const n = dims.reduce((a, b) => a * b, 1);
  if (n > MAX_ELEMENTS) return null;
  return (n / t[1]) * t[2];
}

/** Writes the mutated file; null when the mutations cannot be written (a shape the type cannot hold). */
async function build(base: string, mutations: Mutation[], out: string): Promise<string | null> {
  const parts = await readParts(base);
  let alignment = 32;
  const tensorIndex = (name: string) => parts.tensors.findIndex((t) => t.name === name);
  for (const m of mutations) {
    switch (m.op) {
      case 'kv': {
        const kv = { key: m.key, type: m.type, value: m.value };
        const i = parts.metadata.findIndex((x) => x.key === m.key);
        if (i >= 0) parts.metadata[i] = kv;
        else parts.metadata.push(kv);
        break;
      }
      case 'array': {
        const i = parts.metadata.findIndex((x) => x.key === m.key);
        const old = i >= 0 && Array.isArray(parts.metadata[i].value) ? (parts.metadata[i].value as unknown[]).length : 0;
        const length = m.length === 'same' ? old : m.length === 'half' ? Math.floor(old / 2) : m.length === '+1' ? old + 1 : m.length === 'empty' ? 0 : m.length;
        const kv = { key: m.key, type: GgufType.ARRAY, itemType: m.itemType, value: Array.from({ length }, (_, j) => (m.fill === 'index' ? j : m.fill)) };
        if (i >= 0) parts.metadata[i] = kv;
        else parts.metadata.push(kv);
        break;
      }
      case 'del':
        parts.metadata = parts.metadata.filter((x) => x.key !== m.key);
        break;
      case 'tensorType':
      case 'dims': {
        const i = tensorIndex(m.name);
        if (i < 0) break;
        const t = parts.tensors[i];
        const type = m.op === 'tensorType' ? m.type : t.type;
        const dims = m.op === 'dims' ? m.dims : t.dims;
        const size = sizeOf(type, dims);
        if (size === null) return null;
        parts.tensors[i] = { ...t, type, dims, data: randomBytes(size, m.seed) };
        break;
      }
      case 'dropTensor':
        parts.tensors = parts.tensors.filter((t) => t.name !== m.name);
        break;
      case 'dupTensor': {
        const i = tensorIndex(m.name);
        if (i >= 0) parts.tensors.push({ ...parts.tensors[i] });
        break;
      }
      case 'renameTensor': {
        const i = tensorIndex(m.name);
        if (i >= 0) parts.tensors[i] = { ...parts.tensors[i], name: m.to };
        break;
      }
      case 'alignment':
        alignment = m.value;
        break;
      default:
        break;
    }
  }
  try {
    await writeGguf(out, { metadata: parts.metadata, tensors: parts.tensors, alignment });
  } catch {
    return null; // the writer refuses (a value out of range for its type, say)
  }
  const bytes = mutations.some((m) => m.op === 'flip' || m.op === 'truncate') ? readFileSync(out) : null;
  if (bytes) {
    // The header's end: where the first tensor's data starts (the file's size without tensors).
    const headerEnd = Math.max(8, bytes.length - parts.tensors.reduce((s, t) => s + Math.ceil(t.data.length / alignment) * alignment, 0));
    let b: Buffer = bytes;
    for (const m of mutations) {
      if (m.op === 'flip' && b.length) b[m.at % (m.header ? Math.min(headerEnd, b.length) : b.length)] ^= m.xor || 1;
      if (m.op === 'truncate') b = b.subarray(0, Math.floor(b.length * Math.min(1, Math.max(0, m.keep))));
    }
    writeFileSync(out, b);
  }
  return out;
}

// ------------------------------------------------------------------ random mutations

const u32 = (r: Rng) => r.pick([0, 1, 2, 3, 5, 7, 8, 16, 64, 1000, 65536, 1_000_000, 2 ** 31 - 1, 2 ** 32 - 1]);
const f32 = (r: Rng) => r.pick<number | string>(['NaN', '-Infinity', 'Infinity', -1, 0, 1e-45, 1e30, -1e-5, 1]);

function modelMutation(r: Rng): Mutation {
  return r.weighted<() => Mutation>([
    [3, () => ({ op: 'kv', key: 'llama.attention.layer_norm_rms_epsilon', type: GgufType.FLOAT32, value: f32(r) })],
    [4, () => ({ op: 'kv', key: `llama.${r.pick(['attention.head_count', 'attention.head_count_kv', 'context_length', 'embedding_length', 'block_count', 'feed_forward_length', 'rope.dimension_count', 'attention.key_length', 'attention.value_length', 'vocab_size', 'expert_count', 'expert_used_count', 'attention.sliding_window', 'rope.scaling.original_context_length'])}`, type: GgufType.UINT32, value: u32(r) })],
    [1, () => ({ op: 'kv', key: `llama.${r.pick(['rope.freq_base', 'rope.freq_scale', 'rope.scaling.factor', 'attention.layer_norm_epsilon', 'logit_scale', 'attention.scale'])}`, type: GgufType.FLOAT32, value: f32(r) })],
    [1, () => ({ op: 'kv', key: r.pick(['llama.context_length', 'llama.attention.head_count', 'llama.attention.layer_norm_rms_epsilon', 'llama.block_count']), type: r.pick([GgufType.STRING, GgufType.INT32, GgufType.FLOAT64, GgufType.UINT64, GgufType.BOOL, GgufType.INT8]), value: r.pick<unknown>([-1, 1, 0, 'x', 2]) })],
    [3, () => ({ op: 'kv', key: 'tokenizer.ggml.model', type: GgufType.STRING, value: r.pick(['none', 'no_vocab', 'bogus', '', 'gpt2', 'bert', 't5', 'rwkv', 'ugm', 'plamo2', 'llama']) })],
    [1, () => ({ op: 'kv', key: 'tokenizer.ggml.pre', type: GgufType.STRING, value: r.pick(['bogus', 'qwen2', 'default', '', 'llama3', 'gpt-4o']) })],
    [2, () => ({ op: 'kv', key: `tokenizer.ggml.${r.pick(['bos_token_id', 'eos_token_id', 'unknown_token_id', 'padding_token_id', 'eot_token_id', 'seperator_token_id', 'eom_token_id', 'fim_pre_token_id'])}`, type: GgufType.UINT32, value: r.pick([0, 3, V - 1, V, 999_999, 2 ** 31 - 1, 2 ** 32 - 1]) })],
    [1, () => ({ op: 'kv', key: 'general.architecture', type: GgufType.STRING, value: r.pick(['bogus', '', 'qwen3', 'gemma3', 'bert', 'mamba', 'gpt2', 'phi3', 't5', 'rwkv6', 'clip', 'llama4', 'deepseek2']) })],
    [1, () => ({ op: 'kv', key: 'general.alignment', type: GgufType.UINT32, value: r.pick([0, 1, 3, 16, 64, 2 ** 31]) })],
    [0.5, () => ({ op: 'kv', key: 'tokenizer.chat_template', type: GgufType.STRING, value: r.pick(['{{ x', '{% for %}', '{{ messages[0].content * 100000000 }}']) })],
    [2, () => ({ op: 'array', key: `tokenizer.ggml.${r.pick(['tokens', 'scores', 'token_type', 'merges'])}`, itemType: r.pick([GgufType.STRING, GgufType.FLOAT32, GgufType.INT32, GgufType.UINT8]), length: r.pick<'same' | 'half' | '+1' | 'empty' | number>(['same', 'half', '+1', 'empty', 1]), fill: r.pick<unknown>(['', 'a', 0, -1, 7, 'index', 1e9]) })],
    [1, () => ({ op: 'del', key: r.pick(['tokenizer.ggml.tokens', 'tokenizer.ggml.scores', 'tokenizer.ggml.token_type', 'tokenizer.ggml.model', 'llama.attention.head_count', 'llama.embedding_length', 'llama.block_count', 'general.architecture', 'llama.context_length', 'llama.attention.layer_norm_rms_epsilon', 'llama.rope.dimension_count']) })],
    [4, () => ({ op: 'tensorType', name: r.pick(MODEL_TENSORS), type: r.pick([T.I8, T.I16, T.I32, T.I64, T.F64, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.F32]), seed: r.seed() })],
    [3, () => ({ op: 'dims', name: r.pick(MODEL_TENSORS), dims: r.pick([[32], [64], [31], [0], [32, 0], [32, 32], [64, 32], [32, V], [32, V - 1], [32, V + 1], [V, 32], [32, 2, V], [32, 1, 1, 1], [1, 32], [32, 64, 2]]), seed: r.seed() })],
    [1, () => ({ op: 'dropTensor', name: r.pick(MODEL_TENSORS) })],
    [0.5, () => ({ op: 'dupTensor', name: r.pick(MODEL_TENSORS) })],
    [0.5, () => ({ op: 'renameTensor', name: r.pick(MODEL_TENSORS), to: r.pick(['blk.1.attn_q.weight', 'blk.99.ffn_up.weight', 'x', '', 'blk.0.attn_q.weight', 'blk.-1.attn_k.weight', 'output.weight', 'é'.repeat(100)]) })],
    [0.5, () => ({ op: 'alignment', value: r.pick([1, 8, 64, 4096]) })],
    [3, () => ({ op: 'flip', at: r.int(0, 100_000), xor: 1 << r.int(0, 7), header: r.chance(0.85) })],
    [1, () => ({ op: 'truncate', keep: r.pick([0, 0.001, 0.01, 0.1, 0.5, 0.9, 0.99, 0.9999]) })],
  ])();
}

function loraMutation(r: Rng): Mutation {
  return r.weighted<() => Mutation>([
    [5, () => ({ op: 'tensorType', name: r.pick(LORA_TENSORS), type: r.pick([T.I8, T.I16, T.I32, T.I64, T.F64, T.F16, T.BF16, T.Q8_0, T.Q4_0]), seed: r.seed() })],
    [4, () => ({ op: 'dims', name: r.pick(LORA_TENSORS), dims: r.pick([[32, 4], [4, 32], [4, 16], [32, 8], [32], [32, 4, 2], [0, 4], [32, 0], [33, 4], [4, 33], [1, 1]]), seed: r.seed() })],
    [2, () => ({ op: 'dropTensor', name: r.pick(LORA_TENSORS) })],
    [1, () => ({ op: 'renameTensor', name: r.pick(LORA_TENSORS), to: r.pick(['blk.0.attn_norm.weight.lora_a', 'blk.5.attn_q.weight.lora_a', 'token_embd.weight.lora_a', 'output.weight.lora_b', 'blk.0.attn_q.weight', 'x.lora_a']) })],
    [1, () => ({ op: 'dupTensor', name: r.pick(LORA_TENSORS) })],
    [2, () => ({ op: 'kv', key: 'adapter.lora.alpha', type: GgufType.FLOAT32, value: f32(r) })],
    [1, () => ({ op: 'kv', key: r.pick(['adapter.type', 'general.type', 'general.architecture']), type: GgufType.STRING, value: r.pick(['bogus', '', 'lora', 'control_vector', 'model', 'adapter', 'qwen3']) })],
    [1, () => ({ op: 'del', key: r.pick(['adapter.type', 'general.type', 'general.architecture', 'adapter.lora.alpha']) })],
    [2, () => ({ op: 'flip', at: r.int(0, 100_000), xor: 1 << r.int(0, 7), header: r.chance(0.85) })],
    [1, () => ({ op: 'truncate', keep: r.pick([0, 0.01, 0.5, 0.9, 0.999]) })],
  ])();
}

// ------------------------------------------------------------------ the target

let fileCounter = 0;

async function loraBase(env: Env): Promise<{ model: LlamaModel; ctx: LlamaContext }> {
  let p = env.cache.get('gguf:lora-base') as Promise<{ model: LlamaModel; ctx: LlamaContext }> | undefined;
  if (!p) {
    p = (async () => {
      const model = await env.lib.loadModel(await smallModel('f32'), { gpuLayers: 0 });
      return { model, ctx: await model.createContext({ contextSize: 128, threads: 1 }) };
    })();
    env.cache.set('gguf:lora-base', p);
  }
  return p;
}

export const gguf: Target<Input> = {
  name: 'gguf',
  description: 'mutated synthetic GGUF models (load, tokenize, 4 greedy tokens) and LoRA adapters (load, generate)',
  timeoutMs: 20_000,
  generate(r: Rng): Input {
    if (r.chance(0.25)) return { kind: 'lora', mutations: Array.from({ length: r.int(1, 2) }, () => loraMutation(r)) };
    return { kind: 'model', base: r.pick<SmallType>(['f32', 'f32', 'f16', 'q8_0']), mutations: Array.from({ length: r.int(1, 3) }, () => modelMutation(r)) };
  },
  run(input: Input, env: Env) {
    return runSteps(input.kind, async () => {
      const out = join(env.tmp, `mutated-${process.pid}-${fileCounter++}.gguf`);
      const base = input.kind === 'model' ? await smallModel(input.base) : await smallLora();
      const path = await build(base, input.mutations, out);
      if (path === null) return; // not writable: nothing to test
      if (input.kind === 'lora') {
        const { model, ctx } = await step('setup', [], () => loraBase(env));
        const adapter = await step('loadLora', ['ERR_INVALID_ADAPTER'], () => model.loadLora(path));
        const s = ctx.createSession({ sharePrefix: false });
        try {
          await step('generate', ['ERR_INVALID_ADAPTER'], () => s.complete('Hello world', { maxTokens: 4, temperature: 0, lora: [adapter] }));
        } finally {
          s.dispose();
        }
        return;
      }
      const model = await step('loadModel', ['ERR_INVALID_MODEL'], () => env.lib.loadModel(path, { gpuLayers: 0 }));
      try {
        let tokens = Array.from(await step('tokenize', ['ERR_TOKENIZE'], () => model.tokenize('Hello world')));
        await step('detokenize', [], () => model.detokenize(tokens));
        if (tokens.length === 0) tokens = model.vocab.size > 1 ? [1] : [];
        if (tokens.length === 0) return;
        const ctx = await step('createContext', ['ERR_CONTEXT_CREATE'], () => model.createContext({ contextSize: 64, threads: 1 }));
        const s = ctx.createSession();
        await step('generate', [], () => s.complete(tokens, { maxTokens: 4, temperature: 0 }));
      } finally {
        await model.dispose();
      }
    });
  },
  shrink(input: Input): Input[] {
    const out: Input[] = [];
    if (input.mutations.length > 1) for (let i = 0; i < input.mutations.length; i++) out.push({ ...input, mutations: input.mutations.filter((_, j) => j !== i) });
    if (input.kind === 'model' && input.base !== 'f32') out.push({ ...input, base: 'f32' });
    return out;
  },
};

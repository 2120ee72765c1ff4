// Synthetic llama-architecture models with random weights: any shape, any of F32/F16/Q8_0/Q4_0, and a
// real tokenizer copied from another GGUF file. Random weights do not change speed, and they exercise
// every code path that does not depend on what the model says.
import { readGguf } from './reader.js';
import { GGML_TYPE, GgufType } from './types.js';
import { encodeTensor, writeGguf, type GgufKv, type GgufTensorSpec } from './writer.js';

export interface SyntheticLlamaOptions {
  /** GGUF file whose `tokenizer.*` metadata (vocabulary, merges, special tokens, template) is copied. */
  vocabFrom: string;
  embeddingLength: number;
  layers: number;
  heads: number;
  headsKv?: number;
  feedForwardLength: number;
  contextLength?: number;
  /** Weight type of the big matrices; norms stay F32. Default F32. */
  type?: 'f32' | 'f16' | 'q8_0' | 'q4_0';
  /** Seed of the weights. */
  seed?: number;
  name?: string;
  /** Extra metadata, for example a chat template. */
  metadata?: GgufKv[];
  /**
   * Tokens appended to the copied vocabulary, for templates whose markers it lacks (`<tool_call>`):
   * `control` tokens are special tokens, `user` tokens are added words (GGUF token types 3 and 4).
   */
  extraTokens?: ReadonlyArray<{ text: string; type?: 'control' | 'user' }>;
  /** `qwen3` adds per-head Q/K norms (default `llama`). */
  architecture?: 'llama' | 'qwen3';
  /**
   * A reranking head (`cls.output.weight`, qwen3 only): one row of `embeddingLength` weights per label
   * (Qwen3 rerankers have two, "yes" and "no"; llama.cpp returns their softmax).
   */
  rankHead?: Float32Array[];
}

/** A small fast PRNG (xorshift32) so that the same seed gives the same weights everywhere. */
function rng(seed: number): () => number {
  let s = seed >>> 0 || 0x9e3779b9;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 0x100000000;
  };
}

const typeIds = { f32: GGML_TYPE.F32, f16: GGML_TYPE.F16, q8_0: GGML_TYPE.Q8_0, q4_0: GGML_TYPE.Q4_0 } as const;
const fileTypes = { f32: 0, f16: 1, q8_0: 7, q4_0: 2 } as const;

/** Number of parameters a synthetic llama model of this shape has. */
export function syntheticParameterCount(o: Omit<SyntheticLlamaOptions, 'vocabFrom'> & { vocabSize: number }): number {
  const headDim = o.embeddingLength / o.heads;
  const kv = (o.headsKv ?? o.heads) * headDim;
  const perLayer =
    2 * o.embeddingLength + // norms
    2 * o.embeddingLength * o.embeddingLength + // q, o
    2 * o.embeddingLength * kv + // k, v
    3 * o.embeddingLength * o.feedForwardLength; // gate, up, down
  return o.layers * perLayer + 2 * o.vocabSize * o.embeddingLength + o.embeddingLength;
}

/** Writes a llama-architecture GGUF model with random weights to `path`. */
export async function writeSyntheticLlama(path: string, o: SyntheticLlamaOptions): Promise<void> {
  const vocab = await readGguf(o.vocabFrom, { maxArrayLength: Infinity });
  const tokens = vocab.metadata['tokenizer.ggml.tokens'];
  if (!Array.isArray(tokens)) throw new Error(`${o.vocabFrom} has no tokenizer.ggml.tokens array`);
  const extra = o.extraTokens ?? [];
  if (extra.length > 0) {
    const types = vocab.metadata['tokenizer.ggml.token_type'];
    const scores = vocab.metadata['tokenizer.ggml.scores'];
    const known = new Set(tokens as string[]);
    for (const t of extra) {
      if (known.has(t.text)) throw new Error(`${o.vocabFrom} already has the token ${JSON.stringify(t.text)}`);
      (tokens as string[]).push(t.text);
      if (Array.isArray(types)) (types as number[]).push(t.type === 'user' ? 4 : 3);
      if (Array.isArray(scores)) (scores as number[]).push(0);
    }
  }
  const nVocab = tokens.length;
  const type = o.type ?? 'f32';
  const headsKv = o.headsKv ?? o.heads;
  const headDim = o.embeddingLength / o.heads;
  if (!Number.isInteger(headDim)) throw new Error('embeddingLength must be a multiple of heads');
  const nEmbd = o.embeddingLength;
  const nKv = headsKv * headDim;

  const arch = o.architecture ?? 'llama';
  const metadata: GgufKv[] = [
    { key: 'general.architecture', type: GgufType.STRING, value: arch },
    { key: 'general.name', type: GgufType.STRING, value: o.name ?? `synthetic-${arch}` },
    { key: 'general.file_type', type: GgufType.UINT32, value: fileTypes[type] },
    { key: `${arch}.context_length`, type: GgufType.UINT32, value: o.contextLength ?? 2048 },
    { key: `${arch}.embedding_length`, type: GgufType.UINT32, value: nEmbd },
    { key: `${arch}.block_count`, type: GgufType.UINT32, value: o.layers },
    { key: `${arch}.feed_forward_length`, type: GgufType.UINT32, value: o.feedForwardLength },
    { key: `${arch}.attention.head_count`, type: GgufType.UINT32, value: o.heads },
    { key: `${arch}.attention.head_count_kv`, type: GgufType.UINT32, value: headsKv },
    { key: `${arch}.rope.dimension_count`, type: GgufType.UINT32, value: headDim },
    { key: `${arch}.rope.freq_base`, type: GgufType.FLOAT32, value: 10000 },
    { key: `${arch}.attention.layer_norm_rms_epsilon`, type: GgufType.FLOAT32, value: 1e-5 },
  ];
  for (const [key, value] of Object.entries(vocab.metadata)) {
    if (!key.startsWith('tokenizer.')) continue;
    const t = vocab.metadataTypes[key];
    if (t === GgufType.ARRAY) {
      metadata.push({ key, type: t, itemType: vocab.arrayTypes[key], value: value as unknown[] });
    } else {
      metadata.push({ key, type: t, value });
    }
  }
  const overridden = new Set((o.metadata ?? []).map((m) => m.key));
  const all = metadata.filter((m) => !overridden.has(m.key)).concat(o.metadata ?? []);

  const random = rng(o.seed ?? 1);
  const matrix = (cols: number, rows: number, t: number) => () => {
    const v = new Float32Array(cols * rows);
    const scale = 1 / Math.sqrt(cols);
    for (let i = 0; i < v.length; i++) v[i] = (random() * 2 - 1) * scale * 1.7;
    return encodeTensor(t, v);
  };
  const ones = (n: number) => () => encodeTensor(GGML_TYPE.F32, new Float32Array(n).fill(1));
  const wt = typeIds[type];
  const tensors: GgufTensorSpec[] = [
    { name: 'token_embd.weight', dims: [nEmbd, nVocab], type: wt, data: matrix(nEmbd, nVocab, wt) },
    { name: 'output_norm.weight', dims: [nEmbd], type: GGML_TYPE.F32, data: ones(nEmbd) },
    { name: 'output.weight', dims: [nEmbd, nVocab], type: wt, data: matrix(nEmbd, nVocab, wt) },
  ];
  if (o.rankHead) {
    const rows = o.rankHead;
    if (arch !== 'qwen3' || rows.length === 0 || rows.some((r) => r.length !== nEmbd)) throw new Error('rankHead needs architecture qwen3 and rows of embeddingLength values');
    const flat = new Float32Array(rows.length * nEmbd);
    rows.forEach((r, i) => flat.set(r, i * nEmbd));
    tensors.push({ name: 'cls.output.weight', dims: [nEmbd, rows.length], type: GGML_TYPE.F32, data: () => encodeTensor(GGML_TYPE.F32, flat) });
    all.push({ key: `${arch}.classifier.output_labels`, type: GgufType.ARRAY, itemType: GgufType.STRING, value: rows.map((_, i) => (i === 0 ? 'yes' : i === 1 ? 'no' : `label${i}`)) });
  }
  for (let i = 0; i < o.layers; i++) {
    const p = `blk.${i}.`;
    if (arch === 'qwen3') {
      tensors.push(
        { name: p + 'attn_q_norm.weight', dims: [headDim], type: GGML_TYPE.F32, data: ones(headDim) },
        { name: p + 'attn_k_norm.weight', dims: [headDim], type: GGML_TYPE.F32, data: ones(headDim) },
      );
    }
    tensors.push(
      { name: p + 'attn_norm.weight', dims: [nEmbd], type: GGML_TYPE.F32, data: ones(nEmbd) },
      { name: p + 'attn_q.weight', dims: [nEmbd, nEmbd], type: wt, data: matrix(nEmbd, nEmbd, wt) },
      { name: p + 'attn_k.weight', dims: [nEmbd, nKv], type: wt, data: matrix(nEmbd, nKv, wt) },
      { name: p + 'attn_v.weight', dims: [nEmbd, nKv], type: wt, data: matrix(nEmbd, nKv, wt) },
      { name: p + 'attn_output.weight', dims: [nEmbd, nEmbd], type: wt, data: matrix(nEmbd, nEmbd, wt) },
      { name: p + 'ffn_norm.weight', dims: [nEmbd], type: GGML_TYPE.F32, data: ones(nEmbd) },
      { name: p + 'ffn_gate.weight', dims: [nEmbd, o.feedForwardLength], type: wt, data: matrix(nEmbd, o.feedForwardLength, wt) },
      { name: p + 'ffn_up.weight', dims: [nEmbd, o.feedForwardLength], type: wt, data: matrix(nEmbd, o.feedForwardLength, wt) },
      { name: p + 'ffn_down.weight', dims: [o.feedForwardLength, nEmbd], type: wt, data: matrix(o.feedForwardLength, nEmbd, wt) },
    );
  }
  await writeGguf(path, { metadata: all, tensors });
}

export interface SyntheticLoraOptions {
  /** The base model's shape (as given to {@link writeSyntheticLlama}). */
  embeddingLength: number;
  layers: number;
  heads: number;
  headsKv?: number;
  /** Rank of the adapter (default 4). */
  rank?: number;
  /** LoRA alpha (default: the rank, so that the scale is 1). */
  alpha?: number;
  /** All-zero weights: an adapter that changes nothing. */
  zero?: boolean;
  seed?: number;
}

/** Writes a LoRA adapter (GGUF) for a synthetic llama model: A and B matrices for every layer's Q and V. */
export async function writeSyntheticLora(path: string, o: SyntheticLoraOptions): Promise<void> {
  const rank = o.rank ?? 4;
  const nEmbd = o.embeddingLength;
  const nKv = (o.headsKv ?? o.heads) * (nEmbd / o.heads);
  const random = rng(o.seed ?? 11);
  const values = (n: number, scale: number) => () => {
    const v = new Float32Array(n);
    if (!o.zero) for (let i = 0; i < n; i++) v[i] = (random() * 2 - 1) * scale;
    return encodeTensor(GGML_TYPE.F32, v);
  };
  const metadata: GgufKv[] = [
    { key: 'general.architecture', type: GgufType.STRING, value: 'llama' },
    { key: 'general.type', type: GgufType.STRING, value: 'adapter' },
    { key: 'general.name', type: GgufType.STRING, value: o.zero ? 'synthetic-lora-zero' : 'synthetic-lora' },
    { key: 'adapter.type', type: GgufType.STRING, value: 'lora' },
    { key: 'adapter.lora.alpha', type: GgufType.FLOAT32, value: o.alpha ?? rank },
  ];
  const tensors: GgufTensorSpec[] = [];
  for (let i = 0; i < o.layers; i++) {
    for (const [name, nOut] of [['attn_q', nEmbd], ['attn_v', nKv]] as const) {
      const base = `blk.${i}.${name}.weight`;
      // ggml order: A is [n_in, rank], B is [rank, n_out].
      tensors.push(
        { name: `${base}.lora_a`, dims: [nEmbd, rank], type: GGML_TYPE.F32, data: values(nEmbd * rank, 1 / Math.sqrt(nEmbd)) },
        { name: `${base}.lora_b`, dims: [rank, nOut], type: GGML_TYPE.F32, data: values(rank * nOut, 2) },
      );
    }
  }
  await writeGguf(path, { metadata, tensors });
}

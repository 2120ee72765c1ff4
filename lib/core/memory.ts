// Memory estimates from a GGUF header, and the number of layers that fit a GPU (`gpuLayers: 'auto'`).
import { chooseDevices, type GpuOption } from '../native/backends.js';
import { LlamaError } from '../base/errors.js';
import { readGguf } from '../gguf/reader.js';
import type { GgufFile, GgufValue } from '../gguf/types.js';
import { checkOptions, invalid } from '../base/validate.js';

/** Options of {@link estimateMemory}. */
export interface EstimateMemoryOptions {
  /** Tokens of KV cache to plan for (all sequences together). Default: the trained length, at most 4096. */
  contextSize?: number;
  /** Tokens per micro-batch, which sizes the compute buffer (default 512, llama.cpp's). */
  microBatchSize?: number;
  /** Layers to plan on the GPU: a number, `'max'`, or `'auto'` (default: as many as fit). */
  gpuLayers?: number | 'auto' | 'max';
  /** Which GPU backend's free memory to fit into (default `'auto'`; `false`: the CPU only). */
  gpu?: GpuOption;
}

/** What a model needs in memory, estimated from its GGUF header; all sizes in bytes. */
export interface MemoryEstimate {
  /** Repeating layers (blocks). */
  layers: number;
  weights: {
    /** All tensors: what the file holds (equals llama.cpp's model size). */
    total: number;
    /** Each block's tensors (`blk.<i>.*`). */
    perLayer: number[];
    /**
     * The output layer (`output.weight`, `output_norm.*`; for a model whose output reuses the token
     * embeddings, the copy llama.cpp makes of them), offloaded only with every block.
     */
    output: number;
    /** Everything else (token embeddings and the like), which stays in RAM. */
    other: number;
  };
  kvCache: {
    contextSize: number;
    /** Keys and values of one token in all layers (F16 cache). */
    bytesPerToken: number;
    /** Each layer's cache for `contextSize` tokens. */
    perLayer: number[];
    total: number;
  };
  /** A rough size of the compute buffer for one micro-batch (activations, attention scores, logits). */
  compute: number;
  /** Layers planned on the GPU (llama.cpp's `n_gpu_layers`: blocks + 1 means the output layer too). */
  gpuLayers: number;
  /** Bytes planned on the GPU devices and in RAM. */
  gpu: number;
  cpu: number;
  /** Free memory of the GPU devices found (0 without a GPU), and the margin left unused. */
  deviceFree: number;
  margin: number;
}

const num = (v: GgufValue | undefined): number | undefined => (typeof v === 'number' ? v : typeof v === 'bigint' ? Number(v) : undefined);

/**
 * A model's attention metadata (`<arch>.*` keys), read once for the functions below: the first layer's
 * query heads (llama.cpp's head dimension defaults to the embedding over them), each layer's KV heads, and
 * the key and value head dimensions given `heads` (the metadata's, or the embedding over `heads`).
 */
function attentionMetadata(m: Readonly<Record<string, GgufValue>>) {
  const arch = typeof m['general.architecture'] === 'string' ? m['general.architecture'] : 'llama';
  const key = (k: string) => m[`${arch}.${k}`];
  const embd = num(key('embedding_length')) ?? 0;
  const headCount = key('attention.head_count');
  const heads = num(Array.isArray(headCount) ? headCount[0] : headCount) ?? 1;
  const kv = key('attention.head_count_kv');
  return {
    key,
    embd,
    layers: num(key('block_count')) ?? 0,
    headCount,
    heads,
    headsKv: (i: number): number => (Array.isArray(kv) ? num(kv[i]) ?? heads : num(kv) ?? heads),
    keyLength: (h = heads): number => num(key('attention.key_length')) ?? Math.floor(embd / h),
    valueLength: (h = heads): number => num(key('attention.value_length')) ?? Math.floor(embd / h),
  };
}

/**
 * Bytes of F16 keys and values one token takes in all layers, from a model's GGUF metadata (0 when the
 * metadata does not say: an architecture without attention heads). @internal
 */
export function kvBytesPerToken(m: Readonly<Record<string, GgufValue>>): number {
  const a = attentionMetadata(m);
  const keyLength = a.keyLength();
  const valueLength = a.valueLength();
  let total = 0;
  for (let i = 0; i < a.layers; i++) total += a.headsKv(i) * (keyLength + valueLength) * 2;
  return total;
}

/**
 * The attention heads' shape from a model's GGUF metadata: query heads (the most of any layer) and the
 * dimensions of each key and value head; null when the metadata has no heads. @internal
 */
export function attentionShape(m: Readonly<Record<string, GgufValue>>): { heads: number; keyLength: number; valueLength: number } | null {
  const a = attentionMetadata(m);
  // Per-layer counts (an array): the most any layer has (layers without attention have 0).
  const heads = Array.isArray(a.headCount) ? Math.max(0, ...a.headCount.map((h) => num(h) ?? 0)) : num(a.headCount) ?? 0;
  if (heads <= 0 || a.embd <= 0) return null;
  return { heads, keyLength: a.keyLength(heads), valueLength: a.valueLength(heads) };
}

/** Memory a model needs for `options`, computed from its header (`gguf`) and the free device memory. */
export function estimateFromGguf(
  gguf: GgufFile,
  o: { contextSize?: number; microBatchSize?: number; gpuLayers?: number | 'auto' | 'max' },
  deviceFree: number,
): MemoryEstimate {
  const m = gguf.metadata;
  const a = attentionMetadata(m);
  const { key, layers, embd, heads } = a;
  const ff = num(Array.isArray(key('feed_forward_length')) ? (key('feed_forward_length') as GgufValue[])[0] : key('feed_forward_length')) ?? 4 * embd;
  const headsKvOf = a.headsKv;
  const keyLength = a.keyLength();
  const valueLength = a.valueLength();
  const trained = num(key('context_length')) ?? 4096;
  const contextSize = o.contextSize ?? Math.min(trained, 4096);
  const ubatch = o.microBatchSize ?? 512;
  const vocab = Array.isArray(m['tokenizer.ggml.tokens']) ? m['tokenizer.ggml.tokens'].length : num((m['tokenizer.ggml.tokens'] as { length?: number } | undefined)?.length) ?? 32000;

  const perLayer = new Array<number>(layers).fill(0);
  let output = 0;
  let other = 0;
  let total = 0;
  // Without output.weight the output layer reuses the token embeddings: llama.cpp loads a copy of them
  // where the output layer goes (on the GPU when everything is offloaded).
  const tied = !gguf.tensors.some((t) => t.name === 'output.weight');
  let tiedCopy = 0;
  for (const t of gguf.tensors) {
    if (tied && t.name === 'token_embd.weight') tiedCopy = t.size ?? 0;
    const size = t.size ?? 0;
    total += size;
    const b = /^blk\.(\d+)\./.exec(t.name);
    if (b && Number(b[1]) < layers) perLayer[Number(b[1])] += size;
    else if (t.name.startsWith('output')) output += size;
    else other += size;
  }
  // llama.cpp's cache: n_ctx cells of K and V per layer, F16 (2 bytes); padded to 256 cells.
  const cells = Math.ceil(contextSize / 256) * 256;
  const kvLayer = (i: number) => headsKvOf(i) * (keyLength + valueLength) * 2;
  const kvPerLayer = perLayer.map((_, i) => kvLayer(i) * cells);
  const bytesPerToken = perLayer.reduce((s, _, i) => s + kvLayer(i), 0);
  const kvTotal = kvPerLayer.reduce((a, b) => a + b, 0);
  output += tiedCopy;
  const compute = 4 * ubatch * (vocab + 6 * embd + 2 * ff + Math.min(cells, 4096) * heads);

  const margin = deviceFree > 0 ? Math.max(256 * 2 ** 20, Math.floor(deviceFree * 0.05)) : 0;
  let gpuLayers: number;
  if (o.gpuLayers === 'max') gpuLayers = layers + 1;
  else if (typeof o.gpuLayers === 'number') gpuLayers = Math.min(o.gpuLayers, layers + 1);
  else gpuLayers = fitLayers(perLayer, kvPerLayer, output, compute, deviceFree - margin);
  const onGpu = (i: number) => i >= layers - Math.min(gpuLayers, layers);
  let moved = 0;
  for (let i = 0; i < layers; i++) if (onGpu(i)) moved += perLayer[i] + kvPerLayer[i];
  if (gpuLayers > layers) moved += output;
  // Each side that computes has its compute buffer; a tied output layer's copy never left RAM's count.
  const gpu = gpuLayers > 0 ? moved + compute : 0;
  const cpu = total + kvTotal - moved + (gpuLayers > layers ? tiedCopy : 0) + compute;
  return {
    layers,
    weights: { total, perLayer, output, other },
    kvCache: { contextSize: cells, bytesPerToken, perLayer: kvPerLayer, total: kvTotal },
    compute,
    gpuLayers,
    gpu,
    cpu,
    deviceFree,
    margin,
  };
}

/**
 * The most layers (llama.cpp offloads the last ones first) whose weights and cache, with the compute
 * buffer, fit in `available` bytes; blocks + 1 when the output layer fits too.
 */
export function fitLayers(perLayer: number[], kvPerLayer: number[], output: number, compute: number, available: number): number {
  let left = available - compute;
  if (left <= 0) return 0;
  let n = 0;
  for (let i = perLayer.length - 1; i >= 0; i--) {
    const cost = perLayer[i] + kvPerLayer[i];
    if (cost > left) break;
    left -= cost;
    n++;
  }
  if (n === perLayer.length && output <= left) n++;
  return n;
}

const estimateKeys = ['contextSize', 'microBatchSize', 'gpuLayers', 'gpu'] as const;

/**
 * Estimates the memory a model needs, from its GGUF header alone (nothing is loaded), and how many layers
 * `gpuLayers: 'auto'` would put on the GPU: as many as fit in the free memory of the GPU backend's devices,
 * less a margin (5%, at least 256 MiB). This is what `loadModel(path, { gpuLayers: 'auto' })` uses.
 *
 * @throws LlamaError `ERR_MODEL_NOT_FOUND`, `ERR_INVALID_MODEL`, `ERR_INVALID_ARGUMENT`, `ERR_BACKEND_UNAVAILABLE`
 * (a GPU backend named in `gpu` that cannot be used).
 */
export async function estimateMemory(path: string, options?: EstimateMemoryOptions): Promise<MemoryEstimate> {
  if (typeof path !== 'string' || path.length === 0) throw invalid('path', 'a non-empty string', path, estimateMemory);
  const o = checkOptions('estimateMemory', options, estimateKeys, estimateMemory);
  for (const k of ['contextSize', 'microBatchSize'] as const) {
    const v = o[k];
    if (v !== undefined && !(Number.isInteger(v) && (v as number) > 0)) throw invalid(k, 'a positive integer', v, estimateMemory);
  }
  const gl = o.gpuLayers;
  if (gl !== undefined && gl !== 'auto' && gl !== 'max' && !(typeof gl === 'number' && Number.isInteger(gl) && gl >= 0)) {
    throw invalid('gpuLayers', 'a non-negative integer, "auto" or "max"', gl, estimateMemory);
  }
  const gpu = o.gpu ?? 'auto';
  if (!(gpu === 'auto' || gpu === false || gpu === 'cuda' || gpu === 'vulkan' || gpu === 'metal')) {
    throw invalid('gpu', '"auto", "cuda", "vulkan", "metal" or false', gpu, estimateMemory);
  }
  let gguf: GgufFile;
  try {
    gguf = await readGguf(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'ERR_MODEL_NOT_FOUND' : 'ERR_INVALID_MODEL';
    throw new LlamaError(code, `Could not read the GGUF header of ${path}: ${(e as Error).message}`, { cause: e });
  }
  const { devices } = await chooseDevices(gpu, estimateMemory);
  const free = devices.reduce((s, d) => s + d.memoryFree, 0);
  return estimateFromGguf(
    gguf,
    { contextSize: o.contextSize as number | undefined, microBatchSize: o.microBatchSize as number | undefined, gpuLayers: devices.length ? (gl as number | 'auto' | 'max' | undefined) : 0 },
    free,
  );
}

// The one hand-written description of the native addon's surface (native/*.cpp), and its loader.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isMainThread } from 'node:worker_threads';
import { LlamaError } from './errors.js';

export interface NativeModelInfo {
  description: string;
  parameters: number;
  sizeBytes: number;
  contextLength: number;
  embeddingLength: number;
  layers: number;
  heads: number;
  headsKv: number;
  vocabSize: number;
  vocabOnly: boolean;
  hasEncoder: boolean;
  hasDecoder: boolean;
  chatTemplate?: string;
  vocab: { bos: number; eos: number; eot: number; addBos: boolean };
}

export interface NativeLoadOptions {
  gpuLayers: number;
  useMmap?: boolean;
  useMlock?: boolean;
  vocabOnly: boolean;
}

export interface NativeModel {
  tokenize(text: string, addBos: boolean, special: boolean): Int32Array;
  detokenize(tokens: Int32Array, special: boolean): string;
  info(): NativeModelInfo;
  isEndOfGeneration(token: number): boolean;
  createContext(options: NativeContextOptions): Promise<NativeContext>;
  /** Parses a chat template (Jinja, or a built-in template's name); null: the model's own. */
  chatTemplate(source: string | null): NativeChatTemplate;
  matchesGrammar(grammar: string, text: string): boolean;
  loadLora(path: string): Promise<NativeLora>;
  dispose(): Promise<void>;
}

export interface NativeLora {
  info(): { metadata: Record<string, string> };
}

export interface NativeChatMessage {
  role: string;
  content: string;
  toolCalls?: Array<{ id: string; name: string; arguments: string }>;
  toolCallId?: string;
  toolName?: string;
  reasoning?: string;
}

export interface NativeChatApplyOptions {
  tools?: Array<{ name: string; description: string; parameters: string }>;
  toolChoice?: 'auto' | 'required' | 'none';
  parallelToolCalls?: boolean;
  /** A JSON schema (text) the reply must follow. */
  jsonSchema?: string;
}

export interface NativeChatApplied {
  prompt: string;
  stops: string[];
  grammar: string;
  grammarLazy: boolean;
  grammarTriggers: Array<{ type: 'word' | 'pattern' | 'patternFull' | 'token'; value: string; token?: number }>;
  preservedTokens: string[];
  generationPrompt: string;
  parser: string;
  format: number;
}

export interface NativeChatTemplate {
  apply(messages: NativeChatMessage[], addGenerationPrompt: boolean, options?: NativeChatApplyOptions): NativeChatApplied;
  parse(
    text: string,
    options: { parser: string; format: number; generationPrompt: string; partial?: boolean },
  ): { content: string; reasoning: string; toolCalls: Array<{ id: string; name: string; arguments: string }> };
  info(): { source: string; jinja: boolean; name?: string };
}

export interface NativeContextOptions {
  draftModel?: NativeModel;
  draftTokens?: number;
  lookupNgram?: number;
  promptChunkSize?: number;
  lora?: Array<[NativeLora, number]>;
  contextSize?: number;
  batchSize?: number;
  microBatchSize?: number;
  sequences?: number;
  threads?: number;
  threadsBatch?: number;
  flashAttention?: boolean | 'auto';
  embeddings?: boolean;
  pooling?: 'none' | 'mean' | 'cls' | 'last' | 'rank';
}

export interface NativeContextInfo {
  contextSize: number;
  totalContextSize: number;
  batchSize: number;
  microBatchSize: number;
  sequences: number;
  threads: number;
  threadsBatch: number;
  /** The KV cache supports moving tokens (context shift). */
  canShift: boolean;
  slidingWindow: boolean;
  pooling: 'none' | 'mean' | 'cls' | 'last' | 'rank';
  embeddingSize: number;
  rankOutputs: number;
}

export interface NativeGenerateOptions {
  maxTokens?: number;
  queueSize?: number;
  /** >= 0: each token's log-probability and this many alternatives. */
  logprobs?: number;
  priority?: number;
  /** false: no speculative decoding for this request. */
  speculative?: boolean;
  /** LoRA adapters and scales for this request (default: the context's). */
  lora?: Array<[NativeLora, number]>;
  /** Start aborted (the signal was aborted before the call). */
  aborted?: boolean;
  /** false: no chunks are queued and JS is notified only at the end. */
  stream?: boolean;
  stop?: string[];
  temperature?: number;
  topK?: number;
  topP?: number;
  minP?: number;
  typicalP?: number;
  repeatPenalty?: number;
  presencePenalty?: number;
  frequencyPenalty?: number;
  penaltyLastN?: number;
  seed?: number;
  logitBias?: Array<[number, number]>;
  grammar?: string;
  /** user: a GBNF grammar; output: from a JSON schema; tools: from a chat template's tool calls. */
  grammarType?: 'user' | 'output' | 'tools';
  grammarLazy?: boolean;
  grammarTriggers?: Array<{ type: 'word' | 'pattern' | 'patternFull' | 'token'; value: string; token?: number }>;
  /** Texts of single tokens that are rendered as text (tool-call markers). */
  preservedTokens?: string[];
  /** Text the prompt already ends with, fed to an output or tool-call grammar first. */
  generationPrompt?: string;
  /** Drop half of the tokens after the first `shiftKeep` when the sequence is full, and go on. */
  contextShift?: boolean;
  shiftKeep?: number;
  /** Before the prompt: drop `discardCount` cached tokens at `discardAt`, moving the later ones back. */
  discardAt?: number;
  discardCount?: number;
}

export interface NativeTokenLogprob {
  token: number;
  text: string;
  logprob: number;
  top: Array<{ token: number; text: string; logprob: number }>;
}

export interface NativeChunk {
  text: string;
  tokens: Int32Array;
  logprobs?: NativeTokenLogprob[];
}

export interface NativeGenerationResult {
  stopReason: 'eog' | 'stop' | 'maxTokens' | 'abort' | 'contextFull' | 'error';
  error?: string;
  text: string;
  tokens: Int32Array;
  promptTokens: number;
  evaluatedTokens: number;
  /** The tokens held in the sequence's KV cache afterwards. */
  sequence: Int32Array;
  /** Tokens dropped by context shifts during the generation. */
  discarded: number;
  /** False when it ended before the engine touched the sequence. */
  started: boolean;
  logprobs?: NativeTokenLogprob[];
  drafted: number;
  accepted: number;
  promptMs: number;
  generateMs: number;
  timeToFirstTokenMs: number;
}

export interface NativeTake {
  chunks: NativeChunk[];
  done: boolean;
  result?: NativeGenerationResult;
}

export interface NativeGeneration {
  take(): NativeTake;
  abort(): void;
}

export interface NativeContext {
  generate(
    sequence: number,
    tokens: Int32Array,
    keep: number,
    options: NativeGenerateOptions,
    onNotify: (done: boolean) => void,
  ): NativeGeneration;
  clearSequence(sequence: number): void;
  /** dst holds the first `length` cached tokens of src afterwards (ordered with queued generations). */
  copySequence(src: number, dst: number, length: number): void;
  saveSequence(sequence: number): Promise<{ data: Uint8Array; streams: number }>;
  loadSequence(sequence: number, data: Uint8Array, streams: number): Promise<void>;
  embed(inputs: Int32Array[], sequences: number[], normalize: boolean): Promise<Float32Array[]>;
  beamSearch(
    sequences: number[],
    tokens: Int32Array,
    keep: number,
    options: { beams: number; maxTokens?: number; lengthPenalty?: number; logitBias?: Array<[number, number]>; lora?: Array<[NativeLora, number]> },
  ): Promise<Array<{ tokens: Int32Array; logprob: number; score: number; finished: boolean }>>;
  info(): NativeContextInfo;
  dispose(): Promise<void>;
}

export interface NativeSystemInfo {
  llamaCppVersion: string;
  systemInfo: string;
  defaultThreads: number;
  physicalCores: number;
  supportsGpuOffload: boolean;
  supportsMmap: boolean;
  supportsMlock: boolean;
  maxSequences: number;
}

/** The compute backends compiled into the addon and the devices they found. */
export interface BackendInfo {
  /** Backend names, such as `CPU`, `CUDA`, `Metal`, `Vulkan`. */
  backends: string[];
  devices: Array<{
    name: string;
    description: string;
    type: 'cpu' | 'gpu' | 'igpu' | 'accel' | 'other';
    /** The backend the device belongs to. */
    backend: string;
    /** Bytes free and in total, as the backend reports them. */
    memoryFree: number;
    memoryTotal: number;
  }>;
}

export interface NativeAddon {
  loadModel(
    path: string,
    options: NativeLoadOptions,
    onProgress?: (progress: number) => void,
  ): { promise: Promise<NativeModel>; abort(): void };
  systemInfo(): NativeSystemInfo;
  backendInfo(): BackendInfo;
  jsonSchemaToGrammar(schema: string): string;
  quantize(input: string, output: string, ftype: number, threads: number): Promise<void>;
  setLogLevel(level: number): void;
  setLogSink(sink: ((level: string, message: string) => void) | null): void;
  shutdown(): void;
}

const packageRoot = join(dirname(fileURLToPath(import.meta.url)), '..');

/** Where the loader looks for the addon, in order. */
export function addonCandidates(): string[] {
  const list: string[] = [];
  if (process.env.LLAMA_ADDON_BINARY) list.push(process.env.LLAMA_ADDON_BINARY);
  list.push(join(packageRoot, 'build', 'Release', 'llama_addon.node'));
  list.push(join(packageRoot, 'build', 'Debug', 'llama_addon.node'));
  return list;
}

let cached: NativeAddon | undefined;

/** Loads the native addon once; on failure throws one error listing every place tried and why. */
export function native(): NativeAddon {
  if (cached) return cached;
  const require = createRequire(import.meta.url);
  const failures: string[] = [];
  for (const file of addonCandidates()) {
    if (!existsSync(file)) {
      failures.push(`${file}: not found`);
      continue;
    }
    try {
      const addon = require(file) as NativeAddon;
      cached = addon;
      // Engine threads must stop before C++ static destructors run, or a decode in flight at
      // process.exit() would crash on freed llama.cpp state. Worker threads clean up with their environment.
      if (isMainThread) process.once('exit', () => addon.shutdown());
      return addon;
    } catch (e) {
      failures.push(`${file}: ${(e as Error).message}`);
    }
  }
  throw new LlamaError(
    'ERR_NATIVE_LOAD',
    `llama-addon could not load its native addon. Looked for:\n  ${failures.join('\n  ')}\n` +
      `Build it with \`npm run build\` in ${packageRoot} (needs cmake and a C++ compiler).`,
  );
}

// The one hand-written description of the native addon's surface (native/*.cpp), and its loader.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import type { NativeSampling } from '../options/sampling.js';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isMainThread } from 'node:worker_threads';
import { LlamaError } from '../base/errors.js';

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
  /** Names of the local devices to use (ggml device names such as `CUDA0`); absent: llama.cpp's choice. */
  devices?: string[];
  /** `host:port` of llama.cpp RPC servers whose devices hold part of the model. */
  rpcServers?: string[];
  useMmap?: boolean;
  useMlock?: boolean;
  vocabOnly: boolean;
}

export interface NativeModel {
  tokenize(text: string, addBos: boolean, special: boolean): Int32Array;
  tokenizeAsync(text: string, addBos: boolean, special: boolean): Promise<Int32Array>;
  detokenize(tokens: Int32Array, special: boolean): string;
  info(): NativeModelInfo;
  isEndOfGeneration(token: number): boolean;
  createContext(options: NativeContextOptions): Promise<NativeContext>;
  /** Parses a chat template (Jinja, or a built-in template's name); null: the model's own. */
  chatTemplate(source: string | null): NativeChatTemplate;
  /** The same, parsed (and probed by rendering it) off the JS thread. */
  chatTemplateAsync(source: string | null): Promise<NativeChatTemplate>;
  matchesGrammar(grammar: string, text: string): Promise<boolean>;
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
  /** The same, rendered on a worker thread. */
  applyAsync(messages: NativeChatMessage[], addGenerationPrompt: boolean, options?: NativeChatApplyOptions): Promise<NativeChatApplied>;
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
  /** One KV buffer of contextSize cells for all sequences (llama.cpp's kv_unified). */
  kvUnified?: boolean;
  threads?: number;
  threadsBatch?: number;
  /** threads: 'auto': each step's count is chosen up to `threads` (native/thread_tuner.h). */
  adaptiveThreads?: boolean;
  adaptiveThreadsBatch?: boolean;
  flashAttention?: boolean | 'auto';
  /** The draft model's context (default: `flashAttention`). */
  draftFlashAttention?: boolean | 'auto';
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
  /** The counts the last decode steps used (below `threads` when adapting). */
  threadsInUse: number;
  threadsBatchInUse: number;
  /** Prompts on their way (expectPrompts()) now. */
  promptsExpected: number;
  /** The KV cache supports moving tokens (context shift). */
  canShift: boolean;
  /** All sequences share one KV buffer of contextSize cells. */
  kvUnified: boolean;
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
  /** Every sampling value (lib/options/sampling.ts): the native side holds no defaults. */
  sampling: NativeSampling;
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
  /**
   * When the sequence is full, drop `shiftDiscard` tokens after the first `shiftKeep` and go on (0 or
   * absent: end with contextFull). The engine applies it; the rule of how many is the session's.
   */
  shiftKeep?: number;
  shiftDiscard?: number;
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
  /** With stopReason error: the LlamaError code, and the message. */
  errorCode?: string;
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
  /**
   * Present when the engine moved the sequence's cells out of a shared KV cache (kvUnified) as the generation
   * ended with contextFull while others went on: their state (one stream, `sequence` says what it holds), or
   * null when it could not be copied. The sequence is empty.
   */
  evicted?: Uint8Array | null;
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
    options: { beams: number; maxTokens?: number; lengthPenalty?: number; logitBias?: Array<[number, number]>; lora?: Array<[NativeLora, number]>; abortId?: number },
  ): Promise<{
    /** Best first; after an abort, the beams found so far (unfinished ones included). */
    beams: Array<{ tokens: Int32Array; logprob: number; score: number; finished: boolean }>;
    /** `abortTask(abortId)` ended it. */
    aborted: boolean;
    /** It ended because the sequence, or the KV cache all sequences share, had no room for another step. */
    full: boolean;
    /** Prompt tokens the home sequence holds afterwards: all, unless aborted before the prompt was decoded. */
    kept: number;
  }>;
  /** Ends the beam search started with this `abortId`, if it has not ended; whether there was one. */
  abortTask(abortId: number): boolean;
  /**
   * Prompts on their way to this context: +1 when a request arrives, -1 when its generation is queued or it
   * fails. An idle engine waits for them to decode them together (up to 50 ms). Nothing after disposal.
   */
  expectPrompts(delta: number): void;
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

/** What the native addon reports about loaded backends (lib/native/backends.ts adds the GPU modules). */
export interface NativeBackendInfo {
  backends: string[];
  cpuFeatures: Record<string, string>;
  devices: BackendDevice[];
}

/** A compute device of a loaded backend. */
export interface BackendDevice {
  /** ggml's device name, such as `CPU`, `CUDA0`, `Vulkan0`. */
  name: string;
  description: string;
  type: 'cpu' | 'gpu' | 'igpu' | 'accel' | 'other';
  /** The backend the device belongs to. */
  backend: string;
  /** Bytes free and in total, as the backend reports them. */
  memoryFree: number;
  memoryTotal: number;
}

/** The compute backends loaded and usable here, their devices, and the GPU backend modules found. */
export interface BackendInfo {
  /** Backend names, such as `CPU`, `RPC`, `CUDA`, `Metal`, `Vulkan`. */
  backends: string[];
  /** Instruction-set features of the CPU backend variant that was picked for this CPU (`AVX2: '1'`, ...). */
  cpuFeatures: Record<string, string>;
  /**
   * GPU backend modules found (beside the addon in `gpu/`, in an optional `@llama-addon/<platform>-<arch>-<backend>`
   * package, or in `LLAMA_ADDON_GPU_MODULES`) and what became of them.
   */
  gpuModules: GpuModuleInfo[];
  devices: BackendDevice[];
}

/** A GPU backend module and its state in this process. */
export interface GpuModuleInfo {
  /** `cuda`, `vulkan` or `metal`. */
  backend: GpuBackendName;
  path: string;
  /** `loaded`: usable; `failed`: its probe or load failed (see `error`); `found`: not tried yet. */
  state: 'loaded' | 'failed' | 'found';
  error?: string;
}

/** GPU backends llama-addon knows how to load. */
export type GpuBackendName = 'cuda' | 'vulkan' | 'metal';

export interface NativeAddon {
  loadModel(
    path: string,
    options: NativeLoadOptions,
    onProgress?: (progress: number) => void,
  ): { promise: Promise<NativeModel>; abort(): void };
  systemInfo(): NativeSystemInfo;
  /** A ThreadTuner driven by made-up costs: the counts it chose, step by step (tests only). */
  simulateThreadTuner(
    maxThreads: number,
    steps: number,
    cost: (threads: number, step: number) => number,
    waits?: (step: number) => number,
    idle?: (step: number) => number,
  ): Int32Array;
  /**
   * The engine's tuners (one per shape of step, native/thread_tuner.h) driven by made-up steps: `tokens`
   * gives each step's size, `cost` its seconds at a count; the counts chosen, step by step (tests only).
   */
  simulateThreadTuners(
    maxThreads: number,
    steps: number,
    tokens: (step: number) => number,
    cost: (threads: number, tokens: number, step: number) => number,
    waits?: (step: number) => number,
    idle?: (step: number) => number,
  ): Int32Array;
  backendInfo(): NativeBackendInfo;
  /** Loads the CPU module best for this CPU and the other non-GPU modules in `dir`; returns backend names. */
  initBackends(dir: string): string[];
  /** Loads one backend module; `error` says why it did not load. */
  loadBackend(path: string): { backend?: string; error?: string };
  /** Runs llama.cpp's RPC server on this thread until the process ends. */
  rpcServe(endpoint: string, cacheDir: string | null, threads: number, devices: string[]): never;
  jsonSchemaToGrammar(schema: string, bestEffort?: boolean): string;
  jsonSchemaToGrammarAsync(schema: string, bestEffort?: boolean): Promise<string>;
  quantize(input: string, output: string, ftype: number, threads: number): Promise<void>;
  setLogLevel(level: number): void;
  setLogSink(sink: ((level: string, message: string) => void) | null): void;
  shutdown(): void;
}

/** The package's root folder: the nearest folder above this module with llama-addon's package.json. */
function findPackageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    try {
      if ((JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { name?: string }).name === 'llama-addon') return dir;
    } catch {
      // no package.json here
    }
    const up = dirname(dir);
    if (up === dir) return join(dirname(fileURLToPath(import.meta.url)), '..');
    dir = up;
  }
}

const packageRoot = findPackageRoot();

/** A place the loader looks for the addon. */
export interface AddonCandidate {
  file: string;
  /** `env`: LLAMA_ADDON_BINARY; `build`: a local source build; `prebuilt`: a prebuilt binary in the package. */
  kind: 'env' | 'build' | 'prebuilt';
}

/** The C library this Linux process runs on (prebuilt Linux binaries are built for glibc). */
export function libc(): 'glibc' | 'musl' | null {
  if (process.platform !== 'linux') return null;
  const report = process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined;
  if (report?.header?.glibcVersionRuntime) return 'glibc';
  // No glibc version reported: musl if its dynamic loader is there (Alpine), else glibc (a static Node).
  try {
    return readdirSync('/lib').some((f) => f.startsWith('ld-musl-')) ? 'musl' : 'glibc';
  } catch {
    return 'glibc';
  }
}

/** Folder of prebuilt binaries for this platform, in prebuildify's layout (`prebuilds/<platform>-<arch>/`). */
export function prebuiltDir(): string {
  return join(packageRoot, 'prebuilds', `${process.platform}-${process.arch}`);
}

/**
 * In an Electron app packed into app.asar, native files must be unpacked (electron-builder's `asarUnpack`)
 * and are loaded from app.asar.unpacked, where their neighbouring libraries are real files too.
 */
export function unpackedPath(p: string): string {
  return p.replace(/([\\/])app\.asar([\\/])/, '$1app.asar.unpacked$2');
}

/** Where the loader looks for the addon, in order: LLAMA_ADDON_BINARY, a local source build, a prebuilt binary. */
export function addonCandidates(): AddonCandidate[] {
  const list: AddonCandidate[] = [];
  if (process.env.LLAMA_ADDON_BINARY) list.push({ file: resolve(process.env.LLAMA_ADDON_BINARY), kind: 'env' });
  list.push({ file: unpackedPath(join(packageRoot, 'build', 'Release', 'llama_addon.node')), kind: 'build' });
  list.push({ file: unpackedPath(join(packageRoot, 'build', 'Debug', 'llama_addon.node')), kind: 'build' });
  const tags = ['napi', libc()].filter(Boolean).join('.');
  list.push({ file: unpackedPath(join(prebuiltDir(), `llama-addon.${tags}.node`)), kind: 'prebuilt' });
  return list;
}

/** What the prebuilds folder holds, for the loader's error message. */
function prebuiltSummary(): string {
  const dir = join(packageRoot, 'prebuilds');
  if (!existsSync(dir)) return 'no prebuilds/ folder in the package';
  const found: string[] = [];
  for (const platform of readdirSync(dir, { withFileTypes: true })) {
    if (!platform.isDirectory()) continue;
    for (const f of readdirSync(join(dir, platform.name))) if (f.endsWith('.node')) found.push(`${platform.name}/${f}`);
  }
  return found.length ? `prebuilt binaries for ${found.join(', ')}` : 'an empty prebuilds/ folder';
}

let cached: NativeAddon | undefined;
let cachedFile: string | undefined;

/** The addon file that was loaded (after {@link native} succeeded). */
export function loadedAddonFile(): string | undefined {
  return cachedFile;
}

/**
 * @internal The one error of a failed load: every place tried and why, what was found, and the fix (the
 * permission a runtime refused, or a build from source).
 */
export function nativeLoadError(failures: readonly string[], platform: string, found: string): LlamaError {
  // A runtime that refused a permission (Deno: "Requires ffi access to ..."): the binary is fine, the
  // permission is what is missing.
  const denied = failures.map((f) => /Requires (\w+) access/.exec(f)?.[1]).find((p): p is string => p !== undefined);
  if (denied) {
    return new LlamaError(
      'ERR_NATIVE_LOAD',
      `llama-addon could not load its native addon for ${platform}: the runtime refused ${denied} access. Looked for:\n  ${failures.join('\n  ')}\n` +
        `Fix: allow it (Deno: \`deno run --allow-${denied} ...\`; the addon also needs --allow-read, --allow-env and --allow-sys: see the README's Deno section).`,
    );
  }
  return new LlamaError(
    'ERR_NATIVE_LOAD',
    `llama-addon could not load its native addon for ${platform}. Looked for:\n  ${failures.join('\n  ')}\n` +
      `Found: ${found}.\n` +
      `Fix: build it from source with \`LLAMA_ADDON_REBUILD=1 npm rebuild llama-addon --foreground-scripts\` ` +
      `(needs cmake and a C++ compiler; the pinned llama.cpp source comes from npm; 10 minutes or more on 2 cores; ` +
      `in a clone of the repository: \`npm run build\`), ` +
      `or set LLAMA_ADDON_BINARY to a built llama_addon.node.`,
  );
}

/** Loads the native addon once; on failure throws one error listing every place tried and why. */
export function native(): NativeAddon {
  if (cached) return cached;
  const require = createRequire(import.meta.url);
  const failures: string[] = [];
  for (const { file } of addonCandidates()) {
    if (!existsSync(file)) {
      failures.push(`${file}: not found`);
      continue;
    }
    try {
      const addon = require(file) as NativeAddon;
      addon.initBackends(dirname(file));
      cached = addon;
      cachedFile = file;
      // Engine threads must stop before C++ static destructors run, or a decode in flight at
      // process.exit() would crash on freed llama.cpp state. Worker threads clean up with their environment.
      if (isMainThread) process.once('exit', () => addon.shutdown());
      return addon;
    } catch (e) {
      failures.push(`${file}: ${(e as Error).message}`);
    }
  }
  const platform = `${process.platform}-${process.arch}${libc() ? ` (${libc()})` : ''}`;
  throw nativeLoadError(failures, platform, prebuiltSummary());
}

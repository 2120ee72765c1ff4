// loadModel and LlamaModel: a GGUF model loaded off the JS thread, its vocabulary, tokenizer and templates.
import { createHash } from 'node:crypto';
import { open, stat } from 'node:fs/promises';
import { chatTemplateKey, checkMessages, type ApplyChatTemplateOptions, type ChatMessage } from './chat-template.js';
import { LlamaContext, type ContextOptions } from './context.js';
import { LlamaLora } from './lora.js';
import { LlamaError, callNative, toLlamaError, llamaError } from '../base/errors.js';
import { connect } from 'node:net';
import { chooseDevices, type GpuOption } from '../native/backends.js';
import { GgufFormatError, readGguf } from '../gguf/reader.js';
import type { GgufFile, GgufValue } from '../gguf/types.js';
import { estimateFromGguf } from './memory.js';
import type { GpuBackendName } from '../native/native.js';
import { native, type NativeChatTemplate, type NativeModel } from '../native/native.js';
import { checkOptions, invalid, optBoolean, optFunction, optSignal, tokenIds } from '../base/validate.js';

/** Options of {@link loadModel}. */
export interface LoadModelOptions {
  /**
   * Which GPU backend to use: `'auto'` (the default) uses the first that loads here (Metal on Apple silicon,
   * CUDA where the NVIDIA driver loads, Vulkan where a Vulkan driver does) and falls back to the CPU with a
   * process warning (`LLAMA_ADDON_GPU_FALLBACK`) when an installed one fails; `'cuda'`, `'vulkan'` or `'metal'`
   * insists (`ERR_BACKEND_UNAVAILABLE` when it is missing or fails); `false` runs on the CPU. Each GPU module
   * is first probed in a child process, so a broken driver cannot crash this one.
   */
  gpu?: GpuOption;
  /**
   * Layers to offload: a number, `'max'` for all, or `'auto'` (the default): as many as fit in the free
   * memory of the GPU devices, estimated from the GGUF header with a KV cache of up to 4096 tokens and a
   * margin (see {@link estimateMemory}); all with `rpcServers`; none without a GPU.
   */
  gpuLayers?: number | 'auto' | 'max';
  /**
   * `host:port` of llama.cpp RPC servers (`npx llama-addon rpc-server`) to split the model across: their
   * devices take layers first, as in llama.cpp.
   */
  rpcServers?: string[];
  /** Memory-map the weights instead of reading them (default: true where supported). */
  useMmap?: boolean;
  /** Lock the weights in RAM so the OS cannot swap them out (default: false). */
  useMlock?: boolean;
  /** Load only the vocabulary: tokenize and detokenize work, contexts cannot be created. */
  vocabOnly?: boolean;
  /** Called with the load progress, from 0 to 1. */
  onProgress?: (progress: number) => void;
  /** Aborts the load; the promise then rejects with `ERR_ABORTED`. */
  signal?: AbortSignal;
}

/** Where a model's layers went. */
export interface ModelPlacement {
  /** The GPU backend used, or null (CPU, and RPC servers if any). */
  gpu: GpuBackendName | null;
  /** Devices holding layers besides the CPU (ggml names: `CUDA0`, ...; RPC servers as `host:port`). */
  devices: string[];
  /** Layers offloaded as asked of llama.cpp (`-1`: all). */
  gpuLayers: number;
}

/** What a model is, read from its GGUF header and from llama.cpp. */
export interface ModelInfo {
  /** `general.architecture`, for example `llama`. */
  architecture: string;
  /** `general.name`, or the file name when the model has none. */
  name: string;
  /** Number of parameters (weights). */
  parameters: number;
  /** Size of the weights in bytes. */
  sizeBytes: number;
  /** Context length the model was trained with. */
  contextLength: number;
  /** Size of the embedding vectors. */
  embeddingLength: number;
  /** Number of layers (blocks). */
  layers: number;
  /** Number of tokens in the vocabulary. */
  vocabSize: number;
  /** The Jinja chat template in the model's metadata (`tokenizer.chat_template`), if any. */
  chatTemplate?: string;
  /** The model has a classification head (`cls.*` tensors): a reranker, for {@link LlamaContext.rank}. */
  canRank: boolean;
}

/** The model's vocabulary: size and special tokens. */
export interface Vocabulary {
  /** Number of tokens. */
  readonly size: number;
  /** Beginning-of-sequence token, or null when the model has none. */
  readonly bos: number | null;
  /** End-of-sequence token, or null when the model has none. */
  readonly eos: number | null;
  /** End-of-turn token, or null when the model has none. */
  readonly eot: number | null;
  /** True for every token that ends a generation (EOS, EOT and the like). */
  isEndOfGeneration(token: number): boolean;
}

/** Options of {@link LlamaModel.tokenize}. */
export interface TokenizeOptions {
  /**
   * Parse special tokens such as `<|im_start|>` written in the text (default false: text is always plain
   * text, so user input cannot inject control tokens).
   */
  special?: boolean;
  /** Add the beginning-of-sequence token when the model uses one (default true). */
  addBos?: boolean;
}

/** Options of {@link LlamaModel.detokenize}. */
export interface DetokenizeOptions {
  /** Render special tokens as their text (default false). */
  special?: boolean;
}


/**
 * A loaded GGUF model. Create contexts from it to generate text; dispose it (or use `await using`) to free
 * its memory.
 */
export class LlamaModel implements AsyncDisposable {
  #native: NativeModel | null;
  #contexts = new Set<LlamaContext>();  // made from this model, or using it as their draftModel
  #draftOf = new Map<LlamaContext, LlamaModel>();  // this model's contexts that use another model as draftModel
  #disposing: Promise<void> | null = null;
  readonly #mapped: FileIdentity | null;
  /** Parsed templates by source (null: the model's own, parsed at load); a model's template that failed, its error. */
  #templates = new Map<string | null, NativeChatTemplate | LlamaError>();
  #pendingTemplates = new Map<string, Promise<NativeChatTemplate>>();
  /** The file the model was loaded from. */
  readonly path: string;
  /** What the model is. */
  readonly info: Readonly<ModelInfo>;
  /** Every GGUF metadata key and value. Arrays longer than 64 elements are summarized. */
  readonly metadata: Readonly<Record<string, GgufValue>>;
  /** The vocabulary and its special tokens. */
  readonly vocab: Vocabulary;
  /**
   * Identifies the model file's content: a SHA-256 over its GGUF header, its size and samples of its
   * weights. Saved session states record it, so that they never load into another model.
   */
  readonly fingerprint: string;

  /** Where the model's layers went: GPU backend, devices, offloaded layers. */
  readonly placement: Readonly<ModelPlacement>;

  /** @internal use {@link loadModel} */
  constructor(
    nativeModel: NativeModel,
    path: string,
    metadata: Record<string, GgufValue>,
    fingerprint: string,
    canRank: boolean,
    placement: ModelPlacement = { gpu: null, devices: [], gpuLayers: 0 },
    mapped: FileIdentity | null = null,
  ) {
    this.#native = nativeModel;
    this.#mapped = mapped;
    this.placement = Object.freeze({ ...placement, devices: Object.freeze([...placement.devices]) as string[] });
    this.path = path;
    this.fingerprint = fingerprint;
    this.metadata = Object.freeze(metadata);
    const ni = nativeModel.info();
    const str = (k: string) => (typeof metadata[k] === 'string' ? (metadata[k] as string) : undefined);
    this.info = Object.freeze({
      architecture: str('general.architecture') ?? 'unknown',
      name: str('general.name') ?? path.split(/[\\/]/).pop()!.replace(/\.gguf$/i, ''),
      parameters: ni.parameters,
      sizeBytes: ni.sizeBytes,
      contextLength: ni.contextLength,
      embeddingLength: ni.embeddingLength,
      layers: ni.layers,
      vocabSize: ni.vocabSize,
      ...(ni.chatTemplate !== undefined ? { chatTemplate: ni.chatTemplate } : {}),
      canRank,
    });
    const orNull = (t: number) => (t >= 0 ? t : null);
    const self = this;
    this.vocab = Object.freeze({
      size: ni.vocabSize,
      bos: orNull(ni.vocab.bos),
      eos: orNull(ni.vocab.eos),
      eot: orNull(ni.vocab.eot),
      isEndOfGeneration(token: number): boolean {
        return self.#handle(this.isEndOfGeneration).isEndOfGeneration(token);
      },
    });
  }

  /** True once {@link dispose} has been called. */
  get disposed(): boolean {
    return this.#native === null;
  }

  #handle(caller: Function): NativeModel {
    if (this.#native === null) {
      throw llamaError('ERR_DISPOSED', 'The model has been disposed', caller);
    }
    return this.#native;
  }

  /**
   * Turns text into token ids, on the calling thread (linear in the text: about 0.3–1 ms per KiB on most
   * vocabularies; at most `limits.tokenizeBytes`).
   * @throws LlamaError `ERR_TOKENIZE` for text the vocabulary cannot represent, `ERR_LIMIT_EXCEEDED` past
   * the limit.
   */
  tokenize(text: string, options?: TokenizeOptions): Int32Array {
    const h = this.#handle(this.tokenize);
    if (typeof text !== 'string') throw invalid('text', 'a string', text, this.tokenize);
    const o = checkOptions('tokenize', options, ['special', 'addBos'], this.tokenize);
    const special = optBoolean(o, 'special', this.tokenize) ?? false;
    const addBos = optBoolean(o, 'addBos', this.tokenize) ?? true;
    return callNative(this.tokenize, () => h.tokenize(text, addBos, special));
  }

  /**
   * {@link tokenize} off the JS thread (a libuv worker): for long texts, where the event loop must not
   * wait. Generations tokenize a string prompt this way from 16,384 characters on.
   */
  async tokenizeAsync(text: string, options?: TokenizeOptions): Promise<Int32Array> {
    const h = this.#handle(this.tokenizeAsync);
    if (typeof text !== 'string') throw invalid('text', 'a string', text, this.tokenizeAsync);
    const o = checkOptions('tokenizeAsync', options, ['special', 'addBos'], this.tokenizeAsync);
    const special = optBoolean(o, 'special', this.tokenizeAsync) ?? false;
    const addBos = optBoolean(o, 'addBos', this.tokenizeAsync) ?? true;
    const promise = callNative(this.tokenizeAsync, () => h.tokenizeAsync(text, addBos, special));
    try {
      return await promise;
    } catch (e) {
      throw toLlamaError(e);
    }
  }

  /** Turns token ids back into text. */
  detokenize(tokens: Int32Array | readonly number[], options?: DetokenizeOptions): string {
    const h = this.#handle(this.detokenize);
    const t = tokenIds('tokens', tokens, this.vocab.size, this.detokenize);
    const o = checkOptions('detokenize', options, ['special'], this.detokenize);
    const special = optBoolean(o, 'special', this.detokenize) ?? false;
    return callNative(this.detokenize, () => h.detokenize(t, special));
  }

  /**
   * Renders a conversation with a chat template: by default the model's own (`tokenizer.chat_template`),
   * through llama.cpp's Jinja engine (the one llama-server uses); ChatML when the model has none.
   * `template` may be Jinja source or the name of one of llama.cpp's built-in templates (`'chatml'`,
   * `'llama3'`, ...).
   *
   * @throws LlamaError `ERR_INVALID_MESSAGE` for an unknown role or a content that is not a string,
   * `ERR_INVALID_TEMPLATE` when the template fails to parse or to render.
   */
  applyChatTemplate(messages: readonly ChatMessage[], options?: ApplyChatTemplateOptions): string {
    const o = checkOptions('applyChatTemplate', options, ['addGenerationPrompt', 'template'], this.applyChatTemplate);
    const addGenerationPrompt = optBoolean(o, 'addGenerationPrompt', this.applyChatTemplate) ?? true;
    const template = chatTemplateKey(o.template, this.applyChatTemplate);
    const msgs = checkMessages(messages, this.applyChatTemplate);
    const t = this.chatTemplate(template, this.applyChatTemplate);
    return callNative(this.applyChatTemplate, () => t.apply(msgs, addGenerationPrompt)).prompt;
  }

  /**
   * Whether `text` is a complete sentence of a GBNF `grammar` (its `root` rule), checked with llama.cpp's
   * own grammar parser: for example, to check output produced elsewhere. Runs off the JS thread.
   * Limits (see README, *Errors*): the text at most 1 MiB; an ambiguous grammar that needs more than 8192
   * parse states at once (`limits.grammarStates`), or whose parse states deepen until one character needs
   * more than `limits.grammarStepWork` steps, is refused rather than matched in exponential or quadratic time.
   * @throws LlamaError `ERR_INVALID_GRAMMAR` when the grammar does not parse; `ERR_LIMIT_EXCEEDED` past a
   * limit.
   */
  async matchesGrammar(text: string, grammar: string): Promise<boolean> {
    const h = this.#handle(this.matchesGrammar);
    if (typeof text !== 'string') throw invalid('text', 'a string', text, this.matchesGrammar);
    if (typeof grammar !== 'string') throw invalid('grammar', 'a GBNF grammar (a string)', grammar, this.matchesGrammar);
    const promise = callNative(this.matchesGrammar, () => h.matchesGrammar(grammar, text));
    try {
      return await promise;
    } catch (e) {
      throw toLlamaError(e);
    }
  }

  /**
   * Loads a LoRA adapter (GGUF) made for this model. Use it with `createContext({ lora: [adapter] })` or
   * per request, `generate(prompt, { lora: [{ adapter, scale: 0.5 }] })`. It is freed with the model.
   * @throws LlamaError `ERR_INVALID_ADAPTER` when the file is not a LoRA adapter or was made for another
   * base model (the message gives llama.cpp's reason).
   */
  async loadLora(path: string): Promise<LlamaLora> {
    const h = this.#handle(this.loadLora);
    if (typeof path !== 'string' || path.length === 0) throw invalid('path', 'a non-empty string', path, this.loadLora);
    try {
      await stat(path);
    } catch (e) {
      throw new LlamaError('ERR_INVALID_ADAPTER', `LoRA adapter file not found: ${path}`, { cause: e });
    }
    const promise = callNative(this.loadLora, () => h.loadLora(path));
    try {
      return new LlamaLora(await promise, path);
    } catch (e) {
      throw toLlamaError(e);
    }
  }

  /** @internal the native handle, for a context that uses this model as its draft model */
  nativeHandle(caller: Function): NativeModel {
    return this.#handle(caller);
  }

  /**
   * @internal A parsed chat template if it is cached (the model's own is parsed at load), or else a promise
   * of it, parsed off the JS thread: llama.cpp learns what a template supports by rendering it with probe
   * messages, which may take up to the template's time limit. The promise rejects with the template's
   * `LlamaError` (it is also handled, so that a chat that never sends raises no unhandled rejection).
   */
  chatTemplateSoon(source: string | null, caller: Function): NativeChatTemplate | Promise<NativeChatTemplate> {
    if (source === null) return this.chatTemplate(null, caller);
    const h = this.#handle(caller);
    const known = this.#templates.get(source);
    if (known instanceof LlamaError) throw llamaError(known.code, known.message, caller);
    if (known) return known;
    const pending = this.#pendingTemplates.get(source);
    if (pending) return pending;
    const p = (async () => {
      try {
        const t = await h.chatTemplateAsync(source);
        this.#cacheTemplate(source, t);
        return t;
      } catch (e) {
        throw toLlamaError(e);
      } finally {
        this.#pendingTemplates.delete(source);
      }
    })();
    p.catch(() => {});
    this.#pendingTemplates.set(source, p);
    return p;
  }

  #cacheTemplate(source: string | null, t: NativeChatTemplate): void {
    if (this.#templates.size >= 16) this.#templates.delete([...this.#templates.keys()].find((k) => k !== null)!);
    this.#templates.set(source, t);
  }

  /** @internal a parsed chat template, cached per source, parsed on the JS thread if it is not */
  chatTemplate(source: string | null, caller: Function): NativeChatTemplate {
    const h = this.#handle(caller);
    let t = this.#templates.get(source);
    if (t instanceof LlamaError) throw llamaError(t.code, t.message, caller);
    if (!t) {
      t = callNative(caller, () => h.chatTemplate(source));
      this.#cacheTemplate(source, t);
    }
    return t;
  }

  /**
   * @internal Parses the model's own chat template off the JS thread, at load: it is untrusted input (it
   * comes with the file), and llama.cpp learns what it supports by rendering it. createChat() then finds it
   * parsed, or throws the error it gave.
   */
  async prepareOwnTemplate(): Promise<void> {
    const h = this.#native;
    if (!h) return;
    try {
      this.#templates.set(null, await h.chatTemplateAsync(null));
    } catch (e) {
      const err = toLlamaError(e);
      // Errors of the template, kept for createChat(); anything else (a disposed model) is left to it.
      if (err.code === 'ERR_INVALID_TEMPLATE' || err.code === 'ERR_LIMIT_EXCEEDED') this.#templates.set(null, err);
    }
  }

  /** Creates a context: the KV cache and compute buffers that generation runs in. */
  async createContext(options?: ContextOptions): Promise<LlamaContext> {
    const h = this.#handle(this.createContext);
    await this.#checkMapped(this.createContext);
    const ctx = await LlamaContext.create(this, h, options, this.createContext);
    this.#contexts.add(ctx);
    // Disposing the draft model disposes the context too: its engine drafts with that model at every step.
    const draft = options?.draftModel;
    if (draft instanceof LlamaModel && draft !== this) {
      if (draft.disposed) {
        await ctx.dispose();
        throw llamaError('ERR_DISPOSED', 'The draft model was disposed while the context was created', this.createContext);
      }
      draft.#contexts.add(ctx);
      this.#draftOf.set(ctx, draft);
    }
    return ctx;
  }

  /**
   * A memory-mapped file that is truncated or rewritten in place while in use ends the process with SIGBUS
   * at the next read of the weights (llama.cpp's own tools die the same way). Replacing the file by
   * write-then-rename is safe: the mapping keeps the old file. What can be seen is refused before it is used:
   * the same file (device and inode) with another size or modification time.
   */
  async #checkMapped(caller: Function): Promise<void> {
    const was = this.#mapped;
    if (was === null) return;
    let now: FileIdentity;
    try {
      now = fileIdentity(await stat(this.path));
    } catch {
      return;  // removed: the mapping keeps the unlinked file alive
    }
    if (now.dev === was.dev && now.ino === was.ino && (now.size !== was.size || now.mtimeMs !== was.mtimeMs)) {
      const err = new LlamaError(
        'ERR_INVALID_MODEL',
        `The model file ${this.path} was changed in place since it was loaded (${was.size} bytes then, ${now.size} now); its weights are memory-mapped, so using them could crash the process. Load the model again, and replace model files by writing a new file and renaming it over the old one`,
      );
      Error.captureStackTrace(err, caller);
      throw err;
    }
  }

  /** @internal */
  forgetContext(ctx: LlamaContext): void {
    this.#contexts.delete(ctx);
    const draft = this.#draftOf.get(ctx);
    if (draft) draft.#contexts.delete(ctx);
    this.#draftOf.delete(ctx);
  }

  /**
   * Frees the model and every context made from it or using it as its `draftModel`. Generations still
   * running end with `stopReason: 'abort'`. Calling it again does nothing; any other use afterwards throws `ERR_DISPOSED`.
   */
  dispose(): Promise<void> {
    if (this.#disposing) return this.#disposing;
    const h = this.#native;
    this.#native = null;
    this.#templates.clear();
    this.#pendingTemplates.clear();
    this.#disposing = (async () => {
      await Promise.all([...this.#contexts].map((c) => c.dispose()));
      await h?.dispose();
    })();
    return this.#disposing;
  }

  /** Same as {@link dispose}, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.dispose();
  }
}

const loadOptionKeys = ['gpu', 'gpuLayers', 'rpcServers', 'useMmap', 'useMlock', 'vocabOnly', 'onProgress', 'signal'] as const;

/**
 * Loads a GGUF model file. Loading runs on a worker thread; `onProgress` reports progress and `signal`
 * aborts it.
 *
 * @throws LlamaError `ERR_MODEL_NOT_FOUND` when the file does not exist, `ERR_INVALID_MODEL` when it is not a
 * valid GGUF model, `ERR_INVALID_ARGUMENT` for bad options, `ERR_ABORTED` when `signal` aborts the load.
 */
export async function loadModel(path: string, options?: LoadModelOptions): Promise<LlamaModel> {
  if (typeof path !== 'string' || path.length === 0) throw invalid('path', 'a non-empty string', path, loadModel);
  const o = checkOptions('loadModel', options, loadOptionKeys, loadModel);
  const gpuLayersOpt = o.gpuLayers ?? 'auto';
  if (
    !(gpuLayersOpt === 'auto' || gpuLayersOpt === 'max') &&
    !(typeof gpuLayersOpt === 'number' && Number.isInteger(gpuLayersOpt) && gpuLayersOpt >= 0)
  ) {
    throw invalid('gpuLayers', 'a non-negative integer, "auto" or "max"', gpuLayersOpt, loadModel);
  }
  const gpu = o.gpu ?? 'auto';
  if (!(gpu === 'auto' || gpu === false || gpu === 'cuda' || gpu === 'vulkan' || gpu === 'metal')) {
    throw invalid('gpu', '"auto", "cuda", "vulkan", "metal" or false', gpu, loadModel);
  }
  const rpcServers = o.rpcServers ?? [];
  const validEndpoint = (e: unknown) => {
    const m = typeof e === 'string' ? /^[^\s:]+:(\d{1,5})$/.exec(e) : null;
    return m !== null && Number(m[1]) >= 1 && Number(m[1]) <= 65535;
  };
  if (!Array.isArray(rpcServers) || !rpcServers.every(validEndpoint)) {
    throw invalid('rpcServers', 'an array of "host:port" strings (a host name or IPv4 address, a port from 1 to 65535)', o.rpcServers, loadModel);
  }
  const useMmap = optBoolean(o, 'useMmap', loadModel);
  const useMlock = optBoolean(o, 'useMlock', loadModel);
  const vocabOnly = optBoolean(o, 'vocabOnly', loadModel) ?? false;
  const onProgress = optFunction<(p: number) => void>(o, 'onProgress', loadModel);
  const signal = optSignal(o, 'signal', loadModel);

  // Errors made after an await carry V8's async stack trace, which ends in the caller's code.
  const fail = (code: 'ERR_MODEL_NOT_FOUND' | 'ERR_INVALID_MODEL' | 'ERR_ABORTED', message: string, cause?: unknown) =>
    new LlamaError(code, message, { cause });
  if (signal?.aborted) throw fail('ERR_ABORTED', 'Model load was aborted before it started');

  const addon = native();
  let identity: FileIdentity;
  try {
    const s = await stat(path);
    if (!s.isFile()) throw fail('ERR_MODEL_NOT_FOUND', `Expected a GGUF model file at ${path}, but it is not a file`);
    identity = fileIdentity(s);
  } catch (e) {
    if (e instanceof LlamaError) throw e;
    throw fail('ERR_MODEL_NOT_FOUND', `Model file not found: ${path}`, e);
  }
  let metadata: Record<string, GgufValue>;
  let fingerprint: string;
  let canRank = false;
  let gguf: GgufFile;
  try {
    gguf = await readGguf(path);
    fingerprint = await fingerprintFile(path, gguf.dataOffset, gguf.fileSize);
    canRank = gguf.tensors.some((t) => t.name.startsWith('cls.') || t.name === 'cls');
    if (!vocabOnly && gguf.tensors.length === 0) {
      throw new GgufFormatError('it has no tensors (a vocabulary-only file: load it with vocabOnly: true)');
    }
    metadata = gguf.metadata;
  } catch (e) {
    if (e instanceof GgufFormatError) throw fail('ERR_INVALID_MODEL', `${path} is not a valid GGUF model: ${e.message}`, e);
    throw fail('ERR_INVALID_MODEL', `${path} could not be read: ${(e as Error).message}`, e);
  }
  if (signal?.aborted) throw fail('ERR_ABORTED', 'Model load was aborted');

  // Devices: a GPU backend's (probed in a child process first), none for the CPU; RPC servers' come first.
  const choice = vocabOnly || gpuLayersOpt === 0 ? { devices: [] } : await chooseDevices(gpu as GpuOption, loadModel);
  await Promise.all(rpcServers.map((e) => checkReachable(e)));
  const offloadTo = choice.devices.length + rpcServers.length;
  const gpuLayers =
    offloadTo === 0
      ? 0
      : gpuLayersOpt === 'max' || (gpuLayersOpt === 'auto' && rpcServers.length > 0)
        ? -1
        : gpuLayersOpt === 'auto'
          ? estimateFromGguf(gguf, {}, choice.devices.reduce((sum, d) => sum + d.memoryFree, 0)).gpuLayers
          : gpuLayersOpt;
  const placement: ModelPlacement = {
    gpu: choice.devices.length ? (choice.backend ?? null) : null,
    devices: [...rpcServers, ...choice.devices.map((d) => d.name)],
    gpuLayers,
  };
  const progress = onProgress
    ? (p: number) => {
        try {
          onProgress(p);
        } catch {
          // a throwing progress callback must not break the load
        }
      }
    : undefined;
  const task = callNative(loadModel, () =>
    addon.loadModel(path, { gpuLayers, vocabOnly, devices: choice.devices.map((d) => d.name), rpcServers, ...(useMmap !== undefined ? { useMmap } : {}), ...(useMlock !== undefined ? { useMlock } : {}) }, progress),
  );
  const onAbort = () => task.abort();
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    const nativeModel = await task.promise;
    const mapped = (useMmap ?? true) && !vocabOnly ? identity : null;
    const model = new LlamaModel(nativeModel, path, metadata, fingerprint, canRank, placement, mapped);
    await model.prepareOwnTemplate();
    if (signal?.aborted) {
      // Aborted while the template was checked (it may render for up to its limit): the load is undone.
      await model.dispose();
      throw fail('ERR_ABORTED', 'Model load was aborted');
    }
    return model;
  } catch (e) {
    throw toLlamaError(e);
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
}

interface FileIdentity {
  dev: number;
  ino: number;
  size: number;
  mtimeMs: number;
}

function fileIdentity(s: { dev: number; ino: number; size: number; mtimeMs: number }): FileIdentity {
  return { dev: s.dev, ino: s.ino, size: s.size, mtimeMs: s.mtimeMs };
}

/** SHA-256 over the file size, the GGUF header and eight 64 KiB samples spread over the weights. */
async function fingerprintFile(path: string, dataOffset: number, fileSize: number): Promise<string> {
  const hash = createHash('sha256');
  hash.update(`gguf:${fileSize}:${dataOffset}:`);
  const f = await open(path, 'r');
  try {
    const read = async (at: number, length: number) => {
      const buf = Buffer.alloc(length);
      const { bytesRead } = await f.read(buf, 0, length, at);
      hash.update(buf.subarray(0, bytesRead));
    };
    for (let at = 0; at < dataOffset; at += 1 << 20) await read(at, Math.min(1 << 20, dataOffset - at));
    const dataSize = fileSize - dataOffset;
    const sample = 1 << 16;
    if (dataSize > 0) {
      for (let i = 0; i < 8; i++) {
        const at = dataOffset + Math.floor(((dataSize - Math.min(sample, dataSize)) * i) / 7);
        await read(at, Math.min(sample, dataSize));
      }
    }
  } finally {
    await f.close();
  }
  return hash.digest('hex');
}

/** Fails with ERR_BACKEND_UNAVAILABLE unless an RPC server accepts connections at `endpoint` (within 5 s). */
function checkReachable(endpoint: string): Promise<void> {
  const i = endpoint.lastIndexOf(':');
  const host = endpoint.slice(0, i);
  const port = Number(endpoint.slice(i + 1));
  return new Promise((resolve, reject) => {
    const socket = connect({ host, port, timeout: 5000 });
    const fail = (why: string) => {
      socket.destroy();
      reject(new LlamaError('ERR_BACKEND_UNAVAILABLE', `Expected an RPC server at ${endpoint} (rpcServers), but ${why}`));
    };
    socket.once('connect', () => {
      socket.end();
      resolve();
    });
    socket.once('timeout', () => fail('the connection timed out'));
    socket.once('error', (e) => fail(e.message));
  });
}

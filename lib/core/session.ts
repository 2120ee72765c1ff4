// LlamaSession: a conversation's KV cache over a sequence of a context: prompt planning against the cache,
// context shift, generation, beam search, save and load.
import type { LlamaContext } from './context.js';
import { LlamaError, callNative, toLlamaError, llamaError, knownCode } from '../base/errors.js';
import { parseGenerateOptions, type GenerateOptions } from '../options/generate.js';
import type { FromSchema, JsonSchema, PreparedSchema } from '../schema/json-schema.js';
import { DeferredNative, Generation, type GenerationResult, type StopReason } from './generation.js';
import type { NativeGenerateOptions, NativeGeneration, NativeGenerationResult } from '../native/native.js';
import { ASYNC_TOKENIZE_CHARS } from '../base/limits.js';
import { readSessionFile, writeSessionFile } from './session-file.js';
import { invalid, tokenIds } from '../base/validate.js';
import { Prompt } from './prompt.js';

export type { GenerateOptions } from '../options/generate.js';

/** A prompt's tokens with the native options that came with them (see {@link LlamaSession.start}). @internal */
export interface LateInput {
  tokens: number[];
  options: Partial<NativeGenerateOptions>;
}

/** Beam search options of {@link LlamaSession.complete}. */
export interface BeamOptions {
  /**
   * Beam search with this many beams instead of sampling: the result is the most likely continuation found
   * (by `score`), and `beams` lists all of them. It uses `2 × beams − 1` free sequences of the context
   * besides the session's own, and takes `maxTokens` (default 32), `logitBias`, `lengthPenalty`, `lora` and
   * `signal` (`temperature` is ignored; other sampling options are `ERR_INVALID_ARGUMENT`). A full sequence
   * (or shared KV cache) ends it with `stopReason: 'contextFull'` and the beams found so far. `signal` or
   * `session.dispose()` ends it at once, between two of its steps or in the middle of a decode: the result
   * then has `stopReason: 'abort'` and the beams found so far, which are those a search with their length
   * as `maxTokens` finds.
   */
  beams?: number;
  /** Beams are ranked by `logprob / length^lengthPenalty` (default 1; 0 ranks by log-probability alone). */
  lengthPenalty?: number;
}

/** Options of {@link LlamaContext.createSession}. */
export interface SessionOptions {
  /**
   * What happens when the session's tokens would overflow its sequence. `'auto'`: drop the oldest tokens
   * after a kept prefix and go on (llama.cpp's context shift); the prefix is the `prefix` session's tokens,
   * the chat's system prompt, or just the BOS token. `{ keep: n }`: the same, keeping the first `n` tokens.
   * `false` (the default for sessions; chats default to `'auto'`): stop with `stopReason: 'contextFull'`, and
   * reject longer prompts with `ERR_CONTEXT_FULL`.
   */
  contextShift?: 'auto' | false | { keep: number };
  /** Start with a copy of this session's KV cache (cells are copied, nothing is decoded again). */
  prefix?: LlamaSession;
  /**
   * When another session of the context holds a longer start of the prompt than this one (the same system
   * prompt, say), copy its cache cells instead of decoding those tokens again (default true).
   */
  sharePrefix?: boolean;
}

/**
 * With `jsonSchema`: the parsed output, validated against the schema (ERR_SCHEMA_MISMATCH), or
 * ERR_INCOMPLETE_OUTPUT when the generation ended before it.
 */
function parseJson(r: GenerationResult, schema: PreparedSchema | undefined): GenerationResult | LlamaError | Promise<GenerationResult | LlamaError> {
  let json: unknown;
  try {
    json = JSON.parse(r.text) as unknown;
  } catch {
    return new LlamaError(
      'ERR_INCOMPLETE_OUTPUT',
      `The output is not complete JSON: the generation ended with stopReason "${r.stopReason}" after ${r.usage.completionTokens} tokens` +
        (r.stopReason === 'abort' ? ' (it was aborted, or its session or context disposed)' : ' (raise maxTokens, or check the context size)'),
    );
  }
  const checked = schema?.check(json) ?? null;
  const result = { ...r, json };
  return checked instanceof Promise ? checked.then((e) => e ?? result) : checked ?? result;
}

/** Ids that end a beam search (native abortTask), unique in the process. */
let lastAbortId = 0;
const nextAbortId = () => (lastAbortId = (lastAbortId % 0xffffffff) + 1);

/** With one KV cache for all sequences (kvUnified): cells kept free for a generation's output beyond its prompt. */
const UNIFIED_RESERVE = 256;

/** Copying cache cells from another session pays off from this many tokens on. */
const MIN_SHARED_TOKENS = 8;

interface Plan {
  /** The whole prompt, as the caller sees it. */
  logical: Prompt;
  /** What the sequence will hold: the prompt less what context shifts dropped. */
  tokens: Prompt;
  keep: number;
  discardCount: number;
  dropped: number;
  shiftKeep: number;
  shareFrom: LlamaSession | null;
}

/**
 * llama.cpp's context shift, the one rule for the two places it applies. It is decided here; the engine
 * only moves the cells it is told to (native/engine.cpp, makeRoom and the prompt's discard). A sequence of
 * `cap` cells keeps its first `keep` tokens (the shift's keep: a system prompt, a BOS) and drops tokens
 * right after them.
 */
const shiftRule = {
  /** While generating, when the sequence is full: half of what follows the kept prefix (llama.cpp's rule). */
  whenFull: (cap: number, keep: number): number => Math.floor((cap - keep) / 2),
  /**
   * Before a prompt of `length` tokens that does not fit: enough for it and a quarter of the free room, so
   * that generation does not shift again at once; never the prompt's last token.
   */
  forPrompt: (length: number, cap: number, keep: number): number => Math.min(length - keep - 1, length - cap + Math.floor((cap - keep) / 4)),
};

/**
 * A session: one sequence of a context, with its own KV cache. A new prompt that starts with what the
 * session already holds only decodes the new part (see `usage.cachedTokens`).
 */
export class LlamaSession {
  #context: LlamaContext;
  /** What the sequence's KV cache holds. */
  #cache: Prompt = Prompt.empty;
  // Context shift: the cache holds history[0, shiftKeep) + history[shiftKeep + dropped, ...).
  #history: Prompt = Prompt.empty;
  #dropped = 0;
  #shiftKeep = 0;
  #shift: 'auto' | false | { keep: number };
  #autoKeep: number | null = null;
  /** The LoRA set the cache was computed with. */
  #cacheLora = '';
  #sharePrefix: boolean;
  #running: { abort(): void } | null = null;
  /** Ends the beam search that is running (or waiting for sequences). */
  #abortSearch: (() => void) | null = null;
  /** Tokens that stay in the cache while a generation runs (other sessions may copy them). */
  #stable: Prompt = Prompt.empty;
  /** Cells the running generation may fill: its prompt and the output reserved for it (kvUnified). */
  #growing = 0;
  #busy: string | null = null;
  #disposed = false;

  /** @internal use {@link LlamaContext.createSession} */
  constructor(context: LlamaContext, shift: 'auto' | false | { keep: number }, sharePrefix: boolean) {
    this.#context = context;
    this.#shift = shift;
    this.#sharePrefix = sharePrefix;
  }

  /** The context this session belongs to. */
  get context(): LlamaContext {
    return this.#context;
  }

  /**
   * The sequence this session holds in its context's KV cache now, or null while it holds none: a session
   * gets a sequence when it needs one, and gives it up (its cache saved to host memory) when another
   * session needs it while this one is idle. See {@link ContextOptions.cacheRamBytes}.
   */
  get sequence(): number | null {
    if (this.#disposed) return null;
    return this.#context.residency.sequenceOf(this) ?? null;
  }

  /** @internal (Tenant) no generation, search, save or load runs or waits */
  get idle(): boolean {
    return this.#running === null && this.#busy === null && !this.#disposed;
  }

  /** @internal (Tenant) KV cells its cache holds, or will hold by the end of the generation that runs */
  get cells(): number {
    return this.#running || this.#busy === 'loads' ? Math.max(this.#cache.length, this.#growing) : this.#cache.length;
  }

  /** @internal (Tenant) its saved KV state was dropped: the cache is empty */
  forgetCache(): void {
    this.#setCache();
  }

  /** The tokens held in this session's KV cache. */
  get tokens(): Int32Array {
    return Int32Array.from(this.#cache.tokenView());
  }

  /** How this session handles a full sequence (see {@link SessionOptions.contextShift}). */
  get contextShift(): 'auto' | false | { keep: number } {
    return this.#shift;
  }

  /** True once the session (or its context) has been disposed. */
  get disposed(): boolean {
    return this.#disposed || this.#context.disposed;
  }

  /** True while a generation, save or load of this session runs. */
  get busy(): boolean {
    return this.#running !== null || this.#busy !== null;
  }

  #check(caller: Function): void {
    if (this.disposed) {
      throw llamaError('ERR_DISPOSED', 'The session has been disposed', caller);
    }
  }

  #checkIdle(caller: Function, what: string): void {
    this.#check(caller);
    if (this.#running || this.#busy) {
      throw llamaError('ERR_BUSY', `Cannot ${what} while the session ${this.#busy ?? 'generates'}: await it, or abort it, first`, caller);
    }
  }

  /**
   * Generates text after `input` (text, or token ids). Returns at once; iterate the result for chunks or
   * await `.result`.
   *
   * @throws LlamaError `ERR_CONTEXT_FULL` when the prompt is longer than the context and context shift is
   * off, `ERR_BUSY` while another generation of this session runs, `ERR_INVALID_ARGUMENT` for bad options.
   */
  generate(input: string | Int32Array | readonly number[], options?: GenerateOptions): Generation {
    return this.start(input, options, true, this.generate);
  }

  /**
   * Same as `generate(input, options).result`. With `jsonSchema`, the result's `json` is the parsed output,
   * typed from the schema when it is written as a literal (or made with `defineSchema`).
   */
  complete<const S extends JsonSchema>(
    input: string | Int32Array | readonly number[],
    options: GenerateOptions & { jsonSchema: S },
  ): Promise<GenerationResult & { json: FromSchema<S> }>;
  complete(input: string | Int32Array | readonly number[], options?: GenerateOptions & BeamOptions): Promise<GenerationResult>;
  complete(input: string | Int32Array | readonly number[], options?: GenerateOptions & BeamOptions): Promise<GenerationResult> {
    try {
      if (options?.beams !== undefined) return this.#beamSearch(input, options, this.complete);
      return this.start(input, options, false, this.complete).discardChunks().result;
    } catch (e) {
      return Promise.reject(e);
    }
  }

  async #beamSearch(input: string | Int32Array | readonly number[], options: GenerateOptions & BeamOptions, caller: Function): Promise<GenerationResult> {
    const { beams, lengthPenalty, ...rest } = options;
    const unsupported = Object.keys(rest).filter((k) => !['maxTokens', 'logitBias', 'temperature', 'lora', 'signal'].includes(k));
    if (unsupported.length) throw invalid(unsupported[0], `no ${unsupported[0]} with beams (beam search takes maxTokens, logitBias, lengthPenalty, lora and signal)`, (rest as Record<string, unknown>)[unsupported[0]], caller);
    if (!Number.isInteger(beams) || beams! < 1 || beams! > Math.min(64, this.#context.batchSize)) {
      throw invalid('beams', `an integer from 1 to ${Math.min(64, this.#context.batchSize)} (the context's batchSize)`, beams, caller);
    }
    if (this.#context.slidingWindow || !this.#context.canShift) {
      throw new LlamaError('ERR_INVALID_STATE', 'Beam search copies and trims KV caches, which this model (sliding-window attention or recurrent state) does not allow');
    }
    if (lengthPenalty !== undefined && (typeof lengthPenalty !== 'number' || !Number.isFinite(lengthPenalty))) {
      throw invalid('lengthPenalty', 'a finite number', lengthPenalty, caller);
    }
    const { native: n, loraKey, signal } = parseGenerateOptions(
      {
        ...(rest.maxTokens !== undefined ? { maxTokens: rest.maxTokens } : {}),
        ...(rest.logitBias ? { logitBias: rest.logitBias } : {}),
        ...(rest.lora ? { lora: rest.lora } : {}),
        ...('signal' in rest ? { signal: rest.signal } : {}),
      },
      this.#context.model.vocab.size,
      caller,
    );
    const lora = loraKey ?? this.#context.loraKey;
    this.#checkIdle(caller, 'search');
    const model = this.#context.model;
    const prompt =
      typeof input === 'string'
        ? Array.from(model.tokenize(input))
        : Array.from(tokenIds('input', input, model.vocab.size, caller, 'a string, an Int32Array or an array of token ids'));
    if (prompt.length === 0) throw invalid('input', 'a prompt of at least one token', input, caller);
    if (prompt.length >= this.#context.contextSize) throw new LlamaError('ERR_CONTEXT_FULL', `The prompt has ${prompt.length} tokens; a sequence of this context holds ${this.#context.contextSize}`);
    const handle = this.#context.handle(caller);
    this.#context.checkBorrow(2 * beams! - 1, caller);
    const t0 = performance.now();
    const result = (found: Array<{ tokens: Int32Array; logprob: number; score: number; finished: boolean }>, aborted: boolean, cached: number, full = false): GenerationResult => {
      const all = found.map((h) => ({ text: model.detokenize(h.tokens), tokens: Array.from(h.tokens), logprob: h.logprob, score: h.score, finished: h.finished }));
      const best = all[0] ?? { text: '', tokens: [], logprob: 0, score: 0, finished: false };
      const ms = performance.now() - t0;
      return {
        text: best.text,
        tokens: best.tokens,
        stopReason: aborted ? 'abort' : best.finished ? 'eog' : full ? 'contextFull' : 'maxTokens',
        usage: { promptTokens: prompt.length, cachedTokens: cached, completionTokens: best.tokens.length },
        timings: { promptMs: 0, generateMs: ms, timeToFirstTokenMs: ms, tokensPerSecond: ms > 0 ? (best.tokens.length * 1000) / ms : 0 },
        beams: all,
      };
    };
    // An abort (the signal, or dispose()) before the search has its sequences ends the wait for them; once
    // the search runs, it ends the search (native: abortTask).
    let abortRequested = signal?.aborted ?? false;
    let abortNative: (() => void) | null = null;
    const abort = () => {
      abortRequested = true;
      abortNative?.();
      this.#context.residency.kick();
    };
    if (abortRequested) return result([], true, 0);
    signal?.addEventListener('abort', abort, { once: true });
    this.#abortSearch = abort;
    this.#busy = 'searches';
    let seq: number;
    let extra: number[] = [];
    try {
      const got = await this.#context.borrowSequences(2 * beams! - 1, this, () => abortRequested);
      if (got === null) return result([], true, 0);
      ({ seq, extra } = got);
      const whole = Prompt.fromTokens(prompt);
      const keep = this.#dropped > 0 || lora !== this.#cacheLora ? 0 : this.#cache.commonPrefix(whole);
      this.#setCache(whole.slice(keep));
      this.#cacheLora = lora;
      // One KV cache for all sequences: idle sessions give up their cells for the prompt and the beams' tokens
      // (each step adds one cell per beam; what beams share is shared), as for a generation's reserve.
      if (this.#context.kvUnified) this.#context.residency.makeRoom(this, prompt.length - keep + beams! * Math.min(n.maxTokens ?? 32, UNIFIED_RESERVE));
      const abortId = nextAbortId();
      abortNative = () => handle.abortTask(abortId);
      const pending = handle.beamSearch([seq, ...extra], Int32Array.from(prompt), keep, {
        beams: beams!,
        ...(n.maxTokens !== undefined ? { maxTokens: n.maxTokens } : {}),
        ...(lengthPenalty !== undefined ? { lengthPenalty } : {}),
        ...(n.logitBias ? { logitBias: n.logitBias } : {}),
        ...(n.lora ? { lora: n.lora } : {}),
        abortId,
      });
      if (abortRequested) abortNative();  // aborted between the grant of the sequences and this line
      try {
        const done = await pending;
        if (!this.#disposed) this.#setCache(whole.slice(done.kept));
        return result(done.beams, done.aborted, Math.min(keep, done.kept, prompt.length - 1), done.full);
      } catch (e) {
        this.#setCache();
        throw e;
      }
    } catch (e) {
      throw toLlamaError(e);
    } finally {
      signal?.removeEventListener('abort', abort);
      this.#abortSearch = null;
      this.#busy = null;
      this.#context.returnSequences(extra);  // (which kicks the residency: the session is idle again)
    }
  }

  /**
   * `input` may be a promise of the prompt's tokens (a long text tokenized off the JS thread), or of the
   * tokens with native options that are known only then (a chat rendered off the JS thread). @internal
   */
  start<R extends GenerationResult = GenerationResult>(
    input: string | Int32Array | readonly number[] | Promise<number[] | LateInput>,
    options: GenerateOptions | undefined,
    stream: boolean,
    caller: Function,
    transform?: (r: GenerationResult | LlamaError) => R | LlamaError | Promise<R | LlamaError>,
    extra?: Partial<NativeGenerateOptions>,
  ): Generation<R> {
    this.#check(caller);
    const ctx = this.#context;
    const model = ctx.model;
    const { native: nativeOptions, signal, jsonSchema, schema: schemaNow, schemaLater, loraKey } = parseGenerateOptions(options, model.vocab.size, caller);
    let schema = schemaNow;
    if (extra) Object.assign(nativeOptions, extra);
    if (!stream) nativeOptions.stream = false;
    // Already aborted: the engine must not decode anything.
    if (signal?.aborted) nativeOptions.aborted = true;
    let prompt: number[] = [];
    // A long text is tokenized off the JS thread; the generation starts when its tokens are there.
    let tokenizing: Promise<void> | null = null;
    const empty = () => invalid('input', 'a prompt of at least one token', input, caller);
    // A generation that was aborted (a `break` out of its loop, say) ends on the engine thread a moment
    // later: the new one starts after it, instead of failing with ERR_BUSY.
    const previous = this.#busy === null && this.#running instanceof Generation && this.#running.ending ? this.#running : null;
    const checkIdle = () => {
      if (!previous) this.#checkIdle(caller, 'generate');
    };
    if (input instanceof Promise || (typeof input === 'string' && input.length >= ASYNC_TOKENIZE_CHARS)) {
      checkIdle();
      const tokens: Promise<ArrayLike<number> | LateInput> = input instanceof Promise ? input : model.tokenizeAsync(input);
      tokenizing = tokens.then((t) => {
        if ('tokens' in t) {
          prompt = t.tokens;
          Object.assign(nativeOptions, t.options);
        } else {
          prompt = Array.from(t);
        }
        if (prompt.length === 0) throw empty();
      });
    } else {
      if (typeof input === 'string') prompt = Array.from(model.tokenize(input));
      else prompt = Array.from(tokenIds('input', input, model.vocab.size, caller, 'a string, an Int32Array or an array of token ids'));
      if (prompt.length === 0) throw empty();
      checkIdle();
    }
    const lora = loraKey ?? ctx.loraKey;
    const shift = this.#shift !== false;
    let plan: Plan | null = null;
    // Output cells kept free beside the prompt in a shared KV cache (read late: a chat's options come with its tokens).
    const reserved = () => Math.min(nativeOptions.maxTokens ?? UNIFIED_RESERVE, UNIFIED_RESERVE);
    // Plans against the cache as it is when the sequence is there, and queues the generation.
    const launch = (seq: number, onNotify: (done: boolean) => void): NativeGeneration => {
      // A cache computed with other LoRA adapters is not reused.
      if (lora !== this.#cacheLora) this.#setCache();
      this.#cacheLora = lora;
      const p = this.#plan(Prompt.fromTokens(prompt), caller);
      const handle = ctx.handle(caller);
      if (p.shareFrom) {
        handle.copySequence(p.shareFrom.sequence!, seq, p.keep);
        this.#setCache(p.tokens.slice(p.keep));
      }
      Object.assign(nativeOptions, {
        shiftKeep: p.shiftKeep,
        shiftDiscard: shift ? shiftRule.whenFull(ctx.contextSize, p.shiftKeep) : 0,
        ...(p.discardCount > 0 ? { discardAt: p.shiftKeep, discardCount: p.discardCount } : {}),
      });
      // One KV cache for all sequences: idle sessions give up their cells for the new prompt and some output
      // (counted as this session's while it runs, so that other sessions' room is made around it).
      const reserve = reserved();
      this.#growing = p.tokens.length + reserve;
      ctx.residency.makeRoom(this, p.tokens.length - p.keep + reserve);
      const native = callNative(caller, () => handle.generate(seq, Int32Array.from(p.tokens.tokenView()), p.keep, nativeOptions, onNotify));
      plan = p;
      this.#stable = p.tokens.slice(shift ? Math.min(p.keep, p.shiftKeep) : p.keep);
      return native;
    };
    // A large JSON schema is checked and converted off the JS thread too.
    const ended = previous ? previous.result.then(() => {}, () => {}) : null;
    const before =
      schemaLater === undefined && ended === null
        ? tokenizing
        : Promise.all([
            tokenizing,
            ended,
            schemaLater?.then((p) => {
              schema = p;
            }),
          ]).then(() => {});
    const residency = ctx.residency;
    // With one KV cache for all sequences, a generation starts when its prompt and reserved output fit
    // beside the busy sessions' cells (idle ones make way); otherwise it waits for them.
    const footprint = () => (ctx.kvUnified ? prompt.length + reserved() : 0);
    if (!before) this.#growing = footprint();
    const seq = before ? undefined : residency.acquireInTurn(this, nativeOptions.priority ?? 0, this.#growing);
    const waiting: { native: DeferredNative | null } = { native: null };
    const gen: Generation<R> = new Generation<R>(
      (onNotify) => {
        if (seq !== undefined) return launch(seq, onNotify);
        waiting.native = new DeferredNative().bind(onNotify);
        return waiting.native;
      },
      (r) => {
        const done = this.#finished(gen, plan, r);
        const out = jsonSchema && !(done instanceof LlamaError) ? parseJson(done, schema) : done;
        const finish = (o: GenerationResult | LlamaError) => (transform ? transform(o) : (o as R));
        return out instanceof Promise ? out.then(finish) : finish(out);
      },
      signal,
    );
    this.#running = gen;
    // A failure before the start goes through the same transform as a result (a chat withdraws its message).
    const failure = (e: LlamaError): LlamaError => {
      const out = transform ? transform(e) : e;
      return out instanceof LlamaError ? out : e;
    };
    if (waiting.native) this.#launchLater(gen, waiting.native, launch, () => prompt.length, nativeOptions.priority ?? 0, before, failure, footprint);
    return gen;
  }

  /**
   * The generation waits: for its prompt's tokens (`before`, a long text tokenized off the JS thread), then
   * for a sequence when every resident one is busy (priority, then arrival).
   */
  #launchLater(
    gen: { fail(e: LlamaError): void; abort(): void },
    deferred: DeferredNative,
    launch: (seq: number, onNotify: (done: boolean) => void) => NativeGeneration,
    promptTokens: () => number,
    priority: number,
    before: Promise<void> | null,
    failure: (e: LlamaError) => LlamaError,
    footprint: () => number = () => 0,
  ): void {
    const notStarted = (stopReason: 'abort'): NativeGenerationResult => ({
      stopReason,
      text: '',
      tokens: new Int32Array(0),
      promptTokens: promptTokens(),
      // Nothing was decoded, and nothing came from a cache either.
      evaluatedTokens: promptTokens(),
      sequence: Int32Array.from(this.#cache.tokenView()),
      discarded: 0,
      started: false,
      drafted: 0,
      accepted: 0,
      promptMs: 0,
      generateMs: 0,
      timeToFirstTokenMs: 0,
    });
    // A prompt being prepared (tokenized, a chat rendered) is on its way to the engine until it is queued.
    const queued = before ? this.#context.expectPrompt() : () => {};
    const failed = (e: unknown) => {
      queued();
      if (this.#running === gen) this.#running = null;
      this.#context.residency.kick();
      gen.fail(failure(toLlamaError(e)));
    };
    const start = () => {
      // The cells this generation will hold count as this session's while it waits (kvUnified).
      const cells = footprint();
      this.#growing = cells;
      // Waiting for a sequence (every one busy), it is not on its way: it cannot come before a running
      // generation ends, and an idle engine would wait for it in vain (a hostile review: 12 ms a turn).
      const residency = this.#context.residency;
      const now = this.disposed ? undefined : residency.acquireInTurn(this, priority, cells);
      if (now === undefined) queued();
      return (now !== undefined ? Promise.resolve(now) : residency.wait(this, priority, deferred.controller.signal, cells)).then(
        (seq) => {
          if (deferred.aborted || this.disposed) {
            queued();
            deferred.end(notStarted('abort'));
            return;
          }
          try {
            deferred.attach(launch(seq, deferred.notify));
            queued();
          } catch (e) {
            failed(e);
          }
        },
        () => {
          queued();
          deferred.end(notStarted('abort'));
        },
      );
    };
    if (!before) {
      void start();
      return;
    }
    // An abort (or a disposal) while the prompt is prepared ends the generation at once: the preparation
    // (a chat template may render for up to its 2 s limit) goes on behind it, and its outcome is ignored.
    let settled = false;
    const signal = deferred.controller.signal;
    const onAbort = () => {
      if (settled) return;
      settled = true;
      queued();
      if (this.#running === gen) this.#running = null;
      this.#context.residency.kick();
      deferred.end(notStarted('abort'));
    };
    signal.addEventListener('abort', onAbort, { once: true });
    before.then(
      () => {
        if (settled) return;
        settled = true;
        signal.removeEventListener('abort', onAbort);
        if (deferred.aborted || this.disposed) {
          queued();
          deferred.end(notStarted('abort'));
        } else {
          void start();
        }
      },
      (e: unknown) => {
        if (settled) return;
        settled = true;
        queued();
        signal.removeEventListener('abort', onAbort);
        // Disposal (of the session, its context or model) while the prompt was prepared ends the
        // generation as aborted, as it does a running one.
        if (deferred.aborted || this.disposed || (e as { code?: unknown })?.code === 'ERR_DISPOSED') {
          if (this.#running === gen) this.#running = null;
          deferred.end(notStarted('abort'));
        } else {
          failed(e);
        }
      },
    );
  }

  /** The keep for context shift in `'auto'` mode; set by chats to their system prompt's length. @internal */
  setAutoKeep(n: number): void {
    this.#autoKeep = n;
  }

  #shiftKeepFor(prompt: Prompt): number {
    const s = this.#shift;
    let keep: number;
    if (s === false) return 0;
    if (typeof s === 'object') keep = s.keep;
    else if (this.#autoKeep !== null) keep = this.#autoKeep;
    else keep = this.#context.model.vocab.bos !== null && prompt.commonPrefix([this.#context.model.vocab.bos]) === 1 ? 1 : 0;
    // At least half of the sequence must stay free to shift in.
    return Math.max(0, Math.min(keep, Math.floor(this.#context.contextSize / 2)));
  }

  /** Which tokens to decode, how many cached ones to keep, and whether to shift the cache first. */
  #plan(logical: Prompt, caller: Function): Plan {
    const cap = this.#context.contextSize;
    const shiftOn = this.#shift !== false;
    const K = this.#shiftKeepFor(logical);
    let dropped = 0;
    let tokens = logical;
    // A conversation that already went through a context shift: the cache lacks the dropped tokens.
    if (
      shiftOn && this.#dropped > 0 && this.#shiftKeep === K && logical.length > cap &&
      logical.length > K + this.#dropped && logical.commonPrefix(this.#history) >= K + this.#dropped
    ) {
      dropped = this.#dropped;
      tokens = logical.cut(K, dropped);
    }
    let cache = this.#cache;
    let discardCount = 0;
    if (tokens.length > cap) {
      if (!shiftOn || cap - K < 8) {
        throw llamaError(
          'ERR_CONTEXT_FULL',
          `The prompt has ${tokens.length} tokens, but a sequence of this context holds ${cap}: shorten it, create the context with a larger contextSize, or create the session with contextShift: 'auto'`,
          caller,
        );
      }
      const extra = shiftRule.forPrompt(tokens.length, cap, K);
      const shorter = tokens.cut(K, extra);
      if (this.#context.canShift && tokens.commonPrefix(cache) >= K + extra) {
        discardCount = tokens.length - shorter.length;
        cache = cache.cut(K, discardCount);
      }
      dropped += tokens.length - shorter.length;
      tokens = shorter;
    }
    let keep = tokens.commonPrefix(cache);
    let shareFrom: LlamaSession | null = null;
    if (this.#sharePrefix && !this.#context.slidingWindow && discardCount === 0 && dropped === 0) {
      // Another session may hold a longer prefix (the same system prompt): copy its cells.
      let best = keep + MIN_SHARED_TOKENS - 1;
      for (const other of this.#context.sessionsForSharing()) {
        if (other === this || other.#cacheLora !== this.#cacheLora) continue;
        const l = tokens.commonPrefix(other.sharableTokens());
        if (l > best) {
          best = l;
          shareFrom = other;
        }
      }
      if (shareFrom) keep = best;
    }
    return { logical, tokens, keep, discardCount, dropped, shiftKeep: K, shareFrom };
  }

  /** @internal tokens at the start of this session's cache that other sessions may copy now */
  sharableTokens(): Prompt {
    if (this.disposed || this.#busy) return Prompt.empty;
    return this.#running ? this.#stable : this.#cache;
  }

  #finished(gen: object, plan: Plan | null, r: NativeGenerationResult): GenerationResult | LlamaError {
    if (this.#running === gen) this.#running = null;
    this.#stable = Prompt.empty;
    this.#growing = 0;
    // Idle again: the sequence may go to a session that waits for one.
    if (!this.disposed) {
      this.#context.residency.touch(this);
      queueMicrotask(() => this.#context.residency.kick());
    }
    const tokens = Array.from(r.tokens);
    if (r.stopReason === 'error') {
      // An error before the engine touched the sequence (a grammar refused while it was built off the JS
      // thread) leaves the cache as it was.
      if (r.started) {
        this.#setCache();
        const seq = this.sequence;
        if (!this.disposed && seq !== null) this.#context.handle(this.generate).clearSequence(seq);
      }
      // The engine names the kind of failure with its code (ERR_DECODE, ERR_INVALID_GRAMMAR, ERR_LIMIT_EXCEEDED,
      // ERR_INVALID_ADAPTER, ERR_NATIVE, ...); an unknown one is ERR_NATIVE.
      return new LlamaError(knownCode(r.errorCode), `Generation failed: ${r.error ?? 'no reason given'}`);
    }
    if (!r.started || !plan) {
      // Ended before the engine touched the sequence: the cache holds what it held (or the shared copy).
      return this.#result(r, tokens);
    }
    const cache = Prompt.fromTokens(r.sequence);
    const dropped = plan.dropped + r.discarded;
    this.#cache = cache;
    this.#shiftKeep = plan.shiftKeep;
    this.#dropped = dropped;
    this.#history = dropped > 0 ? plan.logical.concat(tokens).slice(dropped + cache.length) : Prompt.empty;
    if (r.evicted !== undefined && !this.disposed) {
      // Its cells left the shared KV cache for the generations that go on: the cache waits in host memory.
      this.#context.residency.evicted(this, r.evicted ? { data: r.evicted, streams: 1 } : null);
    }
    return this.#result(r, tokens);
  }

  #result(r: NativeGenerationResult, tokens: number[]): GenerationResult {
    return {
      ...(r.logprobs ? { logprobs: r.logprobs } : {}),
      ...(r.drafted > 0 ? { speculative: { drafted: r.drafted, accepted: r.accepted, acceptanceRate: r.accepted / r.drafted } } : {}),
      text: r.text,
      tokens,
      stopReason: r.stopReason as StopReason,
      usage: { promptTokens: r.promptTokens, cachedTokens: r.promptTokens - r.evaluatedTokens, completionTokens: tokens.length },
      timings: {
        promptMs: r.promptMs,
        generateMs: r.generateMs,
        timeToFirstTokenMs: r.timeToFirstTokenMs,
        tokensPerSecond: r.generateMs > 0 && tokens.length > 1 ? ((tokens.length - 1) * 1000) / r.generateMs : 0,
      },
    };
  }

  #setCache(tokens: Prompt = Prompt.empty, history: Prompt = Prompt.empty, dropped = 0, shiftKeep = 0): void {
    this.#cache = tokens;
    this.#history = history;
    this.#dropped = dropped;
    this.#shiftKeep = shiftKeep;
  }

  /** Empties the session's KV cache. */
  reset(): void {
    this.#checkIdle(this.reset, 'reset');
    const h = this.#context.handle(this.reset);
    this.#setCache();
    const seq = this.sequence;
    if (seq !== null) h.clearSequence(seq);
    else this.#context.residency.forgetSaved(this);
  }

  /**
   * A new session of the same context that starts with a copy of this one's KV cache and shares nothing
   * with it afterwards. The copy goes to a free sequence, or to host memory when none is free.
   * @throws LlamaError `ERR_BUSY` while this session generates.
   */
  fork(): LlamaSession {
    this.#checkIdle(this.fork, 'fork');
    const s = this.#context.createSession({ contextShift: this.#shift, sharePrefix: this.#sharePrefix });
    s.#copyFrom(this, this.#cache.length);
    s.#history = this.#history;
    s.#dropped = this.#dropped;
    s.#shiftKeep = this.#shiftKeep;
    s.#autoKeep = this.#autoKeep;
    return s;
  }

  /** @internal used by createSession({ prefix }) */
  startFrom(prefix: LlamaSession, caller: Function): void {
    if (!(prefix instanceof LlamaSession) || prefix.context !== this.#context) {
      throw invalid('prefix', 'a session of the same context', prefix, caller);
    }
    prefix.#check(caller);
    const tokens = prefix.sharableTokens();
    this.#copyFrom(prefix, tokens.length);
    this.#autoKeep = tokens.length;
  }

  #copyFrom(src: LlamaSession, length: number): void {
    const h = this.#context.handle(this.fork);
    const res = this.#context.residency;
    const tokens = src.sharableTokens().slice(length);
    this.#cacheLora = src.#cacheLora;
    if (tokens.length === 0) return;
    const whole = src.idle && tokens.length === src.#cache.length;
    const from = src.sequence;
    if (from !== null) {
      // A sequence for the copy (never the source's own), or else the source's saved state for later.
      const seq = res.acquire(this, src);
      if (seq !== undefined) h.copySequence(from, seq, tokens.length);
      else if (!(whole && res.saveFor(src, this))) return;
    } else if (!(whole && res.shareSaved(src, this))) {
      return;
    }
    this.#cache = tokens;
  }

  /**
   * Saves this session's KV cache and tokens to a file. The file records the model it belongs to; it loads
   * into a session of any context of the same model (for models with sliding-window attention or recurrent
   * state, one with as many sequences).
   */
  async save(path: string): Promise<void> {
    if (typeof path !== 'string' || path.length === 0) throw invalid('path', 'a non-empty string', path, this.save);
    this.#checkIdle(this.save, 'save');
    const handle = this.#context.handle(this.save);
    const model = this.#context.model;
    this.#busy = 'saves';
    try {
      const cache = this.#cache.tokens();
      const res = this.#context.residency;
      // A session that is not resident has its state in host memory already (or gets a sequence for it).
      let state = this.sequence === null ? await res.savedState(this) : null;
      state ??= await handle.saveSequence(await res.wait(this, 0));
      const { data, streams } = state;
      await writeSessionFile(path, {
        header: {
          model: { fingerprint: model.fingerprint, name: model.info.name, vocabSize: model.vocab.size },
          streams,
          dropped: this.#dropped,
          shiftKeep: this.#shiftKeep,
          savedAt: new Date().toISOString(),
        },
        cache,
        history: this.#history.tokens(),
        state: data,
      });
    } catch (e) {
      throw toLlamaError(e);
    } finally {
      this.#busy = null;
      this.#context.residency.kick();
    }
  }

  /**
   * Replaces this session's KV cache with one saved by {@link save}; the session then continues exactly as
   * the saved one would have.
   * @throws LlamaError `ERR_INVALID_STATE` when the file is not a session file, is truncated or corrupt, or
   * belongs to another model; the session is then empty but usable.
   */
  async load(path: string): Promise<void> {
    if (typeof path !== 'string' || path.length === 0) throw invalid('path', 'a non-empty string', path, this.load);
    this.#checkIdle(this.load, 'load');
    const handle = this.#context.handle(this.load);
    const model = this.#context.model;
    this.#busy = 'loads';
    try {
      const f = await readSessionFile(path);
      // Disposed meanwhile: the sequence may belong to another session by now.
      this.#check(this.load);
      const h = f.header;
      if (h.model.fingerprint !== model.fingerprint) {
        throw new LlamaError(
          'ERR_INVALID_STATE',
          `${path} belongs to another model ("${h.model.name}", fingerprint ${h.model.fingerprint.slice(0, 12)}), not to "${model.info.name}" (${model.fingerprint.slice(0, 12)})`,
        );
      }
      if (f.cache.length > this.#context.contextSize) {
        throw new LlamaError('ERR_INVALID_STATE', `${path} holds ${f.cache.length} tokens, more than a sequence of this context (${this.#context.contextSize})`);
      }
      if (!f.cache.concat(f.history).every((t) => t >= 0 && t < model.vocab.size)) {
        throw new LlamaError('ERR_INVALID_STATE', `${path} holds token ids outside the model's vocabulary`);
      }
      this.#setCache();
      this.#context.residency.forgetSaved(this);
      // One KV cache for all sequences: the load waits for room beside generating sessions (their prompts and
      // reserved output), as a generation does, and idle sessions give up their cells for it.
      // The cells it will load count as this session's while it waits and loads (kvUnified), so that loads
      // at once make room for each other.
      this.#growing = f.cache.length;
      const seq = await this.#context.residency.wait(this, 0, undefined, f.cache.length);
      this.#check(this.load);
      this.#context.residency.makeRoom(this, f.cache.length);
      await handle.loadSequence(seq, f.state, h.streams);
      this.#check(this.load);
      this.#setCache(Prompt.fromTokens(f.cache), h.dropped > 0 ? Prompt.fromTokens(f.history) : Prompt.empty, h.dropped, h.shiftKeep);
    } catch (e) {
      throw toLlamaError(e);
    } finally {
      this.#growing = 0;
      this.#busy = null;
      this.#context.residency.kick();
    }
  }

  /** Ends a running generation (with `stopReason: 'abort'`) and frees the sequence for another session. */
  dispose(): void {
    if (this.#disposed) return;
    this.#running?.abort();
    this.#abortSearch?.();
    this.#disposed = true;
    this.#setCache();
    this.#context.releaseSequence(this);
  }

  /** Same as {@link dispose}, for `using`. */
  [Symbol.dispose](): void {
    this.dispose();
  }

  /** @internal the context was disposed */
  markDisposed(): void {
    this.#disposed = true;
  }
}

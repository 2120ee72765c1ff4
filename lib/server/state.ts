// What every route of the server shares, decorated onto the fastify instance as `llama`: the options, the
// model registry and its session pool, the metrics, the response cache and the requests running; and the
// helpers routes use to run a generation for a request and to write OpenAI's answers.
import { createHash } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { GenerateOptions } from '../options/generate.js';
import type { GenerationResult, TokenLogprob } from '../core/generation.js';
import { SAMPLING_OPTIONS, samplingFromRequest } from '../options/sampling.js';
import type { LlamaSession } from '../core/session.js';
import type { Metrics } from './metrics.js';
import { ApiError } from './openai.js';
import type { JsonSchema } from '../schema/json-schema.js';
import type { ResolvedServerOptions } from './options.js';
import type { Entry, ModelRegistry } from './registry.js';

/** @internal */
export interface ServerState {
  options: ResolvedServerOptions;
  models: ModelRegistry;
  metrics: Metrics;
  responses: ResponseCache;
  /** Requests generating now: aborted when the server closes past its deadline. */
  running: Set<AbortController>;
}

/** The shared state of the server an instance belongs to. @internal */
export function state(app: FastifyInstance): ServerState {
  return (app as FastifyInstance & { llama: ServerState }).llama;
}

/** Runs a generation for a request: aborts it when the client goes away or the server closes. @internal */
export async function withRequest<T>(
  s: ServerState,
  req: FastifyRequest,
  reply: FastifyReply,
  e: Entry,
  key: string | null,
  fn: (session: LlamaSession, signal: AbortSignal, started: () => void) => Promise<T>,
): Promise<T> {
  // Once it has a session, the request's prompt is on its way to the engine (which waits for prompts arriving
  // together) until `fn` has started its generation and calls `started` (the session counts it from there
  // while it renders and tokenizes), or the request fails first. (Not while it waits for a session: it cannot
  // come before a running one ends, and an idle engine waited 50 ms for it every time; a hostile review.)
  let started = () => {};
  const controller = new AbortController();
  const onClose = () => {
    if (reply.raw.writableFinished) return;
    // The client went away: the generation stops, and the request counts as 499 (client closed request).
    s.metrics.count(req, 499);
    controller.abort();
  };
  reply.raw.on('close', onClose);
  s.running.add(controller);
  let session: LlamaSession | null = null;
  try {
    session = await s.models.acquire(e, key, controller.signal);
    started = e.ctx?.expectPrompt() ?? started;
    return await fn(session, controller.signal, () => started());
  } finally {
    started();
    s.running.delete(controller);
    reply.raw.off('close', onClose);
    if (session) s.models.release(e, session);
  }
}

/** The generation options of an OpenAI-style request body (sampling fields from the table of options). @internal */
export function requestOptions(s: ServerState, body: Record<string, unknown>, signal: AbortSignal, vocabSize: number): GenerateOptions {
  const limit = s.options.maxTokensLimit;
  const requested = (body.max_completion_tokens ?? body.max_tokens) as number | undefined;
  if (requested !== undefined && requested > limit) {
    throw new ApiError(400, `max_tokens may be at most ${limit} on this server`, 'invalid_request_error', body.max_completion_tokens !== undefined ? 'max_completion_tokens' : 'max_tokens');
  }
  const o: GenerateOptions = { maxTokens: Math.min(requested ?? limit, limit), signal, ...samplingFromRequest(body) };
  if (body.stop !== undefined && body.stop !== null) {
    const stops = (typeof body.stop === 'string' ? [body.stop] : (body.stop as string[])).filter((x) => x.length > 0);
    if (stops.length) o.stop = stops;
  }
  if (body.logit_bias) {
    const lb: Record<number, number> = {};
    for (const [k, v] of Object.entries(body.logit_bias as Record<string, number>)) {
      if (!/^(0|[1-9]\d*)$/.test(k) || Number(k) >= vocabSize) {
        throw new ApiError(400, `logit_bias keys must be token ids from 0 to ${vocabSize - 1}, received '${k}'`, 'invalid_request_error', 'logit_bias');
      }
      lb[Number(k)] = v === -100 ? -Infinity : v;
    }
    o.logitBias = lb;
  }
  return o;
}

/** @internal */
export const newId = (prefix: string) => `${prefix}-${createHash('sha1').update(`${Date.now()}${Math.random()}`).digest('hex').slice(0, 24)}`;

/** @internal */
export const finishReason = (r: GenerationResult, toolCalls = 0) =>
  toolCalls > 0 ? 'tool_calls' : r.stopReason === 'maxTokens' || r.stopReason === 'contextFull' ? 'length' : 'stop';

/** @internal */
export const openaiLogprobs = (lp: TokenLogprob[] | undefined) =>
  lp?.map((p) => ({
    token: p.text,
    logprob: p.logprob,
    bytes: [...Buffer.from(p.text)],
    top_logprobs: p.top.map((a) => ({ token: a.text, logprob: a.logprob, bytes: [...Buffer.from(a.text)] })),
  }));

/** @internal */
export function usage(r: GenerationResult) {
  return {
    prompt_tokens: r.usage.promptTokens,
    completion_tokens: r.usage.completionTokens,
    total_tokens: r.usage.promptTokens + r.usage.completionTokens,
    prompt_tokens_details: { cached_tokens: r.usage.cachedTokens },
  };
}

/** Remembered responses of deterministic requests, keyed by the model's content and the whole request. @internal */
export class ResponseCache {
  readonly #responses = new Map<string, unknown>();
  readonly #size: number;
  readonly #metrics: Metrics;

  constructor(size: number, metrics: Metrics) {
    this.#size = size;
    this.#metrics = metrics;
  }

  key(e: Entry, endpoint: string, body: Record<string, unknown>): string | null {
    if (this.#size <= 0 || body.stream === true) return null;
    // Deterministic: greedy, or a seed that is not llama.cpp's "random" (the sampling table's default).
    if (body.temperature !== 0 && (typeof body.seed !== 'number' || body.seed === SAMPLING_OPTIONS.seed.default)) return null;
    const { user: _user, ...rest } = body;
    return createHash('sha256').update(`${endpoint}\0${e.model!.fingerprint}\0${JSON.stringify(rest)}`).digest('hex');
  }

  /** A remembered response for this request, or undefined. */
  get(e: Entry, key: string | null, reply: FastifyReply): unknown {
    if (key === null) return undefined;
    const hit = this.#responses.get(key);
    if (hit === undefined) {
      this.#metrics.cacheMisses.inc({ model: e.alias });
      return undefined;
    }
    this.#responses.delete(key);
    this.#responses.set(key, hit);
    this.#metrics.cacheHits.inc({ model: e.alias });
    void reply.header('x-cache', 'hit');
    // A response of its own: a new id (OpenAI's are unique per response) and time.
    const id = (hit as { id?: unknown }).id;
    const prefix = typeof id === 'string' && id.includes('-') ? id.slice(0, id.indexOf('-')) : 'cmpl';
    return { ...(hit as object), id: newId(prefix), created: Math.floor(Date.now() / 1000) };
  }

  set(key: string | null, response: unknown): void {
    if (key === null) return;
    this.#responses.set(key, response);
    while (this.#responses.size > this.#size) this.#responses.delete(this.#responses.keys().next().value!);
  }
}

/** The schema a request's `response_format` asks for (json_schema, or json_object: any object), if any. */
export function responseSchema(body: Record<string, unknown>): JsonSchema | undefined {
  const rf = body.response_format as { type: string; json_schema?: { schema: JsonSchema } } | undefined;
  if (rf?.type === 'json_schema' && !rf.json_schema) throw new ApiError(400, 'response_format.json_schema is required with type json_schema', 'invalid_request_error', 'response_format.json_schema');
  return rf?.type === 'json_schema' ? rf.json_schema!.schema : rf?.type === 'json_object' ? { type: 'object' } : undefined;
}

// The OpenAI request bodies the server accepts, as JSON schemas (fastify validates them), the error body,
// and the one mapping from whatever a request's processing throws to an HTTP status and that body.
import { LlamaError } from '../base/errors.js';
import { samplingRequestSchema } from '../options/sampling.js';

const message = {
  type: 'object',
  required: ['role'],
  // As OpenAI's API: a tool result names the call it answers, and a user, system or developer message
  // has content (only an assistant's may be null, beside its tool_calls).
  allOf: [
    { if: { properties: { role: { const: 'tool' } } }, then: { required: ['tool_call_id'] } },
    {
      if: { properties: { role: { enum: ['system', 'developer', 'user'] } } },
      then: { required: ['content'], properties: { content: { description: 'a string or an array of text parts (null only for an assistant)', anyOf: [{ type: 'string' }, { type: 'array' }] } } },
    },
  ],
  properties: {
    role: { enum: ['system', 'developer', 'user', 'assistant', 'tool'] },
    content: {
      anyOf: [
        { type: 'string' },
        { type: 'null' },
        {
          type: 'array',
          items: {
            type: 'object',
            required: ['type'],
            properties: { type: { const: 'text' }, text: { type: 'string' } },
          },
        },
      ],
    },
    name: { type: 'string' },
    tool_call_id: { type: 'string' },
    tool_calls: {
      type: 'array',
      items: {
        type: 'object',
        required: ['id', 'function'],
        properties: {
          id: { type: 'string' },
          type: { const: 'function' },
          function: {
            type: 'object',
            required: ['name', 'arguments'],
            properties: { name: { type: 'string' }, arguments: { type: 'string' } },
          },
        },
      },
    },
  },
} as const;

const sampling = {
  model: { type: 'string', minLength: 1 },
  stream: { type: 'boolean' },
  stream_options: { type: 'object', properties: { include_usage: { type: 'boolean' } } },
  max_tokens: { type: 'integer', minimum: 1 },
  max_completion_tokens: { type: 'integer', minimum: 1 },
  // temperature, top_p, seed, presence_penalty, frequency_penalty and llama-server's top_k, min_p,
  // typical_p, repeat_penalty, repeat_last_n: from the table of sampling options
  ...samplingRequestSchema(),
  stop: { anyOf: [{ type: 'string' }, { type: 'array', items: { type: 'string' }, maxItems: 16 }, { type: 'null' }] },
  n: { type: 'integer', minimum: 1, maximum: 1 },
  logit_bias: { type: 'object', additionalProperties: { type: 'number', minimum: -100, maximum: 100 } },
  user: { type: 'string' },
  // OpenAI's structured output, on both endpoints (llama-server's /completion takes a schema too).
  response_format: {
    type: 'object',
    required: ['type'],
    properties: {
      type: { enum: ['text', 'json_object', 'json_schema'] },
      json_schema: {
        type: 'object',
        required: ['schema'],
        properties: { name: { type: 'string' }, schema: { type: 'object' }, strict: { type: ['boolean', 'null'] } },
      },
    },
  },
} as const;

export const chatCompletionSchema = {
  type: 'object',
  required: ['messages'],
  properties: {
    ...sampling,
    messages: { type: 'array', minItems: 1, items: message },
    tools: {
      type: 'array',
      items: {
        type: 'object',
        required: ['type', 'function'],
        properties: {
          type: { const: 'function' },
          function: {
            type: 'object',
            required: ['name'],
            properties: { name: { type: 'string', minLength: 1 }, description: { type: 'string' }, parameters: { type: 'object' } },
          },
        },
      },
    },
    tool_choice: {
      anyOf: [
        { enum: ['auto', 'none', 'required'] },
        {
          type: 'object',
          required: ['type', 'function'],
          properties: { type: { const: 'function' }, function: { type: 'object', required: ['name'], properties: { name: { type: 'string' } } } },
        },
      ],
    },
    parallel_tool_calls: { type: 'boolean' },
    logprobs: { type: ['boolean', 'null'] },
    top_logprobs: { type: ['integer', 'null'], minimum: 0, maximum: 20 },
  },
} as const;

/** The most prompts one /v1/completions request may hold (each gets a choice of its own, in order). */
export const MAX_PROMPTS = 16;

export const completionSchema = {
  type: 'object',
  required: ['prompt'],
  properties: {
    ...sampling,
    prompt: {
      description: `a string, an array of token ids, or an array of at most ${MAX_PROMPTS} of either`,
      anyOf: [
        { type: 'string' },
        { type: 'array', minItems: 1, maxItems: MAX_PROMPTS, items: { type: 'string' } },
        // Token ids are numbers here; the route checks each (index and value) against the vocabulary.
        { type: 'array', minItems: 1, items: { type: 'number' } },
        { type: 'array', minItems: 1, maxItems: MAX_PROMPTS, items: { type: 'array', minItems: 1, items: { type: 'number' } } },
      ],
    },
    logprobs: { anyOf: [{ type: 'integer', minimum: 0, maximum: 5 }, { type: 'null' }] },
    echo: { const: false, description: 'false (echoing the prompt is not supported)' },
    best_of: { const: 1, description: '1 (best_of is not supported)' },
    suffix: { anyOf: [{ const: '' }, { type: 'null' }], description: 'empty or null (suffix is not supported)' },
    // A client that sends tools here expects tool calls, which only /v1/chat/completions makes.
    tools: { type: 'null', description: 'absent or null (tools and tool_choice are for /v1/chat/completions)' },
    tool_choice: { type: 'null', description: 'absent or null (tools and tool_choice are for /v1/chat/completions)' },
  },
} as const;

export const embeddingSchema = {
  type: 'object',
  required: ['input'],
  properties: {
    model: { type: 'string', minLength: 1 },
    input: {
      description: 'a string, an array of token ids, or an array of at most 2048 of either',
      anyOf: [
        { type: 'string' },
        { type: 'array', minItems: 1, maxItems: 2048, items: { type: 'string' } },
        { type: 'array', minItems: 1, items: { type: 'integer', minimum: 0 } },
        { type: 'array', minItems: 1, maxItems: 2048, items: { type: 'array', minItems: 1, items: { type: 'integer', minimum: 0 } } },
      ],
    },
    encoding_format: { enum: ['float', 'base64'] },
    dimensions: { type: 'integer', minimum: 1 },
    user: { type: 'string' },
  },
} as const;

/** An error the way OpenAI's API reports it. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: 'invalid_request_error' | 'authentication_error' | 'rate_limit_error' | 'server_error' | 'not_found_error',
    readonly param: string | null = null,
    readonly code: string | null = null,
  ) {
    super(message);
  }

  body(): { error: { message: string; type: string; param: string | null; code: string | null } } {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

/**
 * LlamaError codes that mean the request's content is at fault (its messages, schema, grammar, options,
 * prompt length): a 400. Every other LlamaError is the server's (500).
 */
const requestErrorCodes = new Set<string>([
  'ERR_INVALID_ARGUMENT',
  'ERR_INVALID_MESSAGE',
  'ERR_INVALID_TEMPLATE',
  'ERR_INVALID_GRAMMAR',
  'ERR_INVALID_SCHEMA',
  'ERR_UNSUPPORTED_SCHEMA',
  'ERR_SCHEMA_MISMATCH',
  'ERR_LIMIT_EXCEEDED',
  'ERR_TOKENIZE',
  'ERR_CONTEXT_FULL',
  'ERR_INCOMPLETE_OUTPUT',
]);

/** The param a request-content error is about, where its code says. */
const paramOf: Record<string, string> = { ERR_INVALID_MESSAGE: 'messages' };

/**
 * What any thrown value becomes in a response: an ApiError as it is; fastify's validation errors a 400 that
 * names the field; its other 4xx errors (bad JSON, body too large, media type) their status; a LlamaError a
 * 400 when the request's content caused it ({@link requestErrorCodes}), else a 500; anything else a 500.
 */
export function toApiError(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  const e = (typeof err === 'object' && err !== null ? err : {}) as {
    validation?: Array<{ instancePath: string; keyword?: string; params?: { missingProperty?: string }; message?: string; parentSchema?: { description?: unknown } }>;
    statusCode?: number;
    code?: string;
    message?: string;
  };
  const message = typeof e.message === 'string' && e.message ? e.message : String(err);
  if (Array.isArray(e.validation) && e.validation.length > 0) {
    // A field whose schema describes what it takes (a field of several forms, anyOf, whose branches' own errors
    // each speak of one form: prompt: [1, "a"] failed as "prompt must be string"; a constant): that description.
    const either = e.validation.find((x) => typeof x.parentSchema?.description === 'string' && x.keyword !== 'if');
    if (either) {
      const param = either.instancePath.replace(/^\//, '').replace(/\//g, '.') || null;
      return new ApiError(400, `Invalid request: ${param ?? 'body'} must be ${either.parentSchema!.description}`, 'invalid_request_error', param);
    }
    const v = e.validation[0];
    const param = (v.instancePath.replace(/^\//, '').replace(/\//g, '.') || v.params?.missingProperty) ?? null;
    // A field that may take several forms (anyOf) fails each of them: say every way it failed, not the first
    // (2,049 strings for `input` read "input must be string").
    const ways = [...new Set(e.validation.filter((x) => x.instancePath === v.instancePath && x.keyword !== 'anyOf' && x.message).map((x) => x.message!))];
    // ajv lists a field's types with commas ("must be number,null"): say them as words.
    const words = (m: string) => m.replace(/^must be ([a-z]+(?:,[a-z]+)+)$/, (_all, list: string) => `must be ${list.split(',').join(' or ')}`);
    const what = ways.length > 1 ? ways.map(words).join(', or ') : words(v.message ?? 'is invalid');
    return new ApiError(400, `Invalid request: ${param ?? 'body'} ${what}`, 'invalid_request_error', param);
  }
  if (e.statusCode === 413 || e.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
    return new ApiError(413, 'The request body is too large', 'invalid_request_error', null, 'body_too_large');
  }
  if (err instanceof LlamaError) {
    if (requestErrorCodes.has(err.code)) return new ApiError(400, err.message, 'invalid_request_error', paramOf[err.code] ?? null, err.code);
    return new ApiError(500, err.message, 'server_error', null, err.code);
  }
  if (typeof e.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) {
    return new ApiError(e.statusCode, message, 'invalid_request_error', null, typeof e.code === 'string' ? e.code : null);
  }
  return new ApiError(500, message, 'server_error');
}

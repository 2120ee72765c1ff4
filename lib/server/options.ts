// The server's options: their types, and the one check that turns them into complete values (a bad
// option is a LlamaError, as everywhere else in the library).
import type { GpuOption } from '../native/backends.js';
import type { LlamaModel } from '../core/model.js';
import { checkOptions, invalid, optBoolean, optInteger, optIntegerOr } from '../base/validate.js';

/** Default of {@link ServerOptions.batchSize}: llama-server's. */
export const DEFAULT_SERVER_BATCH_SIZE = 2048;

/** A model the server serves, under an alias that requests name in `model`. */
export interface ServerModel {
  alias: string;
  path: string;
  /**
   * A model already loaded (or being loaded) to serve instead of loading `path` (which /v1/models still
   * shows, and a reload loads). The server frees it when it closes.
   */
  model?: LlamaModel | Promise<LlamaModel>;
}

/** Options of {@link startServer}. */
export interface ServerOptions {
  /** The models; the first is used when a request names none. */
  models: ServerModel[];
  /** Default 127.0.0.1: only this machine can connect. */
  host?: string;
  /** Default 8080; 0 picks a free port. */
  port?: number;
  /** Requests generated at once per model (resident sequences of its context; default 4). */
  parallel?: number;
  /**
   * Conversations per model that keep their KV cache between requests (default 64, at least `parallel`):
   * beyond `parallel`, their caches wait in host memory (within `cacheRamBytes`) and come back when the
   * conversation goes on. Past this many, the least recently used conversation's session is reused.
   */
  conversations?: number;
  /** Host memory for those caches, bytes per model (default 1 GiB: the context option `cacheRamBytes`). */
  cacheRamBytes?: number;
  /**
   * Tokens each of those sessions holds (default: the model's training context, at most 4096); with
   * `kvUnified`, the cells of the one KV cache that all of a model's requests share.
   */
  contextSize?: number;
  /** One KV cache per model for all its requests (the context option `kvUnified`; default false). */
  kvUnified?: boolean;
  /**
   * Most tokens of each model's context decoded in one step (the context option `batchSize`; default 2048,
   * llama-server's `--batch-size`, or `parallel` if larger; at least `parallel`; its micro-batches stay at
   * most 512 tokens). A prompt alone is decoded 512 tokens a step at most, so that a step stays short. When several prompts wait,
   * each step takes a chunk of each of them up to this size, and the requests generating meanwhile get
   * their next token once per step: a larger value costs them fewer passes over the weights (each step adds
   * one for their tokens) but makes them wait longer for it while a burst of prompts is decoded.
   */
  batchSize?: number;
  /**
   * CPU threads of each model's context: a count, or `'auto'` (the default), which adapts to the load of
   * the machine, the server's own request handling included (see the context option `threads`).
   */
  threads?: number | 'auto';
  /** With a key, every endpoint but /health needs `Authorization: Bearer <key>`. */
  apiKey?: string;
  /** Requests that may wait for a free session per model before the server answers 429 (default 64). */
  maxQueue?: number;
  /** Largest request body in bytes (default 1 MiB); a larger one is a 413. */
  bodyLimit?: number;
  /**
   * How deeply a JSON request body (and a tool call's `arguments` in it) may nest arrays and objects
   * (default 128); a deeper one is a 400 before anything else reads it.
   */
  maxBodyDepth?: number;
  /** Largest `max_tokens` a request may ask for, and the default (default 4096). */
  maxTokensLimit?: number;
  /** GPU layers for the models (default 'auto'). */
  gpuLayers?: number | 'auto' | 'max';
  /** GPU backend for the models (default 'auto'; see {@link LoadModelOptions.gpu}). */
  gpu?: GpuOption;
  /** llama.cpp RPC servers (`host:port`) to split the models across. */
  rpcServers?: string[];
  /** Print each request (default false). */
  log?: boolean;
  /** Allow POST /admin/reload without an API key (with a key it is always on, behind the key). */
  admin?: boolean;
  /**
   * Remember this many responses of deterministic requests (temperature 0, or a seed) and answer an
   * identical request from memory, without decoding (default 0: off). Streamed requests are not cached.
   */
  cacheResponses?: number;
}

/** The options with every default filled in. @internal */
export interface ResolvedServerOptions {
  models: ServerModel[];
  host: string;
  port: number;
  parallel: number;
  conversations: number;
  cacheRamBytes?: number;
  contextSize?: number;
  kvUnified: boolean;
  batchSize: number;
  threads: number | 'auto';
  apiKey?: string;
  maxQueue: number;
  bodyLimit: number;
  maxBodyDepth: number;
  maxTokensLimit: number;
  gpuLayers: number | 'auto' | 'max';
  gpu?: GpuOption;
  rpcServers?: string[];
  log: boolean;
  admin: boolean;
  cacheResponses: number;
}

const KEYS = [
  'models', 'host', 'port', 'parallel', 'conversations', 'cacheRamBytes', 'contextSize', 'kvUnified', 'batchSize', 'threads', 'apiKey', 'maxQueue', 'bodyLimit',
  'maxBodyDepth', 'maxTokensLimit', 'gpuLayers', 'gpu', 'rpcServers', 'log', 'admin', 'cacheResponses',
] as const;

/**
 * Checks the options and fills in the defaults. @internal
 * @throws LlamaError ERR_INVALID_ARGUMENT naming the option.
 */
export function resolveServerOptions(options: ServerOptions, caller: Function): ResolvedServerOptions {
  const o = checkOptions('startServer', options, KEYS, caller) as Partial<ServerOptions>;
  const models = o.models;
  if (!Array.isArray(models) || models.length === 0) throw invalid('models', 'at least one { alias, path }', models, caller);
  const aliases = new Set<string>();
  for (const m of models) {
    if (m === null || typeof m !== 'object' || typeof m.alias !== 'string' || m.alias.length === 0 || typeof m.path !== 'string' || m.path.length === 0) {
      throw invalid('models', 'objects { alias, path } with non-empty strings', m, caller);
    }
    if (aliases.has(m.alias)) throw invalid('models', 'distinct aliases', m.alias, caller);
    // (by shape: a model from the CommonJS build is not an instance of the ES module build's class)
    const given = m.model as { then?: unknown; createContext?: unknown } | undefined | null;
    if (given !== undefined && (given === null || typeof given !== 'object' || (typeof given.then !== 'function' && typeof given.createContext !== 'function'))) {
      throw invalid('models', 'a model that is a LlamaModel or a promise of one', given, caller);
    }
    aliases.add(m.alias);
  }
  const rec = o as Record<string, unknown>;
  if (o.host !== undefined && (typeof o.host !== 'string' || o.host.length === 0)) throw invalid('host', 'a host name or address', o.host, caller);
  if (o.apiKey !== undefined && (typeof o.apiKey !== 'string' || o.apiKey.length === 0)) throw invalid('apiKey', 'a non-empty string', o.apiKey, caller);
  if (o.rpcServers !== undefined && (!Array.isArray(o.rpcServers) || !o.rpcServers.every((s) => typeof s === 'string' && /^[^\s:]+:\d{1,5}$/.test(s)))) {
    throw invalid('rpcServers', 'an array of host:port strings', o.rpcServers, caller);
  }
  if (o.gpu !== undefined && o.gpu !== false && !['auto', 'cuda', 'vulkan', 'metal'].includes(o.gpu as string)) {
    throw invalid('gpu', "'auto', 'cuda', 'vulkan', 'metal' or false", o.gpu, caller);
  }
  const gpuLayers = o.gpuLayers ?? 'auto';
  if (gpuLayers !== 'auto' && gpuLayers !== 'max' && !(Number.isInteger(gpuLayers) && (gpuLayers as number) >= 0)) {
    throw invalid('gpuLayers', "a non-negative integer, 'auto' or 'max'", gpuLayers, caller);
  }
  const parallel = optInteger(rec, 'parallel', 1, 256, caller) ?? 4;
  const contextSize = optInteger(rec, 'contextSize', 1, 1 << 24, caller);
  const cacheRamBytes = optInteger(rec, 'cacheRamBytes', 0, Number.MAX_SAFE_INTEGER, caller);
  const batchSize = optInteger(rec, 'batchSize', 1, 1 << 20, caller) ?? Math.max(DEFAULT_SERVER_BATCH_SIZE, parallel);
  // A step holds a token of every running request (the context option's own check, before anything loads).
  if (batchSize < parallel) throw invalid('batchSize', `an integer of at least parallel (${parallel})`, batchSize, caller);
  return {
    models,
    host: o.host ?? '127.0.0.1',
    port: optInteger(rec, 'port', 0, 65535, caller) ?? 8080,
    parallel,
    conversations: Math.max(parallel, optInteger(rec, 'conversations', 1, 1_000_000, caller) ?? 64),
    ...(cacheRamBytes !== undefined ? { cacheRamBytes } : {}),
    ...(contextSize !== undefined ? { contextSize } : {}),
    kvUnified: optBoolean(rec, 'kvUnified', caller) ?? false,
    batchSize,
    threads: optIntegerOr(rec, 'threads', 1, 512, ['auto'], caller) ?? 'auto',
    ...(o.apiKey !== undefined ? { apiKey: o.apiKey } : {}),
    maxQueue: optInteger(rec, 'maxQueue', 0, 1_000_000, caller) ?? 64,
    bodyLimit: optInteger(rec, 'bodyLimit', 1, 1 << 30, caller) ?? 1 << 20,
    maxBodyDepth: optInteger(rec, 'maxBodyDepth', 1, 100_000, caller) ?? 128,
    maxTokensLimit: optInteger(rec, 'maxTokensLimit', 1, 2 ** 31 - 1, caller) ?? 4096,
    gpuLayers: gpuLayers as number | 'auto' | 'max',
    ...(o.gpu !== undefined ? { gpu: o.gpu } : {}),
    ...(o.rpcServers !== undefined ? { rpcServers: o.rpcServers } : {}),
    log: optBoolean(rec, 'log', caller) ?? false,
    admin: optBoolean(rec, 'admin', caller) ?? false,
    cacheResponses: optInteger(rec, 'cacheResponses', 0, 1_000_000, caller) ?? 0,
  };
}

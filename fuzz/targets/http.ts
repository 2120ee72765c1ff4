// http: random requests against the OpenAI-compatible server (startServer, in the worker process): deep JSON,
// huge numbers, wrong types, unicode in messages, bad response_format. Expected: an HTTP answer (4xx for bad
// requests; 500 counts as a wrong result), never a crash or a hang; /health keeps answering 200.
import { request } from 'node:http';
import type { Rng } from '../prng.js';
import { randomText } from '../prng.js';
import { text, runSteps, shrinkCompact, step, wrong, type Compact, type Env, type Target } from './common.js';
import { genModel } from '../fixtures.js';
import { randomSchema } from './schema.js';
import type { LlamaServer } from '../../lib/index.js';

interface Input {
  method: string;
  path: string;
  headers: Record<string, string>;
  body: Compact | null;
}

function server(env: Env): Promise<LlamaServer> {
  let p = env.cache.get('http:server') as Promise<LlamaServer> | undefined;
  if (!p) {
    p = (async () => {
      const s = await env.lib.startServer({ models: [{ alias: 'm', path: await genModel() }], port: 0, parallel: 2, contextSize: 256, maxTokensLimit: 16, gpuLayers: 0 });
      await s.ready;
      return s;
    })();
    env.cache.set('http:server', p);
  }
  return p;
}

function send(url: string, input: { method: string; path: string; headers: Record<string, string>; body: string | null }, timeoutMs: number): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    let req;
    try {
      req = request({ host: u.hostname, port: u.port, method: input.method, path: input.path, headers: input.headers, agent: false });
    } catch (e) {
      // Node refuses to send it (a bad header or path): nothing reached the server.
      resolve({ status: 0, body: `not sent: ${(e as Error).message}` });
      return;
    }
    const timer = setTimeout(() => {
      req.destroy(new Error(`no complete answer in ${timeoutMs} ms`));
    }, timeoutMs);
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        clearTimeout(timer);
        resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') });
      });
      res.on('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
    });
    req.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    if (input.body !== null) req.end(input.body);
    else req.end();
  });
}

const num = (r: Rng) => r.pick<unknown>([0, 1, 4, 16, 17, -1, 1.5, '4', null, true, 1e9, 2 ** 53 + 1, 1e308, -0, [], {}]);

function content(r: Rng): unknown {
  return r.weighted<() => unknown>([
    [6, () => randomText(r, 40)],
    [3, () => r.pick(['café', 'Hello', '', '<|im_start|>system', '{{ 7*7 }}', '\u0000', 'é'.repeat(3000), '🙂🙂🙂'])],
    [2, () => [{ type: 'text', text: r.pick(['café', 'hi', '']) }, ...(r.chance(0.3) ? [{ type: r.pick(['image_url', 'bogus', 'text']), image_url: { url: 'data:,' } }] : [])]],
    [1, () => r.pick<unknown>([null, 5, true, {}, [1, 2], [{ text: 5 }]])],
  ])();
}

function messages(r: Rng): unknown {
  if (r.chance(0.05)) return r.pick<unknown>([[], null, 'hi', {}, [null], [[]]]);
  return Array.from({ length: r.int(1, 4) }, () => {
    const m: Record<string, unknown> = { role: r.chance(0.9) ? r.pick(['user', 'system', 'assistant', 'tool', 'user']) : r.pick(['bogus', '', 5, null, 'developer', 'function']), content: content(r) };
    if (r.chance(0.1)) m.tool_calls = r.pick<unknown>([[{ id: 'c1', type: 'function', function: { name: 'f', arguments: '{"a":1}' } }], [{ id: 'c1', type: 'function', function: { name: 'f', arguments: 'not json' } }], [{}], 'x', [{ function: null }]]);
    if (r.chance(0.05)) m.tool_call_id = r.pick<unknown>(['c1', 5, '']);
    if (r.chance(0.05)) m.name = r.pick<unknown>(['f', 5]);
    return m;
  });
}

function responseFormat(r: Rng): unknown {
  return r.weighted<() => unknown>([
    [2, () => ({ type: 'json_object' })],
    [4, () => ({ type: 'json_schema', json_schema: { name: 'x', schema: randomSchema(r), ...(r.chance(0.3) ? { strict: r.chance(0.5) } : {}) } })],
    [1, () => ({ type: 'text' })],
    [2, () => r.pick<unknown>([{ type: 'bogus' }, 'json', { type: 'json_schema' }, { type: 'json_schema', json_schema: 'x' }, { type: 'json_schema', json_schema: { schema: null } }, { type: 'json_object', schema: { type: 'integer' } }, null, 5, []])],
  ])();
}

function tools(r: Rng): unknown {
  if (r.chance(0.2)) return r.pick<unknown>([[], 'x', [{}], [{ type: 'function' }], [{ type: 'function', function: { name: '' } }], null]);
  return Array.from({ length: r.int(1, 2) }, (_, i) => ({ type: 'function', function: { name: r.pick([`f${i}`, 'get weather', 'é', 'x'.repeat(300)]), description: randomText(r, 10), parameters: r.chance(0.8) ? randomSchema(r) : r.pick<unknown>([null, 5, 'x']) } }));
}

function chatBody(r: Rng): Record<string, unknown> {
  const b: Record<string, unknown> = { messages: messages(r) };
  if (r.chance(0.7)) b.model = r.chance(0.9) ? 'm' : r.pick<unknown>(['nope', 5, null, '']);
  if (r.chance(0.8)) b[r.chance(0.8) ? 'max_tokens' : 'max_completion_tokens'] = r.chance(0.7) ? r.int(1, 8) : num(r);
  if (r.chance(0.4)) b.temperature = r.chance(0.7) ? r.pick([0, 0.5, 1, 2]) : num(r);
  if (r.chance(0.2)) b.top_p = num(r);
  if (r.chance(0.2)) b.seed = r.pick<unknown>([1, -1, 2 ** 64, 1.5, 'x']);
  if (r.chance(0.25)) b.stream = r.chance(0.8) ? true : r.pick<unknown>(['yes', 1, null]);
  if (r.chance(0.1)) b.stream_options = r.pick<unknown>([{ include_usage: true }, 'x', null]);
  if (r.chance(0.15)) b.stop = r.pick<unknown>(['\n', ['.', '!'], [], [''], 5, [5], 'x'.repeat(1000), Array(20).fill('a')]);
  if (r.chance(0.15)) b.n = r.pick<unknown>([1, 2, 0, 100, -1]);
  if (r.chance(0.15)) b.logprobs = r.pick<unknown>([true, false, 'x']);
  if (r.chance(0.15)) b.top_logprobs = r.pick<unknown>([0, 1, 5, 20, 100, -1, 1e9]);
  if (r.chance(0.1)) b.logit_bias = r.pick<unknown>([{ '1': 100 }, { abc: 1 }, { '-5': 1 }, { '99999999': 1 }, { '1': 'x' }, { '1': 1e308 }, [], 'x']);
  if (r.chance(0.1)) b.presence_penalty = num(r);
  if (r.chance(0.3)) b.response_format = responseFormat(r);
  if (r.chance(0.15)) b.tools = tools(r);
  if (r.chance(0.1)) b.tool_choice = r.pick<unknown>(['auto', 'required', 'none', { type: 'function', function: { name: 'f0' } }, { type: 'function', function: { name: 'missing' } }, 5, 'bogus']);
  if (r.chance(0.05)) b.parallel_tool_calls = r.pick<unknown>([true, 'x']);
  if (r.chance(0.05)) b[r.pick(['user', 'extra', 'frequency_penalty', 'reasoning_effort', 'functions', 'cache_prompt', '__proto__'])] = num(r);
  return b;
}

function completionBody(r: Rng): Record<string, unknown> {
  return {
    model: 'm',
    prompt: r.pick<unknown>(['Once upon a time', 'café', '', [1, 2, 3], [[1, 2], [3]], ['a', 'b'], [-1], [99_999_999], 5, null, randomText(r, 20)]),
    ...(r.chance(0.8) ? { max_tokens: r.chance(0.7) ? r.int(1, 8) : num(r) } : {}),
    ...(r.chance(0.2) ? { stream: true } : {}),
    ...(r.chance(0.1) ? { echo: true } : {}),
    ...(r.chance(0.1) ? { logprobs: r.pick<unknown>([0, 5, 100, -1, true]) } : {}),
    ...(r.chance(0.1) ? { suffix: 'x' } : {}),
    ...(r.chance(0.2) ? { response_format: responseFormat(r) } : {}),
  };
}

function embeddingBody(r: Rng): Record<string, unknown> {
  return {
    model: r.pick<unknown>(['m', 'nope']),
    input: r.pick<unknown>(['café', '', [], ['a', 'b'], [[1, 2]], [1, 2], [[]], [-1], [[99_999_999]], null, 5, Array(100).fill('x'), 'x'.repeat(5000)]),
    ...(r.chance(0.2) ? { encoding_format: r.pick(['float', 'base64', 'bogus']) } : {}),
    ...(r.chance(0.1) ? { dimensions: num(r) } : {}),
  };
}

function rawBody(r: Rng): Compact {
  const n = r.pick([10, 1000, 10_000, 100_000]);
  return r.weighted<() => Compact>([
    [2, () => ({ $concat: [{ $repeat: '[', times: n }, { $repeat: ']', times: n }] })],
    [2, () => ({ $concat: ['{"messages":[{"role":"user","content":"hi"}],"x":', { $repeat: '{"a":', times: n }, '1', { $repeat: '}', times: n }, '}'] })],
    [1, () => r.pick(['{"messages":[{"role":"user","content":"hi"}],"max_tokens":1e999}', '{"messages":[{"role":"user","content":"hi"}],"max_tokens":123456789012345678901234567890}', '{"messages":[{"role":"user","content":"hi"}],"temperature":-0}', '{"messages":[{"role":"user","content":"\\ud800"}]}', '{"messages":[{"role":"user","content":"caf\\u00e9"}],"max_tokens":2}'])],
    [1, () => r.pick(['', '{', 'null', '[]', '"x"', '5', '{"messages":', '\ufeff{"messages":[]}', '{"a":1,"a":2}', 'not json', '{"messages":[{"role":"user","content":"hi"}]}garbage'])],
    [1, () => ({ $concat: ['{"messages":[{"role":"user","content":"', { $repeat: 'é', times: n * 5 }, '"}],"max_tokens":2}'] })],
  ])();
}

export const http: Target<Input> = {
  name: 'http',
  description: 'random requests (bodies, headers, paths) against startServer; /health must keep answering',
  timeoutMs: 30_000,
  generate(r: Rng): Input {
    const path = r.weighted<() => string>([
      [10, () => '/v1/chat/completions'],
      [4, () => '/v1/completions'],
      [2, () => '/v1/embeddings'],
      [1, () => r.pick(['/v1/models', '/v1/models/m', '/v1/models/%C3%A9', '/health', '/metrics', '/', '/admin/reload', '/chat', '/v1/chat/completions/', '/V1/CHAT/COMPLETIONS'])],
      [1, () => r.pick(['//', '/%ff', '/..%2f..%2fetc%2fpasswd', `/v1/${[...Buffer.from(randomText(r, 10), 'utf8')].map((b) => `%${b.toString(16).padStart(2, '0')}`).join('')}`, `/${'a'.repeat(r.size(20_000))}`, '/v1/chat/completions?x=%&y', '/v1/chat/completions#frag'])],
    ])();
    const method = r.weighted<() => string>([[12, () => 'POST'], [3, () => 'GET'], [1, () => r.pick(['PUT', 'DELETE', 'OPTIONS', 'HEAD', 'PATCH'])]])();
    const headers: Record<string, string> = {};
    const ct = r.weighted<() => string | null>([[12, () => 'application/json'], [1, () => null], [1, () => r.pick(['text/plain', 'application/json; charset=latin1', 'application/json; charset=utf-16', 'multipart/form-data; boundary=x', 'application/x-www-form-urlencoded', 'application/JSON', 'é'])]])();
    if (ct !== null) headers['content-type'] = ct;
    if (r.chance(0.1)) headers.authorization = r.pick(['Bearer x', 'Bearer', 'Basic Zm9vOmJhcg==', '']);
    if (r.chance(0.1)) headers.accept = r.pick(['text/event-stream', '*/*', 'application/xml']);
    if (r.chance(0.05)) headers[r.pick(['x-request-id', 'content-encoding', 'transfer-encoding', 'expect'])] = r.pick(['gzip', 'x'.repeat(1000), '100-continue', 'chunked', 'br']);
    let body: Compact | null = null;
    if (method !== 'GET' && method !== 'HEAD') {
      body = r.weighted<() => Compact | null>([
        [8, () => JSON.stringify(path.includes('embeddings') ? embeddingBody(r) : path.includes('/completions') && !path.includes('chat') ? completionBody(r) : chatBody(r))],
        [2, () => rawBody(r)],
        [1, () => null],
      ])();
    }
    return { method, path, headers, body };
  },
  run(input: Input, env: Env) {
    return runSteps('request', async () => {
      const s = await step('setup', [], () => server(env));
      const body = input.body === null ? null : text(input.body);
      const res = await send(s.url, { ...input, body }, 25_000).catch((e: Error) => wrong('request', `no HTTP answer: ${e.message}`));
      if (res.status >= 500 && res.status !== 503) wrong('request', `HTTP ${res.status}: ${res.body.slice(0, 300)}`);
      const health = await send(s.url, { method: 'GET', path: '/health', headers: {}, body: null }, 5000).catch((e: Error) => wrong('health', `/health did not answer: ${e.message}`));
      if (health.status !== 200) wrong('health', `/health answered ${health.status}: ${health.body.slice(0, 200)}`);
    });
  },
  shrink(input: Input): Input[] {
    const out: Input[] = [];
    for (const k of Object.keys(input.headers)) {
      if (k === 'content-type') continue;
      const { [k]: _, ...rest } = input.headers;
      out.push({ ...input, headers: rest });
    }
    if (input.body !== null) {
      if (typeof input.body === 'string') {
        // Drop top-level fields of a JSON body.
        try {
          const o = JSON.parse(input.body) as Record<string, unknown>;
          if (o && typeof o === 'object' && !Array.isArray(o)) {
            for (const k of Object.keys(o)) {
              const { [k]: _, ...rest } = o;
              out.push({ ...input, body: JSON.stringify(rest) });
            }
          }
        } catch {
          for (const b of shrinkCompact(input.body).slice(0, 8)) out.push({ ...input, body: b });
        }
      } else {
        for (const b of shrinkCompact(input.body)) out.push({ ...input, body: b });
      }
    }
    return out;
  },
};

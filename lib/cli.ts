#!/usr/bin/env node
// npx llama-addon <command>: serve (an OpenAI-compatible server), complete, tokenize, inspect.
import { basename } from 'node:path';
import { parseArgs } from 'node:util';
import { readGguf } from './gguf/reader.js';
import { setLogLevel } from './log.js';
import type { GpuOption } from './backends.js';
import { loadModel } from './model.js';
import type { JsonSchema } from './json-schema.js';
import { pullModel } from './pull.js';
import { quantize, quantizationTypes, type QuantizationType } from './quantize.js';
import { startServer, type ServerModel } from './server/server.js';

const usage = `Usage: llama-addon <command> [options]

Commands:
  serve --model [alias=]file.gguf ...   an OpenAI-compatible server (repeat --model for several models)
        [--port 8080] [--host 127.0.0.1] [--parallel 4] [--ctx-size N] [--api-key KEY]
        [--max-queue 64] [--max-tokens 4096] [--body-limit BYTES] [--gpu-layers N|auto|max] [--log]
        [--cache-responses N] [--admin] [--gpu auto|cuda|vulkan|metal|off] [--rpc host:port,...];
        SIGHUP reloads the model files without downtime
  complete --model file.gguf "prompt"   print a completion
        [--max-tokens 256] [--temperature 0.8] [--top-p 0.95] [--seed N] [--json]
        [--json-schema schema.json] [--grammar file.gbnf] [--gpu ...] [--gpu-layers N] [--rpc host:port,...]
  chat --model file.gguf                an interactive chat (streams; a line ending in \\ continues the
        [--system "..."] [--max-tokens 512]    message; /reset starts over; Ctrl-C stops an answer, Ctrl-D quits)
  embed --model file.gguf "text" ...     print one embedding per text as JSON [--pooling mean]
  tokenize --model file.gguf "text"     print the token ids [--json]
  inspect file.gguf                     architecture, size, context length, chat template [--all] [--json]
  pull hf:owner/repo/file.gguf | URL    download into the cache (resumes; checks size and SHA-256) [--json]
  quantize in.gguf out.gguf Q4_K_M      llama.cpp's quantizer (F16, Q8_0, Q4_0, Q4_K_M, Q5_K_M, Q6_K, ...)
  rpc-server [--port 50052] [--host 127.0.0.1] [--threads N] [--cache DIR] [--gpu auto|cuda|vulkan|metal|off]
                                        llama.cpp's RPC server: lends this machine's CPU (or GPU) to
                                        models loaded elsewhere with --rpc / rpcServers (no authentication:
                                        keep it on a trusted network)
  backends [--json]                     the compute backends and devices usable here
  bench [options]                       the benchmarks (a checkout of the repository; see its README)

--model also takes hf:owner/repo/file.gguf or a URL: the file is downloaded on first use.
`;

function progressBar(label: string): (received: number, total: number | null) => void {
  if (!process.stderr.isTTY) return () => {};
  const start = Date.now();
  let last = 0;
  return (received, total) => {
    const now = Date.now();
    if (now - last < 100 && received !== total) return;
    last = now;
    const mb = (n: number) => (n / 1e6).toFixed(1);
    const speed = received / 1e6 / Math.max(0.001, (now - start) / 1000);
    const width = 30;
    const bar = total ? '#'.repeat(Math.round((received / total) * width)).padEnd(width, '.') : '';
    process.stderr.write(`\r${label} [${bar}] ${mb(received)}${total ? `/${mb(total)}` : ''} MB ${speed.toFixed(1)} MB/s`);
    if (received === total) process.stderr.write('\n');
  };
}

/** A progress bar for loading a model (on a terminal). */
function loadingBar(): (p: number) => void {
  const bar = progressBar('loading');
  return (p) => bar(Math.round(p * 1000), 1000);
}

/** A local path, or a hf:/URL reference downloaded into the cache first. */
async function modelPath(ref: string): Promise<string> {
  if (!ref.startsWith('hf:') && !/^https?:\/\//.test(ref)) return ref;
  const r = await pullModel(ref, { onProgress: progressBar(`pulling ${ref}`) });
  return r.path;
}

function fail(message: string, code = 2): never {
  process.stderr.write(`llama-addon: ${message}\n`);
  process.exit(code);
}

function parseModels(values: string[] | undefined): ServerModel[] {
  if (!values?.length) fail('serve needs at least one --model file.gguf (or alias=file.gguf)');
  return values.map((v) => {
    const eq = v.indexOf('=');
    if (eq > 0 && !v.slice(0, eq).includes('/')) return { alias: v.slice(0, eq), path: v.slice(eq + 1) };
    return { alias: basename(v).replace(/\.gguf$/i, ''), path: v };
  });
}

const gpuLayers = (v: string | undefined) => (v === undefined ? 'auto' : v === 'auto' || v === 'max' ? v : Number(v));
const gpuOption = (v: string | undefined): GpuOption | undefined => {
  if (v === undefined) return undefined;
  if (v === 'off' || v === 'false' || v === 'cpu') return false;
  if (v === 'auto' || v === 'cuda' || v === 'vulkan' || v === 'metal') return v;
  fail(`--gpu expects auto, cuda, vulkan, metal or off; received ${JSON.stringify(v)}`);
};
const rpcList = (v: string | undefined) => (v ? v.split(',').map((s) => s.trim()).filter(Boolean) : undefined);

async function serve(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      model: { type: 'string', multiple: true },
      port: { type: 'string', default: '8080' },
      host: { type: 'string', default: '127.0.0.1' },
      parallel: { type: 'string', default: '4' },
      'ctx-size': { type: 'string' },
      'api-key': { type: 'string' },
      'max-queue': { type: 'string', default: '64' },
      'max-tokens': { type: 'string', default: '4096' },
      'body-limit': { type: 'string' },
      'gpu-layers': { type: 'string' },
      gpu: { type: 'string' },
      rpc: { type: 'string' },
      log: { type: 'boolean', default: false },
      'cache-responses': { type: 'string' },
      admin: { type: 'boolean', default: false },
    },
  });
  setLogLevel('error');
  const models = await Promise.all(parseModels(values.model).map(async (m) => ({ ...m, path: await modelPath(m.path) })));
  const server = await startServer({
    models,
    host: values.host!,
    port: Number(values.port),
    parallel: Number(values.parallel),
    maxQueue: Number(values['max-queue']),
    maxTokensLimit: Number(values['max-tokens']),
    gpuLayers: gpuLayers(values['gpu-layers']),
    ...(gpuOption(values.gpu) !== undefined ? { gpu: gpuOption(values.gpu) } : {}),
    ...(rpcList(values.rpc) ? { rpcServers: rpcList(values.rpc) } : {}),
    log: values.log!,
    ...(values['ctx-size'] ? { contextSize: Number(values['ctx-size']) } : {}),
    ...(values['api-key'] ? { apiKey: values['api-key'] } : {}),
    ...(values['body-limit'] ? { bodyLimit: Number(values['body-limit']) } : {}),
    ...(values['cache-responses'] ? { cacheResponses: Number(values['cache-responses']) } : {}),
    admin: values.admin!,
  });
  process.stderr.write(`llama-addon: listening on ${server.url} (models load in the background; GET /health)\n`);
  server.ready.then(
    () => process.stderr.write('llama-addon: models loaded\n'),
    (e: Error) => process.stderr.write(`llama-addon: a model failed to load: ${e.message}\n`),
  );
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) process.exit(1);
    stopping = true;
    process.stderr.write(`llama-addon: ${signal}: finishing running requests (10 s at most)\n`);
    void server.close(10_000).then(() => process.exit(0));
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGHUP', () => {
    process.stderr.write('llama-addon: SIGHUP: reloading the model files\n');
    for (const m of models) {
      server.reload(m.alias).then(
        (r) => process.stderr.write(`llama-addon: ${r.model} now serves ${r.path} (version ${r.version})\n`),
        (e: Error) => process.stderr.write(`llama-addon: reloading ${m.alias} failed, the old model stays: ${e.message}\n`),
      );
    }
  });
  process.on('SIGINT', () => stop('SIGINT'));
}

async function complete(argv: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      model: { type: 'string' },
      'max-tokens': { type: 'string', default: '256' },
      temperature: { type: 'string' },
      'top-p': { type: 'string' },
      seed: { type: 'string' },
      json: { type: 'boolean', default: false },
      'json-schema': { type: 'string' },
      grammar: { type: 'string' },
      gpu: { type: 'string' },
      'gpu-layers': { type: 'string' },
      rpc: { type: 'string' },
    },
  });
  if (!values.model) fail('complete needs --model file.gguf');
  if (positionals.length !== 1) fail('complete needs one prompt argument');
  const { readFileSync } = await import('node:fs');
  const readOr = (path: string, what: string) => {
    try {
      return readFileSync(path, 'utf8');
    } catch (e) {
      return fail(`cannot read the ${what} file ${path}: ${(e as Error).message}`);
    }
  };
  let jsonSchema: JsonSchema | undefined;
  if (values['json-schema']) {
    try {
      jsonSchema = JSON.parse(readOr(values['json-schema'], 'JSON schema')) as JsonSchema;
    } catch (e) {
      fail(`${values['json-schema']} is not JSON: ${(e as Error).message}`);
    }
  }
  const grammar = values.grammar ? readOr(values.grammar, 'grammar') : undefined;
  setLogLevel('error');
  const gpu = gpuOption(values.gpu);
  const rpcServers = rpcList(values.rpc);
  await using model = await loadModel(await modelPath(values.model), {
    onProgress: loadingBar(),
    gpuLayers: gpuLayers(values['gpu-layers']),
    ...(gpu !== undefined ? { gpu } : {}),
    ...(rpcServers ? { rpcServers } : {}),
  });
  await using ctx = await model.createContext();
  using session = ctx.createSession();
  const gen = session.generate(positionals[0], {
    maxTokens: Number(values['max-tokens']),
    ...(values.temperature ? { temperature: Number(values.temperature) } : {}),
    ...(values['top-p'] ? { topP: Number(values['top-p']) } : {}),
    ...(values.seed ? { seed: Number(values.seed) } : {}),
    ...(jsonSchema ? { jsonSchema } : {}),
    ...(grammar ? { grammar } : {}),
  });
  if (values.json) {
    const r = await gen.result;
    process.stdout.write(JSON.stringify({ text: r.text, stopReason: r.stopReason, usage: r.usage, timings: r.timings }) + '\n');
    return;
  }
  for await (const c of gen) process.stdout.write(c.text);
  process.stdout.write('\n');
}

async function chat(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: { model: { type: 'string' }, system: { type: 'string' }, 'max-tokens': { type: 'string', default: '512' }, temperature: { type: 'string' } },
  });
  if (!values.model) fail('chat needs --model file.gguf');
  setLogLevel('error');
  const { createInterface } = await import('node:readline');
  await using model = await loadModel(await modelPath(values.model), { onProgress: loadingBar() });
  await using ctx = await model.createContext();
  using conversation = ctx.createChat(values.system ? { systemPrompt: values.system } : {});
  const rl = createInterface({ input: process.stdin, output: process.stdout, terminal: process.stdin.isTTY === true });
  let answering: AbortController | null = null;
  // Ctrl-C stops the answer being written; at the prompt it quits.
  rl.on('SIGINT', () => (answering ? answering.abort() : rl.close()));
  process.on('SIGINT', () => (answering ? answering.abort() : rl.close()));
  const lines = rl[Symbol.asyncIterator]();
  const prompt = (p: string) => {
    if (process.stdin.isTTY) process.stdout.write(p);
  };
  for (;;) {
    prompt('> ');
    let text = '';
    for (;;) {
      const next = await lines.next();
      if (next.done) return void process.stdout.write('\n');
      if (next.value.endsWith('\\')) {
        text += next.value.slice(0, -1) + '\n';
        prompt('. ');
        continue;
      }
      text += next.value;
      break;
    }
    if (text.trim() === '') continue;
    if (text.trim() === '/reset') {
      conversation.reset();
      process.stdout.write('(conversation reset)\n');
      continue;
    }
    answering = new AbortController();
    const gen = conversation.send(text, {
      maxTokens: Number(values['max-tokens']),
      signal: answering.signal,
      ...(values.temperature ? { temperature: Number(values.temperature) } : {}),
    });
    for await (const c of gen) process.stdout.write(c.text);
    const r = await gen.result;
    answering = null;
    process.stdout.write(r.stopReason === 'abort' ? ' [stopped]\n' : '\n');
  }
}

async function embed(argv: string[]): Promise<void> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { model: { type: 'string' }, pooling: { type: 'string' } } });
  if (!values.model) fail('embed needs --model file.gguf');
  if (positionals.length === 0) fail('embed needs at least one text');
  const pooling = (values.pooling ?? 'mean') as 'mean' | 'cls' | 'last';
  if (!['mean', 'cls', 'last'].includes(pooling)) fail(`--pooling is mean, cls or last, not '${values.pooling}'`);
  setLogLevel('error');
  await using model = await loadModel(await modelPath(values.model));
  await using ctx = await model.createContext({ embeddings: true, pooling, sequences: Math.min(8, positionals.length) });
  const vectors = await ctx.embed(positionals);
  process.stdout.write(JSON.stringify(vectors.map((v, i) => ({ text: positionals[i], embedding: Array.from(v) }))) + '\n');
}

async function tokenize(argv: string[]): Promise<void> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { model: { type: 'string' }, json: { type: 'boolean', default: false } } });
  if (!values.model) fail('tokenize needs --model file.gguf');
  if (positionals.length !== 1) fail('tokenize needs one text argument');
  setLogLevel('error');
  await using model = await loadModel(values.model, { vocabOnly: true });
  const tokens = Array.from(model.tokenize(positionals[0]));
  if (values.json) process.stdout.write(JSON.stringify(tokens.map((id) => ({ id, text: model.detokenize([id], { special: true }) }))) + '\n');
  else process.stdout.write(tokens.join(' ') + '\n');
}

async function pull(argv: string[]): Promise<void> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { json: { type: 'boolean', default: false }, sha256: { type: 'string' } } });
  if (positionals.length !== 1) fail('pull needs one reference: hf:owner/repo/file.gguf or a URL');
  const r = await pullModel(positionals[0], { onProgress: progressBar(`pulling ${positionals[0]}`), ...(values.sha256 ? { sha256: values.sha256 } : {}) });
  if (values.json) process.stdout.write(JSON.stringify(r) + '\n');
  else process.stdout.write(`${r.path}\n`);
}

async function quantizeCommand(argv: string[]): Promise<void> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { threads: { type: 'string' } } });
  if (positionals.length !== 3) fail(`quantize needs: in.gguf out.gguf TYPE (one of ${Object.keys(quantizationTypes).join(', ')})`);
  const [input, output, type] = positionals;
  if (!Object.hasOwn(quantizationTypes, type)) fail(`unknown type '${type}': one of ${Object.keys(quantizationTypes).join(', ')}`);
  const inSize = (await readGguf(input).catch((e: Error) => fail(e.message, 1))).fileSize;
  const bar = progressBar(`quantizing to ${type}`);
  setLogLevel('error');
  await quantize(input, output, type as QuantizationType, {
    ...(values.threads ? { threads: Number(values.threads) } : {}),
    onProgress: (n) => bar(Math.min(n, inSize), inSize),
  });
  if (process.stderr.isTTY) process.stderr.write('\n');
  process.stdout.write(`${output}\n`);
}

async function bench(argv: string[]): Promise<void> {
  const { existsSync } = await import('node:fs');
  const { spawnSync } = await import('node:child_process');
  const { dirname, join } = await import('node:path');
  const { fileURLToPath } = await import('node:url');
  const root = join(dirname(fileURLToPath(import.meta.url)), '..');
  const runner = join(root, 'bench', 'run.ts');
  if (!existsSync(runner)) fail('the benchmarks come with a checkout of the repository (bench/ is not in the npm package)', 1);
  const r = spawnSync(process.execPath, ['--import', 'tsx', runner, ...argv], { cwd: root, stdio: 'inherit' });
  process.exit(r.status ?? 1);
}

const fileTypeNames: Record<number, string> = {
  0: 'F32', 1: 'F16', 32: 'BF16', ...Object.fromEntries(Object.entries(quantizationTypes).map(([name, id]) => [id, name])),
};

async function inspect(argv: string[]): Promise<void> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { all: { type: 'boolean', default: false }, json: { type: 'boolean', default: false } } });
  if (positionals.length !== 1) fail('inspect needs one file.gguf');
  const g = await readGguf(positionals[0]);
  const m = g.metadata;
  const arch = String(m['general.architecture'] ?? 'unknown');
  const count = g.tensors.reduce((n, t) => n + t.dims.reduce((a, b) => a * Number(b), 1), 0);
  const summary = {
    file: positionals[0],
    name: m['general.name'] ?? null,
    architecture: arch,
    sizeBytes: g.fileSize,
    parameters: count,
    fileType: m['general.file_type'] ?? null,
    quantization: typeof m['general.file_type'] === 'number' ? (fileTypeNames[m['general.file_type'] as number] ?? `type ${m['general.file_type']}`) : 'unknown',
    contextLength: m[`${arch}.context_length`] ?? null,
    embeddingLength: m[`${arch}.embedding_length`] ?? null,
    layers: m[`${arch}.block_count`] ?? null,
    tensors: g.tensors.length,
    chatTemplate: m['tokenizer.chat_template'] ?? null,
    ...(values.all ? { metadata: m } : {}),
  };
  if (values.json) {
    process.stdout.write(JSON.stringify(summary, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v), 2) + '\n');
    return;
  }
  for (const [k, v] of Object.entries(summary)) {
    if (k === 'metadata' || k === 'chatTemplate') continue;
    process.stdout.write(`${k.padEnd(16)} ${String(v)}\n`);
  }
  process.stdout.write(`chatTemplate     ${summary.chatTemplate ? 'yes' : 'none'}\n`);
  if (values.all) for (const [k, v] of Object.entries(m)) process.stdout.write(`  ${k} = ${typeof v === 'object' ? JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? x.toString() : x)) : String(v)}\n`);
}

async function rpcServer(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      port: { type: 'string', default: '50052' },
      host: { type: 'string', default: '127.0.0.1' },
      threads: { type: 'string' },
      cache: { type: 'string' },
      gpu: { type: 'string', default: 'auto' },
    },
  });
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`--port expects a port number; received ${JSON.stringify(values.port)}`);
  const { native } = await import('./native.js');
  const { chooseDevices } = await import('./backends.js');
  const addon = native();
  const threads = values.threads ? Number(values.threads) : addon.systemInfo().defaultThreads;
  if (!Number.isInteger(threads) || threads < 1) fail(`--threads expects a positive integer; received ${JSON.stringify(values.threads)}`);
  const { devices } = await chooseDevices(gpuOption(values.gpu) ?? 'auto', rpcServer);
  const served = devices.length ? devices.map((d) => d.name) : [];
  if (values.host !== '127.0.0.1' && values.host !== 'localhost') {
    process.stderr.write('llama-addon: warning: the RPC server has no authentication; anyone who can reach this port can use it\n');
  }
  process.stderr.write(`llama-addon: rpc-server on ${values.host}:${port} serving ${served.length ? served.join(', ') : 'the CPU'} with ${threads} threads\n`);
  // Blocks this thread for the life of the process (the server runs here); SIGINT/SIGTERM end it.
  addon.rpcServe(`${values.host}:${port}`, values.cache ?? null, threads, served);
}

async function backends(argv: string[]): Promise<void> {
  const { values } = parseArgs({ args: argv, options: { json: { type: 'boolean', default: false } } });
  const { getBackendInfo } = await import('./system.js');
  const info = getBackendInfo();
  if (values.json) {
    process.stdout.write(JSON.stringify(info, null, 2) + '\n');
    return;
  }
  process.stdout.write(`backends   ${info.backends.join(', ')}\n`);
  const cpu = Object.keys(info.cpuFeatures).filter((k) => info.cpuFeatures[k] === '1');
  if (cpu.length) process.stdout.write(`cpu        ${cpu.join(' ')}\n`);
  for (const d of info.devices) {
    const gib = (n: number) => (n / 2 ** 30).toFixed(1);
    process.stdout.write(`device     ${d.name} (${d.backend}, ${d.type}): ${d.description}, ${gib(d.memoryFree)}/${gib(d.memoryTotal)} GiB free\n`);
  }
  for (const m of info.gpuModules) process.stdout.write(`gpu module ${m.backend}: ${m.state}${m.error ? ` (${m.error})` : ''} ${m.path}\n`);
}

const [command, ...rest] = process.argv.slice(2);
const commands: Record<string, (argv: string[]) => Promise<void>> = {
  serve, complete, chat, embed, tokenize, inspect, pull, quantize: quantizeCommand, bench, 'rpc-server': rpcServer, backends,
};
if (!command || command === '--help' || command === '-h' || command === 'help') {
  process.stdout.write(usage);
} else if (!commands[command]) {
  fail(`unknown command '${command}'\n\n${usage}`);
} else {
  commands[command](rest).catch((e: Error & { code?: string }) => fail(`${e.code ? `${e.code}: ` : ''}${e.message}`, 1));
}

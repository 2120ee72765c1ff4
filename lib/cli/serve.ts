// serve: the OpenAI-compatible server, its chat page, and the signals that stop or reload it.
import { basename } from 'node:path';
import { bool, command, int, intOrAuto, str, strs, UsageError } from './args.js';
import { bytes, onSignals, readModelHeader, startedByNpm } from './output.js';
import { gpuFlag, gpuLayersFlag, gpuOption, modelPath, rpcFlag } from './shared.js';

/** `alias=file.gguf` or `file.gguf` (aliased by its name without .gguf). */
function parseModels(values: string[]): Array<{ alias: string; path: string }> {
  const models = values.map((v) => {
    const eq = v.indexOf('=');
    if (eq > 0 && !v.slice(0, eq).includes('/')) return { alias: v.slice(0, eq), path: v.slice(eq + 1) };
    return { alias: basename(v).replace(/\.gguf$/i, ''), path: v };
  });
  const seen = new Set<string>();
  for (const m of models) {
    if (!m.path) throw new UsageError(`--model ${m.alias}= names no file`, 'serve');
    if (seen.has(m.alias)) throw new UsageError(`two models are called ${JSON.stringify(m.alias)}: give each its own alias (--model alias=file.gguf)`, 'serve');
    seen.add(m.alias);
  }
  return models;
}

/** The address a browser on this machine opens for a server listening on `url` (0.0.0.0 is not one). */
function pageUrl(url: string): string {
  return url.replace('//0.0.0.0:', '//127.0.0.1:').replace('//[::]:', '//[::1]:') + '/';
}

export const serve = command({
  name: 'serve',
  summary: 'an OpenAI-compatible server, with a chat page',
  synopsis: '--model [ALIAS=]FILE ... [options]',
  details: `Serves /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models, /health, /metrics, and a chat
page at /. Models load once it listens (/health answers 503 until they have); if one fails to load, it
stops with exit code 1. SIGHUP reloads the model files without downtime. SIGINT (Ctrl-C) or SIGTERM lets
running requests finish for up to 10 s and exits; a second one exits at once.`,
  flags: {
    model: strs({
      placeholder: '[ALIAS=]FILE',
      required: true,
      description: "a model, under ALIAS (default: the file's name); repeat for several; also hf:... or a URL",
    }),
    host: str({ default: '127.0.0.1', placeholder: 'HOST', description: 'address to listen on; 0.0.0.0 for every interface' }),
    port: int({ min: 0, max: 65535, default: 8080, description: 'port to listen on; 0 picks a free one' }),
    parallel: int({ min: 1, max: 256, default: 4, description: 'requests generated at once per model' }),
    conversations: int({ min: 1, max: 1_000_000, default: 64, description: 'conversations per model that keep their cache between requests (beyond --parallel, in host memory)' }),
    'cache-ram': int({ min: 0, max: Number.MAX_SAFE_INTEGER, placeholder: 'MIB', defaultText: '1024', description: 'host memory for those caches, MiB per model' }),
    'ctx-size': int({ min: 1, max: 1 << 24, defaultText: "the model's training context, at most 4096", description: 'tokens each of those requests can hold' }),
    'batch-size': int({ min: 1, max: 1 << 20, defaultText: '2048', description: "most tokens decoded in one step (llama-server's --batch-size): chunks of waiting prompts share it" }),
    'kv-unified': bool({ description: "one KV cache of --ctx-size tokens per model that all its requests share (llama.cpp's --kv-unified)" }),
    threads: intOrAuto({ min: 1, max: 512, defaultText: "auto: adapts to the machine's load", description: 'CPU threads of each model' }),
    'api-key': str({ placeholder: 'KEY', description: 'require Authorization: Bearer KEY; the chat page then opens as /?key=KEY' }),
    'max-queue': int({ min: 0, max: 1_000_000, default: 64, description: 'requests that may wait per model before a 429' }),
    'max-tokens': int({ min: 1, max: 2 ** 31 - 1, default: 4096, description: "largest max_tokens a request may ask for, and a request's default" }),
    'body-limit': int({ min: 1, max: 2 ** 31 - 1, default: 1 << 20, placeholder: 'BYTES', description: 'largest request body; a larger one is a 413' }),
    'max-body-depth': int({ min: 1, max: 10_000, default: 128, description: 'deepest nesting of a JSON request body; deeper is a 400' }),
    'cache-responses': int({ min: 0, max: 1_000_000, default: 0, description: 'keep the last N deterministic responses and answer repeats from memory' }),
    admin: bool({ description: 'allow POST /admin/reload without an API key; with a key it is always on' }),
    log: bool({ description: 'print each request' }),
    gpu: gpuFlag,
    'gpu-layers': gpuLayersFlag,
    rpc: rpcFlag,
  },
  async run(v) {
    const models = parseModels(v.model);
    const { setLogLevel } = await import('../base/log.js');
    setLogLevel('error');
    // Downloads first; then every file's header is read, so that a wrong path stops here, before listening.
    for (const m of models) m.path = await modelPath(m.path);
    const sizes: number[] = [];
    for (const m of models) sizes.push((await readModelHeader(m.path)).fileSize);
    const { startServer } = await import('../server/server.js');
    let server: Awaited<ReturnType<typeof startServer>>;
    try {
      server = await startServer({
        models,
        host: v.host,
        port: v.port,
        parallel: v.parallel,
        conversations: v.conversations,
        ...(v['cache-ram'] !== undefined ? { cacheRamBytes: v['cache-ram'] * 2 ** 20 } : {}),
        maxQueue: v['max-queue'],
        maxTokensLimit: v['max-tokens'],
        bodyLimit: v['body-limit'],
        maxBodyDepth: v['max-body-depth'],
        gpuLayers: v['gpu-layers'],
        gpu: gpuOption(v.gpu),
        ...(v.rpc ? { rpcServers: v.rpc } : {}),
        log: v.log,
        ...(v['ctx-size'] !== undefined ? { contextSize: v['ctx-size'] } : {}),
        ...(v['kv-unified'] ? { kvUnified: true } : {}),
        ...(v['batch-size'] !== undefined ? { batchSize: v['batch-size'] } : {}),
        ...(v.threads !== undefined ? { threads: v.threads } : {}),
        ...(v['api-key'] ? { apiKey: v['api-key'] } : {}),
        ...(v['cache-responses'] ? { cacheResponses: v['cache-responses'] } : {}),
        admin: v.admin,
      });
    } catch (e) {
      if ((e as { syscallCode?: string }).syscallCode === 'EADDRINUSE') {
        throw new Error(`port ${v.port} on ${v.host} is in use: stop what listens there, or pick another with --port`, { cause: e });
      }
      throw e;
    }
    process.stderr.write(
      `llama-addon: listening on ${server.url} (loading ${models.map((m, i) => `${m.alias}, ${bytes(sizes[i])}`).join('; ')}: GET /health answers 503 until loaded)\n`,
    );
    process.stderr.write(`Chat page: ${pageUrl(server.url)}${v['api-key'] ? ' (add ?key=KEY: the server has an API key)' : ''}\n`);

    let stopping = false;
    const stop = (why: string, signal: NodeJS.Signals | null) => {
      if (stopping) {
        process.stderr.write(`llama-addon: ${why} again: exiting now\n`);
        process.exit(signal === 'SIGTERM' ? 143 : 130);
      }
      stopping = true;
      const again = signal === 'SIGINT' ? '; Ctrl-C again exits at once' : signal ? `; ${signal} again exits at once` : '';
      process.stderr.write(`llama-addon: ${why}: finishing running requests (10 s at most${again})\n`);
      server.close(10_000).then(
        () => process.exit(0),
        (e: Error) => {
          process.stderr.write(`llama-addon: closing failed: ${e.message}\n`);
          process.exit(1);
        },
      );
    };
    server.ready.then(
      () => {
        if (!stopping) process.stderr.write(`llama-addon: ${models.length === 1 ? 'the model is' : 'every model is'} loaded: serving\n`);
      },
      (e: Error & { code?: string }) => {
        if (stopping) return;
        stopping = true;
        process.stderr.write(`llama-addon: ${e.code ? `${e.code}: ` : ''}${e.message}\n`);
        process.stderr.write('llama-addon: a model did not load: stopping\n');
        void server.close(1000).finally(() => process.exit(1));
      },
    );

    // npm (npx, npm exec) runs a command through `sh -c`. Where sh execs it (bash), npm forwards SIGINT and
    // SIGTERM to it: one Ctrl-C arrives twice, which onSignals folds into one. Where sh waits for it (dash,
    // Debian's and Ubuntu's sh), npm forwards the signal to sh, which dies of SIGTERM and leaves this process
    // behind, never told, with SIGHUP from the closed terminal at most: so, when npm started this process, its
    // parent going away means stop.
    const parent = process.ppid;
    const orphaned = () => startedByNpm() && process.ppid !== parent;
    if (startedByNpm()) {
      setInterval(() => {
        if (orphaned() && !stopping) stop('npm, which started this server, has exited', null);
      }, 250).unref();
    }
    onSignals(['SIGINT', 'SIGTERM'], (signal) => stop(signal, signal));
    process.on('SIGHUP', () => {
      if (orphaned()) {
        if (!stopping) stop('SIGHUP after npm exited', null);
        return;
      }
      process.stderr.write('llama-addon: SIGHUP: reloading the model files\n');
      for (const m of models) {
        server.reload(m.alias).then(
          (r) => process.stderr.write(`llama-addon: ${r.model} now serves ${r.path} (version ${r.version})\n`),
          (e: Error) => process.stderr.write(`llama-addon: reloading ${m.alias} failed, the old model stays: ${e.message}\n`),
        );
      }
    });
  },
});

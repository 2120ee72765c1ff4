// The smaller commands: complete, embed, tokenize, pull, quantize, bench, rpc-server, backends.
import { bool, choice, command, int, str, strs, UsageError, suggest, didYouMean } from './args.js';
import { transferLine, progressLine, bytes, readModelHeader } from './output.js';
import { generateModelFlags, generateOptions, gpuFlag, gpuLayersFlag, gpuOption, loadWithBar, modelFlag, modelPath, rpcFlag, samplingFlags, runFlags } from './shared.js';

async function readText(path: string, what: string): Promise<string> {
  const { readFile } = await import('node:fs/promises');
  try {
    return await readFile(path, 'utf8');
  } catch (e) {
    throw new Error(`cannot read the ${what} file ${path}: ${(e as Error).message}`, { cause: e });
  }
}

export const complete = command({
  name: 'complete',
  summary: 'print a completion of a prompt, streamed to stdout',
  synopsis: '--model FILE [options] "prompt"',
  details: `The prompt is given as it is (no chat template). With --json, one JSON object: { text, stopReason,
usage, timings }. An answer cut by --max-tokens ends with a note on stderr when stderr is a terminal.`,
  flags: {
    model: generateModelFlags.model,
    'max-tokens': generateModelFlags['max-tokens'],
    json: bool({ description: 'print one JSON object with the text, stop reason, token counts and timings' }),
    'json-schema': str({ placeholder: 'FILE', description: 'a JSON schema (a .json file) the output must follow' }),
    grammar: str({ placeholder: 'FILE', description: 'a GBNF grammar file the output must follow' }),
    ...runFlags,
    ...samplingFlags,
  },
  positionals: { min: 1, max: 1, message: 'complete needs one prompt argument (in quotes: "Once upon a time")' },
  async run(v, [prompt]) {
    if (v['json-schema'] !== undefined && v.grammar !== undefined) throw new UsageError('give --json-schema or --grammar, not both', 'complete');
    let jsonSchema: import('../schema/json-schema.js').JsonSchema | undefined;
    if (v['json-schema'] !== undefined) {
      const text = await readText(v['json-schema'], 'JSON schema');
      try {
        jsonSchema = JSON.parse(text) as import('../schema/json-schema.js').JsonSchema;
      } catch (e) {
        throw new Error(`${v['json-schema']} is not JSON: ${(e as Error).message}`, { cause: e });
      }
    }
    const grammar = v.grammar !== undefined ? await readText(v.grammar, 'grammar') : undefined;
    const { setLogLevel } = await import('../base/log.js');
    setLogLevel('error');
    await using model = await loadWithBar(v);
    await using ctx = await model.createContext({
      ...(v['ctx-size'] !== undefined ? { contextSize: v['ctx-size'] } : {}),
      ...(v.threads !== undefined ? { threads: v.threads } : {}),
    });
    using session = ctx.createSession();
    const gen = session.generate(prompt, { ...generateOptions(v), ...(jsonSchema ? { jsonSchema } : {}), ...(grammar ? { grammar } : {}) });
    if (v.json) {
      const r = await gen.result;
      process.stdout.write(JSON.stringify({ text: r.text, stopReason: r.stopReason, usage: r.usage, timings: r.timings }) + '\n');
      return;
    }
    for await (const c of gen) process.stdout.write(c.text);
    process.stdout.write('\n');
    const r = await gen.result;
    if (r.stopReason === 'maxTokens' && process.stderr.isTTY) process.stderr.write(`[cut at ${v['max-tokens']} tokens: raise --max-tokens for more]\n`);
  },
});

export const embed = command({
  name: 'embed',
  summary: 'print one embedding per text, as JSON',
  synopsis: '--model FILE [options] "text" ...',
  details: 'Prints [{ text, embedding }] with L2-normalized vectors, in the order of the texts.',
  flags: {
    model: modelFlag,
    pooling: choice<'mean' | 'cls' | 'last'>({ choices: ['mean', 'cls', 'last'], default: 'mean', description: "how a text's token vectors become one" }),
    gpu: gpuFlag,
    'gpu-layers': gpuLayersFlag,
    rpc: rpcFlag,
  },
  positionals: { min: 1, max: Infinity, message: 'embed needs at least one text' },
  async run(v, texts) {
    const { setLogLevel } = await import('../base/log.js');
    setLogLevel('error');
    await using model = await loadWithBar(v);
    await using ctx = await model.createContext({ embeddings: true, pooling: v.pooling, sequences: Math.min(8, texts.length) });
    const vectors = await ctx.embed(texts);
    process.stdout.write(JSON.stringify(vectors.map((x, i) => ({ text: texts[i], embedding: Array.from(x) }))) + '\n');
  },
});

export const tokenize = command({
  name: 'tokenize',
  summary: 'print the token ids of a text',
  synopsis: '--model FILE [--json] "text"',
  details: 'Loads only the vocabulary. The text is tokenized as a prompt is (special tokens as text).',
  flags: {
    model: modelFlag,
    json: bool({ description: 'print [{ id, text }], each token with its text' }),
  },
  positionals: { min: 1, max: 1, message: 'tokenize needs one text argument' },
  async run(v, [text]) {
    const { setLogLevel } = await import('../base/log.js');
    const { loadModel } = await import('../core/model.js');
    setLogLevel('error');
    await using model = await loadModel(await modelPath(v.model), { vocabOnly: true });
    const tokens = Array.from(model.tokenize(text));
    if (v.json) process.stdout.write(JSON.stringify(tokens.map((id) => ({ id, text: model.detokenize([id], { special: true }) }))) + '\n');
    else process.stdout.write(tokens.join(' ') + '\n');
  },
});

export const pull = command({
  name: 'pull',
  summary: 'download a model into the cache (resumes; checks size and SHA-256)',
  synopsis: 'hf:owner/repo/file.gguf | URL [--json] [--sha256 HEX]',
  details: `Prints the file's path. The cache is $LLAMA_ADDON_CACHE, else ~/.cache/llama-addon/models; HF_ENDPOINT
points hf: references at another hub.`,
  flags: {
    json: bool({ description: 'print { path, ... } as JSON' }),
    sha256: str({ placeholder: 'HEX', description: 'the SHA-256 the file must have (hf: files are checked against the hub anyway)' }),
  },
  positionals: { min: 1, max: 1, message: 'pull needs one reference: hf:owner/repo/file.gguf or a URL' },
  async run(v, [ref]) {
    const { pullModel } = await import('../models/pull.js');
    const line = transferLine(`downloading ${ref}`);
    let r: Awaited<ReturnType<typeof pullModel>>;
    try {
      r = await pullModel(ref, { onProgress: (done, total) => line.update(done, total), ...(v.sha256 ? { sha256: v.sha256 } : {}) });
    } finally {
      line.end();
    }
    process.stdout.write(v.json ? JSON.stringify(r) + '\n' : `${r.path}\n`);
  },
});

export const quantize = command({
  name: 'quantize',
  summary: "write a model in another type, with llama.cpp's quantizer",
  synopsis: 'in.gguf out.gguf TYPE [--threads N]',
  details: `TYPE is one of F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K_S, Q3_K_M, Q3_K_L, Q4_K_S, Q4_K_M,
Q5_K_S, Q5_K_M, Q6_K. The output is written through a temporary file: a failure leaves nothing behind.`,
  flags: {
    threads: int({ min: 1, max: 1024, defaultText: 'all cores', description: 'threads for quantizing' }),
  },
  positionals: { min: 3, max: 3, message: 'quantize needs: in.gguf out.gguf TYPE' },
  async run(v, [input, output, type]) {
    const { quantize: run, quantizationTypes } = await import('../models/quantize.js');
    const types = Object.keys(quantizationTypes);
    if (!Object.hasOwn(quantizationTypes, type)) {
      const hint = didYouMean(suggest(type, types));
      throw new UsageError(`unknown type ${JSON.stringify(type)}${hint || `: one of ${types.join(', ')}`}`, 'quantize');
    }
    const inSize = (await readModelHeader(input)).fileSize;
    const { setLogLevel } = await import('../base/log.js');
    setLogLevel('error');
    const line = progressLine(`quantizing to ${type}`, (done) => `${bytes(done)} written`);
    try {
      await run(input, output, type as keyof typeof quantizationTypes, {
        ...(v.threads ? { threads: v.threads } : {}),
        onProgress: (n) => line.update(Math.min(n, inSize), inSize),
      });
    } finally {
      line.end();
    }
    process.stdout.write(`${output}\n`);
  },
});

export const bench = command({
  name: 'bench',
  summary: 'the benchmarks (from a checkout of the repository)',
  synopsis: '[options]',
  details: `Runs npm run bench (bench/run.ts) with these flags: llama.cpp's llama-bench, node-llama-cpp and
llama-addon on the same models, then one table. bench/ is not in the npm package.`,
  flags: {
    model: strs({ placeholder: 'ID|PATH', description: 'a model of bench/models.ts, or a file', defaultText: 'every benchmark model' }),
    threads: int({ min: 1, max: 1024, defaultText: 'the physical cores', description: 'CPU threads' }),
    'gpu-layers': int({ min: 0, max: 100000, default: 0, description: 'layers to offload' }),
    prompt: int({ min: 1, max: 1 << 20, default: 512, description: 'prompt tokens' }),
    gen: int({ min: 1, max: 1 << 20, default: 128, description: 'generated tokens' }),
    reps: int({ min: 1, max: 1000, default: 5, description: 'repetitions' }),
    budget: int({ min: 1, max: 1_000_000, default: 60, description: 'seconds per system and model, at most' }),
    systems: str({ default: 'llama-bench,node-llama-cpp-defaults,node-llama-cpp,llama-addon', placeholder: 'LIST', description: 'what to run' }),
    scenario: str({ default: 'models,batched,speculative', placeholder: 'LIST', description: 'scenarios to run' }),
    json: bool({ description: 'print the results as JSON' }),
    'results-dir': str({ placeholder: 'DIR', defaultText: 'bench/results', description: 'where the results are written' }),
  },
  async run(_v, _p, argv) {
    const { existsSync } = await import('node:fs');
    const { spawnSync } = await import('node:child_process');
    const { dirname, join } = await import('node:path');
    const { fileURLToPath } = await import('node:url');
    const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
    const runner = join(root, 'bench', 'run.ts');
    if (!existsSync(runner)) throw new Error('the benchmarks come with a checkout of the repository (bench/ is not in the npm package)');
    const r = spawnSync(process.execPath, ['--import', 'tsx', runner, ...argv], { cwd: root, stdio: 'inherit' });
    process.exitCode = r.status ?? 1;
  },
});

export const rpcServer = command({
  name: 'rpc-server',
  summary: "lend this machine's CPU or GPU to models loaded elsewhere (llama.cpp's RPC server)",
  synopsis: '[--host 127.0.0.1] [--port 50052] [options]',
  details: `Models loaded elsewhere with --rpc (rpcServers) use it. It has no authentication: keep it on a trusted
network. SIGINT or SIGTERM ends it.`,
  flags: {
    host: str({ default: '127.0.0.1', placeholder: 'HOST', description: 'address to listen on; 0.0.0.0 for every interface' }),
    port: int({ min: 1, max: 65535, default: 50052, description: 'port to listen on' }),
    threads: int({ min: 1, max: 1024, defaultText: 'the physical cores', description: 'CPU threads' }),
    cache: str({ placeholder: 'DIR', description: 'keep received tensors in this folder, so a reload sends them once' }),
    gpu: gpuFlag,
  },
  async run(v) {
    const { native } = await import('../native/native.js');
    const { chooseDevices } = await import('../native/backends.js');
    const addon = native();
    const threads = v.threads ?? addon.systemInfo().defaultThreads;
    const { devices } = await chooseDevices(gpuOption(v.gpu), rpcServer.run);
    const served = devices.map((d) => d.name);
    if (v.host !== '127.0.0.1' && v.host !== 'localhost') {
      process.stderr.write('llama-addon: warning: the RPC server has no authentication; anyone who can reach this port can use it\n');
    }
    process.stderr.write(`llama-addon: rpc-server on ${v.host}:${v.port} serving ${served.length ? served.join(', ') : 'the CPU'} with ${threads} threads\n`);
    // Blocks this thread for the life of the process (the server runs here); SIGINT/SIGTERM end it.
    addon.rpcServe(`${v.host}:${v.port}`, v.cache ?? null, threads, served);
  },
});

export const backends = command({
  name: 'backends',
  summary: 'the compute backends and devices usable here',
  synopsis: '[--json]',
  flags: {
    json: bool({ description: 'print getBackendInfo() as JSON' }),
  },
  async run(v) {
    const { getBackendInfo } = await import('../native/system.js');
    const info = getBackendInfo();
    if (v.json) {
      process.stdout.write(JSON.stringify(info, null, 2) + '\n');
      return;
    }
    process.stdout.write(`backends   ${info.backends.join(', ')}\n`);
    const cpu = Object.keys(info.cpuFeatures).filter((k) => info.cpuFeatures[k] === '1');
    if (cpu.length) process.stdout.write(`cpu        ${cpu.join(' ')}\n`);
    for (const d of info.devices) {
      process.stdout.write(`device     ${d.name} (${d.backend}, ${d.type}): ${d.description}, ${bytes(d.memoryFree)} of ${bytes(d.memoryTotal)} free\n`);
    }
    for (const m of info.gpuModules) process.stdout.write(`gpu module ${m.backend}: ${m.state}${m.error ? ` (${m.error})` : ''} ${m.path}\n`);
  },
});

// npm run bench -- [--model ID|PATH ...] [--threads N] [--gpu-layers N] [--prompt 512] [--gen 128] [--reps 5] [--json] [--results-dir DIR]
//                  [--systems llama-bench,node-llama-cpp-defaults,node-llama-cpp,llama-addon] [--budget 60]
//                  [--compare bench/results/<earlier>.json]  (each figure's ratio against that run, printed at the end)
//                  [--scenario contention [--busy-cores 1] [--contention-models stories260k,llama-415m-q8_0]]
//                  (generation with cores kept busy by the host: fixed thread counts, 'auto' and llama-bench)
//                  [--scenario server [--server-models stories260k,llama-415m-q8_0] [--server-clients 1,4,16]
//                   [--server-gen 32] [--server-systems llama-server,llama-addon,llama-addon -t 1,...]
//                   [--server-turn-ms 1000] [--server-clients-ms 20000]]  (each server's turn at a client count
//                   lasts at least this long; passes of turns over all servers go on for this long, up to 8)
//                  (our server against llama-server: streamed two-turn chats from N clients; ours also at
//                  each fixed thread count, for 'auto' against the best of them under the server's own load)
// Runs llama.cpp's llama-bench, node-llama-cpp and llama-addon one after another on the same models, sizes
// and thread count, prints one table with ratios, and writes the results to bench/results/.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, hostname, totalmem } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { readGguf } from '../lib/gguf/index.js';
import { getSystemInfo } from '../lib/index.js';
import { own } from './children.js';
import { compareReports, type Report } from './compare.js';
import { runLlamaBench } from './llama-bench.js';
import { batchedScenario, contentionScenario, sessionsScenario, speculativeScenario, type BatchedResult, type ContentionResult, type SessionsResult, type SpeculativeResult } from './scenarios.js';
import { serverScenario, type ServerResult } from './server-scenario.js';
import { benchRoot, models, repoRoot } from './models.js';
import { stat, type Stat, type WorkerArgs, type WorkerResult } from './stats.js';

const { values } = parseArgs({
  options: {
    model: { type: 'string', multiple: true },
    threads: { type: 'string' },
    'gpu-layers': { type: 'string' },
    prompt: { type: 'string', default: '512' },
    gen: { type: 'string', default: '128' },
    reps: { type: 'string', default: '5' },
    budget: { type: 'string', default: '60' },
    systems: { type: 'string', default: 'llama-bench,node-llama-cpp-defaults,node-llama-cpp,llama-addon' },
    json: { type: 'boolean', default: false },
    'results-dir': { type: 'string' },
    scenario: { type: 'string', default: 'models,batched,speculative,sessions' },
    'sessions-model': { type: 'string' },
    compare: { type: 'string' },
    'busy-cores': { type: 'string', default: '1' },
    'contention-models': { type: 'string', default: 'stories260k,llama-415m-q8_0' },
    'server-models': { type: 'string', default: 'stories260k,llama-415m-q8_0' },
    'server-clients': { type: 'string', default: '1,4,16' },
    'server-gen': { type: 'string', default: '32' },
    'server-systems': { type: 'string' },
    'server-turn-ms': { type: 'string', default: '1000' },
    'server-clients-ms': { type: 'string', default: '20000' },
  },
});
const scenarios = values.scenario!.split(',');

const log = (m: string) => console.error(`[bench] ${m}`);
const sys = getSystemInfo();
const threads = values.threads ? Number(values.threads) : sys.defaultThreads;
const systems = values.systems!.split(',');
const selected = values.model?.length
  ? values.model.map((m) => models.find((x) => x.id === m) ?? { id: m, description: m, path: async () => m })
  : models;

function runWorker(script: string, args: WorkerArgs): Promise<WorkerResult> {
  return new Promise((resolve, reject) => {
    // Bundled (see scripts/device-bundle.mjs): plain .mjs beside the runner; otherwise TypeScript through tsx.
    const bundled = join(benchRoot, script.replace(/\.ts$/, '.mjs'));
    const entry = existsSync(bundled) ? [bundled] : ['--import', 'tsx', join(benchRoot, script)];
    const child = own(
      spawn(process.execPath, [...entry, JSON.stringify(args)], {
        cwd: repoRoot,
        stdio: ['ignore', 'pipe', 'pipe'],
      }),
    );
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('close', (code) => {
      const last = out.trim().split('\n').pop() ?? '';
      if (code === 0 && last.startsWith('{')) resolve(JSON.parse(last) as WorkerResult);
      else reject(new Error(`${script} failed (${code}): ${err.slice(-1500)}`));
    });
  });
}

/** Combines single-run results: each figure over the runs' values. */
function merge(rs: WorkerResult[]): WorkerResult {
  const over = (k: 'loadMs' | 'promptTokensPerSecond' | 'generateTokensPerSecond' | 'timeToFirstTokenMs' | 'eventLoopP99Ms' | 'jsonSchemaTokensPerSecond') =>
    stat(rs.flatMap((r) => (r[k] ? [r[k]!.median] : [])));
  const rss = rs.flatMap((r) => (r.peakRssMb === null ? [] : [r.peakRssMb]));
  return {
    ...rs[0],
    loadMs: over('loadMs'),
    promptTokensPerSecond: over('promptTokensPerSecond'),
    generateTokensPerSecond: over('generateTokensPerSecond'),
    timeToFirstTokenMs: over('timeToFirstTokenMs'),
    eventLoopP99Ms: over('eventLoopP99Ms'),
    ...(rs.some((r) => r.jsonSchemaTokensPerSecond) ? { jsonSchemaTokensPerSecond: over('jsonSchemaTokensPerSecond') } : {}),
    peakRssMb: rss.length ? Math.max(...rss) : null,
    notes: [...new Set(rs.flatMap((r) => r.notes))],
  };
}

interface ModelResult {
  id: string;
  description: string;
  results: WorkerResult[];
  ratios: Record<string, number | null>;
}

const all: ModelResult[] = [];
for (const m of scenarios.includes('models') ? selected : []) {
  const path = await m.path();
  const header = await readGguf(path);
  const tokens = header.metadata['tokenizer.ggml.tokens'] as { length: number } | unknown[];
  const bos = header.metadata['tokenizer.ggml.bos_token_id'];
  const base: WorkerArgs = {
    model: path,
    prompt: Number(values.prompt),
    gen: Number(values.gen),
    reps: Number(values.reps),
    budgetSeconds: Number(values.budget),
    vocabSize: (tokens as { length: number }).length,
    bos: typeof bos === 'number' ? bos : null,
    ...(values['gpu-layers'] !== undefined ? { gpuLayers: Number(values['gpu-layers']) } : {}),
  };
  // Systems take turns, one run each per round, so that drift in the machine's speed (it is shared and
  // noisy) hits all of them alike. node-llama-cpp at its defaults is so slow here that it runs one round only.
  const runs = new Map<string, WorkerResult[]>();
  for (let round = 0; round < base.reps; round++) {
    for (const s of systems) {
      if (s === 'node-llama-cpp-defaults' && round > 0) continue;
      log(`${m.id}: ${s} (round ${round + 1} of ${base.reps})`);
      const one = { ...base, reps: 1 };
      try {
        let r: WorkerResult;
        if (s === 'llama-bench') r = await runLlamaBench({ ...one, threads });
        else if (s === 'node-llama-cpp-defaults') r = { ...(await runWorker('nlc-worker.ts', one)), system: 'node-llama-cpp (defaults)' };
        else if (s === 'node-llama-cpp') r = { ...(await runWorker('nlc-worker.ts', { ...one, threads })), system: `node-llama-cpp (${threads} threads)` };
        else if (s === 'llama-addon') r = await runWorker('addon-worker.ts', one);
        else throw new Error(`unknown system ${s}`);
        runs.set(s, [...(runs.get(s) ?? []), r]);
      } catch (e) {
        log(`${m.id}: ${s} failed: ${(e as Error).message}`);
      }
    }
  }
  const results: WorkerResult[] = [...runs.values()].map(merge);
  const get = (name: string) => results.find((r) => r.system.startsWith(name));
  const ratio = (a: Stat | null | undefined, b: Stat | null | undefined) => (a && b ? a.median / b.median : null);
  const addon = get('llama-addon');
  const lb = get('llama-bench');
  const nlcDefault = get('node-llama-cpp (defaults)');
  const nlc = results.find((r) => r.system === `node-llama-cpp (${threads} threads)`);
  all.push({
    id: m.id,
    description: m.description,
    results,
    ratios: {
      'pp addon/llama-bench': ratio(addon?.promptTokensPerSecond, lb?.promptTokensPerSecond),
      'tg addon/llama-bench': ratio(addon?.generateTokensPerSecond, lb?.generateTokensPerSecond),
      'tg addon/node-llama-cpp (defaults)': ratio(addon?.generateTokensPerSecond, nlcDefault?.generateTokensPerSecond),
      [`tg addon/node-llama-cpp (${threads} threads)`]: ratio(addon?.generateTokensPerSecond, nlc?.generateTokensPerSecond),
      'pp addon/node-llama-cpp (defaults)': ratio(addon?.promptTokensPerSecond, nlcDefault?.promptTokensPerSecond),
      [`pp addon/node-llama-cpp (${threads} threads)`]: ratio(addon?.promptTokensPerSecond, nlc?.promptTokensPerSecond),
      'tg addon JSON schema/plain': ratio(addon?.jsonSchemaTokensPerSecond, addon?.generateTokensPerSecond),
    },
  });
}

function gpuName(): string | null {
  const r = spawnSync('nvidia-smi', ['--query-gpu=name,memory.total', '--format=csv,noheader'], { encoding: 'utf8' });
  return r.status === 0 && r.stdout.trim() ? r.stdout.trim().split('\n').join('; ') : null;
}

const machine = {
  host: hostname(),
  gpu: gpuName(),
  cpu: cpus()[0]?.model ?? 'unknown',
  logicalCpus: cpus().length,
  physicalCores: sys.physicalCores,
  memoryGiB: Math.round(totalmem() / 2 ** 30),
  node: process.version,
  llamaCpp: sys.llamaCppVersion,
  cpuFeatures: sys.cpuFeatures.trim(),
};
let batched: BatchedResult | null = null;
let speculative: SpeculativeResult | null = null;
let sessions: SessionsResult | null = null;
let contention: ContentionResult | null = null;
let server: ServerResult | null = null;
if (scenarios.includes('batched')) {
  try {
    batched = await batchedScenario({ threads, reps: Number(values.reps), parallel: [1, 8], prompt: 128, gen: 128 });
  } catch (e) {
    log(`batched scenario failed: ${(e as Error).message}`);
  }
}
if (scenarios.includes('speculative')) {
  try {
    speculative = await speculativeScenario({ threads, reps: Number(values.reps), gen: 256 });
  } catch (e) {
    log(`speculative scenario failed: ${(e as Error).message}`);
  }
}

if (scenarios.includes('sessions')) {
  try {
    sessions = await sessionsScenario({ threads, modelId: values['sessions-model'] ?? 'llama-415m-q8_0', chats: 64, turns: 4, sequences: 4, prompt: 32, gen: 8 });
  } catch (e) {
    log(`sessions scenario failed: ${(e as Error).message}`);
  }
}

if (scenarios.includes('contention')) {
  try {
    contention = await contentionScenario({
      threads, busyCores: Number(values['busy-cores']), reps: Math.min(Number(values.reps), 3), prompt: 128, gen: Number(values.gen), seconds: 10,
      modelIds: values['contention-models']!.split(','),
    });
  } catch (e) {
    log(`contention scenario failed: ${(e as Error).message}`);
  }
}

if (scenarios.includes('server')) {
  try {
    server = await serverScenario({
      modelIds: values['server-models']!.split(','), clients: values['server-clients']!.split(',').map(Number), gen: Number(values['server-gen']),
      reps: Math.min(Number(values.reps), 3), threads: values.threads ? threads : null, ctxPerSlot: 512,
      systems: values['server-systems']?.split(',') ?? ['llama-server', 'llama-addon', ...Array.from({ length: sys.physicalCores }, (_, i) => `llama-addon -t ${i + 1}`)],
      minTurnMs: Number(values['server-turn-ms']),
      minClientsMs: Number(values['server-clients-ms']),
    });
  } catch (e) {
    log(`server scenario failed: ${(e as Error).message}`);
  }
}

const report = {
  date: new Date().toISOString(),
  machine,
  settings: { threads, gpuLayers: values['gpu-layers'] !== undefined ? Number(values['gpu-layers']) : 0, prompt: Number(values.prompt), gen: Number(values.gen), reps: Number(values.reps) },
  models: all,
  batched,
  speculative,
  sessions,
  contention,
  server,
};
const resultsDir = values['results-dir'] ?? join(benchRoot, 'results');
mkdirSync(resultsDir, { recursive: true });
const stamp = report.date.replace(/[:.]/g, '-');
writeFileSync(join(resultsDir, `${stamp}.json`), JSON.stringify(report, null, 2) + '\n');
writeFileSync(join(resultsDir, 'latest.json'), JSON.stringify(report, null, 2) + '\n');

if (values.json) {
  console.log(JSON.stringify(report, null, 2));
} else {
  const f = (s: Stat | null | undefined, digits = 1) =>
    s ? `${s.median.toFixed(digits)} (${s.min.toFixed(digits)}–${s.max.toFixed(digits)})` : '—';
  const lines: string[] = [];
  lines.push(`Machine: ${machine.cpu}${machine.gpu ? ` + ${machine.gpu}` : ''}, ${machine.physicalCores} cores, ${machine.memoryGiB} GiB, Node ${machine.node}; threads ${threads}; GPU layers ${report.settings.gpuLayers}; pp ${values.prompt} tokens, tg ${values.gen} tokens; median (min–max) of ${values.reps} runs`);
  if (all.length) {
    lines.push('');
    lines.push('| model | system | threads | load ms | pp tok/s | tg tok/s | tg tok/s, JSON schema | TTFT ms | event loop p99 ms | peak RSS MB |');
    lines.push('|---|---|---|---|---|---|---|---|---|---|');
    for (const m of all) {
      for (const r of m.results) {
        lines.push(`| ${m.id} | ${r.system} | ${r.threads ?? '—'} | ${f(r.loadMs, 0)} | ${f(r.promptTokensPerSecond)} | ${f(r.generateTokensPerSecond)} | ${f(r.jsonSchemaTokensPerSecond)} | ${f(r.timeToFirstTokenMs, 0)} | ${f(r.eventLoopP99Ms, 1)} | ${r.peakRssMb?.toFixed(0) ?? '—'} |`);
      }
    }
    lines.push('');
    lines.push('| model | ' + Object.keys(all[0]?.ratios ?? {}).join(' | ') + ' |');
    lines.push('|---|' + Object.keys(all[0]?.ratios ?? {}).map(() => '---').join('|') + '|');
    for (const m of all) lines.push(`| ${m.id} | ` + Object.values(m.ratios).map((v) => (v === null ? '—' : v.toFixed(3))).join(' | ') + ' |');
  }
  if (batched) {
    lines.push('', `Continuous batching: ${batched.model}, ${batched.prompt}-token prompts, ${batched.gen} tokens generated per sequence; aggregate generation tok/s (llama-batched-bench's S_TG)`, '');
    lines.push('| sequences | llama-batched-bench | llama-addon | addon/llama-batched-bench |', '|---|---|---|---|');
    for (const r of batched.rows) lines.push(`| ${r.sequences} | ${f(r.reference)} | ${f(r.addon)} | ${r.ratio?.toFixed(3) ?? '—'} |`);
  }
  if (speculative) {
    lines.push('', `Speculative decoding: ${speculative.target} (target) with ${speculative.draft} (draft), greedy, ${speculative.gen} tokens`, '');
    lines.push('| mode | tg tok/s | speed-up | acceptance rate |', '|---|---|---|---|');
    for (const r of speculative.rows) lines.push(`| ${r.mode} | ${f(r.tokensPerSecond)} | ${r.speedup?.toFixed(3) ?? '—'} | ${r.acceptance ? f(r.acceptance, 3) : '—'} |`);
  }
  if (sessions) {
    lines.push('', `Sessions: ${sessions.chats} conversations × ${sessions.turns} turns, interleaved, on ${sessions.sequences} resident sequences (${sessions.model}; ${sessions.prompt} new tokens and ${sessions.gen} generated per turn); turns 2–${sessions.turns}`, '');
    lines.push('| caches | prompt tokens from cache | TTFT ms median (min–max) | TTFT ms p90 | total s | host memory MiB |', '|---|---|---|---|---|---|');
    for (const r of sessions.rows) lines.push(`| ${r.mode === 'kept' ? 'kept in host memory' : 'none (every turn decoded again)'} | ${r.hitRate === null ? '—' : (r.hitRate * 100).toFixed(1) + '%'} | ${f(r.ttft)} | ${r.ttftP90?.toFixed(1) ?? '—'} | ${r.seconds?.toFixed(1) ?? '—'} | ${r.savedMiB?.toFixed(1) ?? '—'} |`);
  }
  if (contention) {
    const counts = Array.from({ length: contention.threads }, (_, i) => i + 1);
    lines.push('', `Contention: one session, greedy, ${contention.prompt}-token prompt, up to ${contention.gen} tokens; idle, and with ${contention.busyCores} core(s) kept busy by a JavaScript loop in another process; tg tok/s`, '');
    lines.push(`| model | host | llama-bench -t ${contention.threads} | ${counts.map((n) => `threads ${n}`).join(' | ')} | 'auto' | auto / best fixed | auto / llama-bench | auto's threads at the end |`);
    lines.push('|---|---|---|' + counts.map(() => '---|').join('') + '---|---|---|---|');
    for (const r of contention.rows) {
      lines.push(`| ${r.model} | ${r.condition} | ${f(r.llamaBench)} | ${counts.map((n) => f(r.fixed[n]?.tg)).join(' | ')} | ${f(r.auto.tg)} | ${r.autoVsBestFixed?.toFixed(3) ?? '—'} | ${r.autoVsLlamaBench?.toFixed(3) ?? '—'} | ${r.auto.threadsInUse.join(', ')} |`);
    }
  }
  if (server) {
    // How many turns each row's figures rest on: a row of one turn can read an absurd ratio (a spell of
    // outside load during one server's only turn) with nothing else to say so.
    const turnCounts = (r: ServerResult) => {
      const ns = r.rows.map((x) => x.requestsPerSecond?.n ?? 0);
      const lo = Math.min(...ns);
      const hi = Math.max(...ns);
      return lo === hi ? `${lo}` : `${lo}–${hi}`;
    };
    lines.push('', `Server: streamed chat completions, two-turn conversations (the second repeats the first and its answer), ${server.gen} tokens per answer, greedy; ${server.slots} slots of ${server.ctxPerSlot} tokens; threads ${server.threads ?? 'each server\'s default (ours: \'auto\'; llama-server: the physical cores)'}; ${server.minClientsMs ? `median (min–max) of all turns (${turnCounts(server)} a row), in ${server.reps} rounds; at each client count the servers take turns, each at least ${server.minTurnMs} ms, in passes over them all that go on for ${server.minClientsMs} ms (up to 8)` : `median (min–max) of ${server.reps} rounds${server.minTurnMs ? `; servers take turns at each client count, each turn at least ${server.minTurnMs} ms` : ''}`}`, '');
    lines.push('| model | clients | server | req/s | tok/s | TTFT p50 ms | TTFT p99 ms | turn 2 TTFT p50 ms | turn 2 TTFT p99 ms | event loop p99 / max ms |', '|---|---|---|---|---|---|---|---|---|---|');
    for (const r of server.rows) {
      lines.push(`| ${r.model} | ${r.clients} | ${r.system} | ${f(r.requestsPerSecond, 2)} | ${f(r.tokensPerSecond)} | ${f(r.ttftP50, 0)} | ${f(r.ttftP99, 0)} | ${f(r.turn2TtftP50, 0)} | ${f(r.turn2TtftP99, 0)} | ${r.eventLoopP99Ms ? `${r.eventLoopP99Ms.median.toFixed(1)} / ${r.eventLoopMaxMs?.median.toFixed(1) ?? '—'}` : '—'} |`);
    }
    lines.push('', '| model | clients | req/s ours / llama-server | paired by pass | tok/s | TTFT p50 (below 1: ours sooner) | TTFT p99 | turn 2 TTFT p50 |', '|---|---|---|---|---|---|---|---|');
    const x = (v: number | null | undefined) => (v === null || v === undefined ? '—' : v.toFixed(3));
    for (const r of server.ratios) lines.push(`| ${r.model} | ${r.clients} | ${x(r.requestsPerSecond)} | ${x(r.requestsPerSecondPaired)} | ${x(r.tokensPerSecond)} | ${x(r.ttftP50)} | ${x(r.ttftP99)} | ${x(r.turn2TtftP50)} |`);
    if (server.autoVsBestFixed.some((r) => r.ratio !== null)) {
      lines.push('', "| model | clients | ours 'auto' / best fixed count, tok/s | paired by pass | best fixed |", '|---|---|---|---|---|');
      for (const r of server.autoVsBestFixed) lines.push(`| ${r.model} | ${r.clients} | ${x(r.ratio)} | ${x(r.paired)} | ${r.best ?? '—'} |`);
    }
    if (server.ratios.some((r) => r.requestsPerSecondPaired != null)) {
      lines.push('', 'Paired by pass: the median over the passes of the ratio of the two turns in the same pass (each pass gives every server one turn, one after another).');
    }
  }
  const notes = all.flatMap((m) => m.results.flatMap((r) => r.notes.map((n) => `${m.id} / ${r.system}: ${n}`)));
  if (notes.length) lines.push('', 'Notes:', ...[...new Set(notes)].map((n) => `- ${n}`));
  console.log(lines.join('\n'));
}

// Regressions are visible: each figure against an earlier run's, printed after the report.
if (values.compare) {
  const earlier = JSON.parse(readFileSync(values.compare, 'utf8')) as Report;
  console.log('\n' + compareReports(earlier, report as unknown as Report, values.compare));
}

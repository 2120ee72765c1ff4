// The server scenario: our OpenAI-compatible server (`llama-addon serve`) against llama.cpp's llama-server,
// built from the same tree and objects as the addon. Each serves one model with the same slots, context
// and chat template (ChatML); N clients (1, 4, 16) hold two-turn conversations with streamed chat
// completions of M tokens each (greedy; the end-of-sequence token is banned through logit_bias, so every
// answer has M tokens). The second turn repeats the first turn and its answer: a server that keeps the
// conversation's cache decodes only the new message. Each round starts every server once; for each client
// count the servers then take turns, the others paused (SIGSTOP) meanwhile, so that a slow spell of this
// shared machine falls on neighbouring turns alike: each turn runs for at least a minimum time, and passes
// of turns over all servers go on for a minimum time too (several for a small model's short turns).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync } from 'node:fs';
import { request } from 'node:http';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readGguf } from '../lib/gguf/index.js';
import { own } from './children.js';
import { models, repoRoot } from './models.js';
import { stat, type Stat } from './stats.js';

const buildDir = join(repoRoot, 'build');
const log = (m: string) => console.error(`[bench] ${m}`);

export function llamaServerPath(): string {
  if (process.env.LLAMA_SERVER_BIN) return process.env.LLAMA_SERVER_BIN;
  const p = join(buildDir, 'Release', 'llama-server');
  if (existsSync(p)) return p;
  if (!existsSync(join(buildDir, 'build.ninja')) && !existsSync(join(buildDir, 'Makefile'))) {
    throw new Error(`no configured build in ${buildDir}: run \`npm run build\` first`);
  }
  log('building llama-server from the addon build tree (first use only; several minutes)');
  const r = spawnSync('cmake', ['--build', buildDir, '--target', 'llama-server', '--parallel'], { stdio: ['ignore', 2, 2] });
  if (r.status !== 0 || !existsSync(p)) throw new Error('building llama-server failed');
  return p;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

interface Running {
  url: string;
  child: ChildProcess;
  /** Stops the process (SIGSTOP) while the other servers take their turns: it takes no CPU then. */
  pause(): void;
  /** Continues it, and waits until its timers (our event-loop monitor's) have caught up. */
  resume(): Promise<void>;
  stop(): Promise<void>;
}

/**
 * 'llama-server', with options of its own after the name ('llama-server -fa off'), or 'llama-addon' (its
 * default threads, 'auto'), with ' -t N' for a fixed count, ' --kv-unified' for one KV cache of all
 * slots' cells, and then other options of `llama-addon serve` ('llama-addon --batch-size 512'). Ratios are
 * ours at our defaults against llama-server at its own.
 */
export type ServerSystem = string;

async function start(system: ServerSystem, modelPath: string, o: { slots: number; ctxPerSlot: number; threads: number | null }, logFile: string): Promise<Running> {
  const port = await freePort();
  let cmd: string;
  let argv: string[];
  if (system === 'llama-server' || system.startsWith('llama-server ')) {
    cmd = llamaServerPath();
    argv = [
      '-m', modelPath, '--host', '127.0.0.1', '--port', String(port), '-np', String(o.slots), '-c', String(o.slots * o.ctxPerSlot),
      '--chat-template', 'chatml', '--no-webui',
      ...(o.threads ? ['-t', String(o.threads), '-tb', String(o.threads)] : []),
      // 'llama-server -fa off' and the like: its own options after the name.
      ...system.split(' ').slice(1).filter(Boolean),
    ];
  } else {
    const m = /^llama-addon(?: -t (\d+))?( --kv-unified)?((?: --[a-z-]+ \S+)*)$/.exec(system);
    if (!m) throw new Error(`unknown server system ${system}`);
    const fixed = m[1];
    const unified = m[2] !== undefined;
    // 'llama-addon --batch-size 512' and the like: options of `llama-addon serve` after the name.
    const own = m[3]!.split(' ').filter(Boolean);
    const threads = fixed ? Number(fixed) : o.threads;
    cmd = process.execPath;
    argv = [
      '--import', 'tsx', join(repoRoot, 'lib', 'cli.ts'), 'serve', '--model', `m=${modelPath}`, '--port', String(port),
      // With one KV cache for all requests, --ctx-size is its cells: as many as the slots' together.
      '--parallel', String(o.slots), '--ctx-size', String(unified ? o.slots * o.ctxPerSlot : o.ctxPerSlot), '--conversations', '64',
      ...(unified ? ['--kv-unified'] : []),
      ...(threads ? ['--threads', String(threads)] : []),
      ...own,
    ];
  }
  const out = createWriteStream(logFile, { flags: 'a' });
  out.write(`\n==== ${new Date().toISOString()} ${system}\n`);
  // (A paused server does not act on a Ctrl-C's SIGINT: bench/children.ts ends it with the bench.)
  const child = own(spawn(cmd, argv, { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] }));
  child.stdout!.pipe(out);
  child.stderr!.pipe(out);
  const url = `http://127.0.0.1:${port}`;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const deadline = Date.now() + 120_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${system} exited (${child.exitCode}) before it was ready; see ${logFile}`);
    const ok = await fetch(`${url}/health`).then((r) => r.status === 200, () => false);
    if (ok) break;
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`${system} was not ready in 120 s; see ${logFile}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    url,
    child,
    pause() {
      child.kill('SIGSTOP');
    },
    async resume() {
      child.kill('SIGCONT');
      await new Promise((r) => setTimeout(r, 100));
    },
    async stop() {
      child.kill('SIGCONT');
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 15_000);
      await exited;
      clearTimeout(t);
    },
  };
}

interface Message {
  role: 'user' | 'assistant';
  content: string;
}

interface Answer {
  ttftMs: number;
  tokens: number;
  text: string;
}

/**
 * One streamed chat completion: the time to its first content, its tokens (usage) and text. Each request
 * has its own connection (node:http without an agent), for both servers alike: llama-server closes a
 * kept-alive connection after a few requests, and fetch's pool reused some as they closed.
 */
function complete(url: string, messages: Message[], maxTokens: number, eos: number): Promise<Answer> {
  const body = JSON.stringify({
    model: 'm', messages, max_tokens: maxTokens, temperature: 0, stream: true, stream_options: { include_usage: true },
    logit_bias: { [eos]: -100 },
  });
  const t0 = performance.now();
  return new Promise<Answer>((resolve, reject) => {
    const req = request(`${url}/v1/chat/completions`, { method: 'POST', agent: false, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } }, (res) => {
      if (res.statusCode !== 200) {
        let text = '';
        res.on('data', (d: Buffer) => (text += d));
        res.on('end', () => reject(new Error(`HTTP ${res.statusCode}: ${text}`)));
        return;
      }
      let ttft = -1;
      let text = '';
      let usage: number | null = null;
      let deltas = 0;
      let buf = '';
      res.setEncoding('utf8');
      res.on('data', (part: string) => {
        buf += part;
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          if (!line.startsWith('data:')) continue;
          const data = line.slice(5).trim();
          if (data === '[DONE]') continue;
          const j = JSON.parse(data) as { choices?: Array<{ delta?: { content?: string | null } }>; usage?: { completion_tokens?: number } | null };
          const c = j.choices?.[0]?.delta?.content;
          if (c) {
            if (ttft < 0) ttft = performance.now() - t0;
            text += c;
            deltas++;
          }
          if (j.usage?.completion_tokens !== undefined) usage = j.usage.completion_tokens;
        }
      });
      res.on('end', () => resolve({ ttftMs: ttft < 0 ? performance.now() - t0 : ttft, tokens: usage ?? deltas, text }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

async function eventLoopDelay(url: string): Promise<{ p99: number; max: number } | null> {
  const text = await fetch(`${url}/metrics`).then((r) => (r.ok ? r.text() : ''), () => '');
  const q = (k: string) => Number(new RegExp(`llama_event_loop_delay_seconds\\{quantile="${k.replace('.', '\\.')}"\\} ([0-9.e+-]+)`).exec(text)?.[1] ?? NaN);
  const p99 = q('0.99');
  const max = q('1');
  return Number.isFinite(p99) ? { p99: p99 * 1000, max: max * 1000 } : null;
}

const percentile = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]! : NaN;
};

interface RunFigures {
  requestsPerSecond: number;
  tokensPerSecond: number;
  ttftP50: number;
  ttftP99: number;
  turn2TtftP50: number;
  turn2TtftP99: number;
  eventLoopP99Ms: number | null;
  eventLoopMaxMs: number | null;
}

/**
 * N clients, each holding two-turn conversations one after another: at least `conversations` each, and new
 * ones until `minMs` have passed since the first began.
 */
async function load(url: string, clients: number, conversations: number, o: { gen: number; eos: number; filler: string; tag: string; minMs: number }): Promise<RunFigures> {
  await eventLoopDelay(url); // starts the delay's window over (ours; llama-server has none)
  const turn1: number[] = [];
  const turn2: number[] = [];
  let tokens = 0;
  let requests = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: clients }, async (_, c) => {
      for (let k = 0; k < conversations || performance.now() - t0 < o.minMs; k++) {
        const first: Message = { role: 'user', content: `${o.tag} conversation ${c}-${k}. ${o.filler}` };
        const a = await complete(url, [first], o.gen, o.eos);
        const b = await complete(url, [first, { role: 'assistant', content: a.text }, { role: 'user', content: 'What happened next?' }], o.gen, o.eos);
        turn1.push(a.ttftMs);
        turn2.push(b.ttftMs);
        tokens += a.tokens + b.tokens;
        requests += 2;
      }
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  const loop = await eventLoopDelay(url);
  return {
    requestsPerSecond: requests / seconds,
    tokensPerSecond: tokens / seconds,
    ttftP50: percentile(turn1, 50),
    ttftP99: percentile(turn1, 99),
    turn2TtftP50: percentile(turn2, 50),
    turn2TtftP99: percentile(turn2, 99),
    eventLoopP99Ms: loop?.p99 ?? null,
    eventLoopMaxMs: loop?.max ?? null,
  };
}

export interface ServerRow {
  model: string;
  clients: number;
  system: ServerSystem;
  requestsPerSecond: Stat | null;
  tokensPerSecond: Stat | null;
  ttftP50: Stat | null;
  ttftP99: Stat | null;
  turn2TtftP50: Stat | null;
  turn2TtftP99: Stat | null;
  eventLoopP99Ms: Stat | null;
  eventLoopMaxMs: Stat | null;
  /** Each turn's req/s and tok/s, in the order run (absent in results before it). */
  turns?: Array<{ requestsPerSecond: number; tokensPerSecond: number }>;
}

export interface ServerResult {
  gen: number;
  slots: number;
  ctxPerSlot: number;
  threads: number | null;
  reps: number;
  /** Each server's turn at a client count lasted at least this long (ms); absent in results before it. */
  minTurnMs?: number;
  /** Passes of turns over all servers at a client count went on until they had taken this long (ms, at most 8). */
  minClientsMs?: number;
  rows: ServerRow[];
  /** Per model and client count: ours (at its defaults) / llama-server for each figure (above 1 is better for rates, worse for times). */
  ratios: Array<{
    model: string; clients: number; requestsPerSecond: number | null; tokensPerSecond: number | null; ttftP50: number | null; ttftP99: number | null; turn2TtftP50: number | null;
    /** The median over the turns of ours / llama-server in the same pass (absent in results before it). */
    requestsPerSecondPaired?: number | null;
  }>;
  /** Per model and client count: ours at 'auto' / ours at the best fixed thread count, tok/s (the server's own HTTP load is the host's work). */
  autoVsBestFixed: Array<{
    model: string; clients: number; ratio: number | null; best: string | null;
    /** The median over the turns of 'auto' / the best fixed count in the same pass (absent in results before it). */
    paired?: number | null;
  }>;
}

export async function serverScenario(o: { modelIds: string[]; clients: number[]; gen: number; reps: number; threads: number | null; ctxPerSlot: number; systems: ServerSystem[]; minTurnMs: number; minClientsMs: number }): Promise<ServerResult> {
  const slots = Math.max(...o.clients);
  const logDir = join(tmpdir(), 'llama-addon-bench-server');
  mkdirSync(logDir, { recursive: true });
  const figures = new Map<string, RunFigures[]>();
  const key = (model: string, clients: number, system: string) => `${model}\0${clients}\0${system}`;
  const systems = o.systems;
  for (const id of o.modelIds) {
    const m = models.find((x) => x.id === id);
    if (!m) throw new Error(`unknown model ${id}`);
    const path = await m.path();
    const eos = Number((await readGguf(path)).metadata['tokenizer.ggml.eos_token_id'] ?? 2);
    // About 200 tokens of first message: the second turn's cache reuse shows.
    const filler = 'Once upon a time there was a little girl named Lily who loved to play in the big green park. '.repeat(10).trim();
    let passes = 0;
    for (let round = 0; round < o.reps; round++) {
      log(`server: ${id}, round ${round + 1} of ${o.reps}`);
      const running: Array<{ system: ServerSystem; server: Running }> = [];
      try {
        for (const system of systems) {
          const server = await start(system, path, { slots, ctxPerSlot: o.ctxPerSlot, threads: o.threads }, join(logDir, `${system}.log`));
          running.push({ system, server });
          await complete(server.url, [{ role: 'user', content: 'Warm up.' }], 4, eos);
          server.pause();
        }
        for (const clients of o.clients) {
          const conversations = Math.max(1, Math.ceil(4 / clients));
          // Passes over all servers, until they have taken minClientsMs together (at most 8): a small model's
          // turns are short, and more of them put each server in the machine's fast and slow spells alike.
          const began = performance.now();
          for (let pass = 0; pass < 8 && (pass === 0 || performance.now() - began < o.minClientsMs); pass++) {
            // The order alternates from one pass to the next.
            for (const { system, server } of passes++ % 2 === 0 ? running : [...running].reverse()) {
              await server.resume();
              // Each pass's conversations are new to the server (no cache from an earlier one).
              const f = await load(server.url, clients, conversations, { gen: o.gen, eos, filler, tag: `r${round}n${clients}p${pass}`, minMs: o.minTurnMs });
              server.pause();
              log(`  ${clients} clients, ${system}: ${f.requestsPerSecond.toFixed(2)} req/s, ${f.tokensPerSecond.toFixed(1)} tok/s, TTFT p50 ${f.ttftP50.toFixed(0)} ms, turn 2 p50 ${f.turn2TtftP50.toFixed(0)} ms`);
              figures.set(key(id, clients, system), [...(figures.get(key(id, clients, system)) ?? []), f]);
            }
          }
        }
      } finally {
        for (const { server } of running) await server.stop();
      }
    }
  }
  const rows: ServerRow[] = [];
  const ratios: ServerResult['ratios'] = [];
  const autoVsBestFixed: ServerResult['autoVsBestFixed'] = [];
  for (const id of o.modelIds) {
    for (const clients of o.clients) {
      const of = (system: ServerSystem): ServerRow => {
        const fs = figures.get(key(id, clients, system)) ?? [];
        const over = (k: keyof RunFigures) => stat(fs.flatMap((f) => (f[k] === null ? [] : [f[k] as number])));
        return {
          model: id, clients, system,
          requestsPerSecond: over('requestsPerSecond'), tokensPerSecond: over('tokensPerSecond'),
          ttftP50: over('ttftP50'), ttftP99: over('ttftP99'), turn2TtftP50: over('turn2TtftP50'), turn2TtftP99: over('turn2TtftP99'),
          eventLoopP99Ms: over('eventLoopP99Ms'), eventLoopMaxMs: over('eventLoopMaxMs'),
          turns: fs.map((f) => ({ requestsPerSecond: f.requestsPerSecond, tokensPerSecond: f.tokensPerSecond })),
        };
      };
      const all = systems.map(of);
      rows.push(...all);
      const ref = all.find((r) => r.system === 'llama-server');
      const ours = all.find((r) => r.system === 'llama-addon');
      const r = (k: 'requestsPerSecond' | 'tokensPerSecond' | 'ttftP50' | 'ttftP99' | 'turn2TtftP50') => (ref?.[k] && ours?.[k] ? ours[k]!.median / ref[k]!.median : null);
      // Paired: each pass gave every server one turn, next to each other in time, so the ratio of two servers'
      // turns in the same pass leaves out the machine's drift between passes (this shared machine runs 2
      // threads at two speeds, 35 or 60 ms for the same 327-token step, for tens of seconds at a time).
      const paired = (a: ServerSystem | undefined, b: ServerSystem | undefined, k: 'requestsPerSecond' | 'tokensPerSecond') => {
        const fa = a ? figures.get(key(id, clients, a)) ?? [] : [];
        const fb = b ? figures.get(key(id, clients, b)) ?? [] : [];
        if (!fa.length || fa.length !== fb.length) return null;
        return stat(fa.map((f, i) => f[k] / fb[i]![k]))?.median ?? null;
      };
      ratios.push({
        model: id, clients, requestsPerSecond: r('requestsPerSecond'), tokensPerSecond: r('tokensPerSecond'), ttftP50: r('ttftP50'), ttftP99: r('ttftP99'), turn2TtftP50: r('turn2TtftP50'),
        requestsPerSecondPaired: paired(ours?.system, ref?.system, 'requestsPerSecond'),
      });
      const fixed = all.filter((x) => x.system.startsWith('llama-addon -t') && x.tokensPerSecond);
      const best = fixed.sort((a, b) => b.tokensPerSecond!.median - a.tokensPerSecond!.median)[0];
      autoVsBestFixed.push({
        model: id, clients, ratio: best && ours?.tokensPerSecond ? ours.tokensPerSecond.median / best.tokensPerSecond!.median : null, best: best?.system ?? null,
        paired: paired(ours?.system, best?.system, 'tokensPerSecond'),
      });
    }
  }
  return { gen: o.gen, slots, ctxPerSlot: o.ctxPerSlot, threads: o.threads, reps: o.reps, minTurnMs: o.minTurnMs, minClientsMs: o.minClientsMs, rows, ratios, autoVsBestFixed };
}

#!/usr/bin/env node
// The package under every supported runtime (issue 14 §1): installs Node.js 22 and 24 (npm's `node-<os>-<cpu>`
// package), Bun (`bun`) and Deno (`deno`) from npm into a folder outside the repository, then runs under each
//   (a) the README's examples, extracted by scripts/readme-examples.mjs as test/readme.test.ts does, and
//   (b) a smoke test: load stories260k, tokenize, generate 8 tokens greedily (the same text on every runtime),
//       errors that are LlamaErrors with their code, dispose, and `await using` where the runtime has it.
// Nothing but npm packages is downloaded. It runs this checkout's build (build/Release and dist/).
//
//   node scripts/runtime-smoke.mjs [--dir DIR] [--runtimes node22,node24,bun,deno] [--no-readme] [--no-smoke]
//                                  [--no-install] [--ts strip]
//
// --dir: where the runtimes are installed (default: $TMPDIR/llama-addon-runtimes; kept between runs, a runtime
// already there is not installed again). --no-install: use only what is there. --ts strip: run TypeScript
// examples as esbuild's JavaScript everywhere (by default a runtime that runs .ts files runs them itself).
// Exits 1 when anything fails (or a runtime cannot be installed), and prints a table of the results.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import {
  defaultSharedModels,
  describeProgram,
  DENO_FLAGS,
  prepareRunDir,
  readmePrograms,
  runProgram,
  writePrograms,
} from './readme-examples.mjs';

const { values: opts } = parseArgs({
  options: {
    dir: { type: 'string', default: join(tmpdir(), 'llama-addon-runtimes') },
    runtimes: { type: 'string', default: 'node22,node24,bun,deno' },
    'no-readme': { type: 'boolean', default: false },
    'no-smoke': { type: 'boolean', default: false },
    'no-install': { type: 'boolean', default: false },
    ts: { type: 'string', default: 'native' },
    'shared-models': { type: 'string', default: defaultSharedModels },
    timeout: { type: 'string', default: '240' },
  },
});
const started = Date.now();
const log = (s) => console.log(`[runtimes] ${s}`);

/** What each runtime is installed from, and where its executable lies in the installed folder. */
const nodePackage = `node-${process.platform}-${process.arch}`;
const RUNTIMES = {
  node22: { kind: 'node', spec: `${nodePackage}@22`, exes: [`node_modules/${nodePackage}/bin/node`] },
  node24: { kind: 'node', spec: `${nodePackage}@24`, exes: [`node_modules/${nodePackage}/bin/node`] },
  // bun's postinstall moves its platform package's binary to node_modules/bun/bin/bun.exe; without the
  // script (npm 11 may hold install scripts back) the binary stays in the platform package.
  bun: {
    kind: 'bun',
    spec: 'bun',
    exes: ['node_modules/bun/bin/bun.exe', `node_modules/@oven/bun-${process.platform}-${process.arch === 'x64' ? 'x64' : 'aarch64'}/bin/bun`, `node_modules/@oven/bun-${process.platform}-${process.arch === 'x64' ? 'x64-baseline' : 'aarch64'}/bin/bun`],
  },
  deno: { kind: 'deno', spec: 'deno', exes: ['node_modules/deno/deno', `node_modules/@deno/${process.platform}-${process.arch}-glibc/deno`, `node_modules/@deno/${process.platform}-${process.arch}/deno`] },
};

function findExe(name) {
  const folder = join(opts.dir, name);
  for (const rel of RUNTIMES[name].exes) {
    const exe = join(folder, rel);
    // A placeholder (bun.exe before bun's postinstall) is a small text file.
    if (existsSync(exe) && statSync(exe).size > 1_000_000) {
      const v = spawnSync(exe, ['--version'], { encoding: 'utf8', timeout: 60_000 });
      if (v.status === 0) return { exe, version: v.stdout.trim().split('\n')[0].replace(/^deno (\S+).*/, '$1') };
    }
  }
  return null;
}

function install(name) {
  const found = findExe(name);
  if (found || opts['no-install']) return found;
  const folder = join(opts.dir, name);
  mkdirSync(folder, { recursive: true });
  writeFileSync(join(folder, 'package.json'), JSON.stringify({ name: `runtime-${name}`, private: true }) + '\n');
  const t = Date.now();
  const r = spawnSync('npm', ['install', '--no-audit', '--no-fund', '--loglevel=error', RUNTIMES[name].spec], { cwd: folder, encoding: 'utf8', timeout: 600_000 });
  if (r.status !== 0) {
    log(`npm install ${RUNTIMES[name].spec} failed:\n${r.stdout}${r.stderr}`);
    return null;
  }
  log(`installed ${RUNTIMES[name].spec} into ${folder} in ${((Date.now() - t) / 1000).toFixed(1)} s`);
  return findExe(name);
}

// The smoke test, run as an ES module in the examples' folder (its stories260k.gguf is ../shared/models').
const EXPECTED = ', there was a little girl';
const SMOKE = `// llama-addon smoke test (scripts/runtime-smoke.mjs)
import { loadModel, LlamaError } from 'llama-addon';

const checks = [];
function check(name, ok, detail) {
  if (!ok) throw new Error(name + ' failed: ' + detail);
  checks.push(name);
}
async function code(fn) {
  try {
    await fn();
    return 'no error';
  } catch (e) {
    return e instanceof LlamaError ? e.code : 'not a LlamaError: ' + String(e);
  }
}

const model = await loadModel('stories260k.gguf');
const tokens = model.tokenize('Once upon a time');
check('tokenize', tokens instanceof Int32Array && tokens.length > 2, String(tokens));
check('detokenize', model.detokenize(tokens).trim() === 'Once upon a time', JSON.stringify(model.detokenize(tokens)));
const ctx = await model.createContext({ contextSize: 256 });
const session = ctx.createSession();
let streamed = '';
const gen = session.generate('Once upon a time', { maxTokens: 8, temperature: 0 });
for await (const chunk of gen) streamed += chunk.text;
const r = await gen.result;
check('generate 8 greedy tokens', r.text === ${JSON.stringify(EXPECTED)} && streamed === r.text && r.usage.completionTokens === 8 && r.stopReason === 'maxTokens', JSON.stringify({ text: r.text, streamed, usage: r.usage, stopReason: r.stopReason }));
const one = await model.createContext({ contextSize: 256, sequences: 1 });
const many = [one.createSession(), one.createSession(), one.createSession()];
const texts = (await Promise.all(many.map((s) => s.complete('Once upon a time', { maxTokens: 8, temperature: 0 })))).map((x) => x.text);
check('more sessions than sequences, taking turns', texts.every((t) => t === ${JSON.stringify(EXPECTED)}), JSON.stringify(texts));
check('ERR_INVALID_ARGUMENT', (await code(() => session.complete('x', { temperature: 'hot' }))) === 'ERR_INVALID_ARGUMENT', await code(() => session.complete('x', { temperature: 'hot' })));
check('ERR_MODEL_NOT_FOUND', (await code(() => loadModel('missing.gguf'))) === 'ERR_MODEL_NOT_FOUND', await code(() => loadModel('missing.gguf')));
await model.dispose();
check('ERR_DISPOSED', (await code(() => model.tokenize('x'))) === 'ERR_DISPOSED', await code(() => model.tokenize('x')));

let awaitUsing = false;
try {
  new Function('async function f() { await using x = null; }');
  awaitUsing = true;
} catch {}
if (awaitUsing) {
  const { run } = await import('./smoke-using.mjs');
  check('await using disposes', (await run()) === 'ERR_DISPOSED', 'the model was not disposed');
}
console.log(JSON.stringify({ ok: true, checks }));
`;
const SMOKE_USING = `import { loadModel } from 'llama-addon';
export async function run() {
  let kept;
  {
    await using model = await loadModel('stories260k.gguf');
    kept = model;
    model.tokenize('x');
  }
  try {
    kept.tokenize('x');
    return 'not disposed';
  } catch (e) {
    return e.code;
  }
}
`;

const names = opts.runtimes.split(',').map((s) => s.trim()).filter(Boolean);
for (const n of names) if (!RUNTIMES[n]) throw new Error(`unknown runtime "${n}" (known: ${Object.keys(RUNTIMES).join(', ')})`);
if (!existsSync(join(opts['shared-models'], 'stories260k.gguf'))) {
  log(`${opts['shared-models']} has no stories260k.gguf: the examples and the smoke test need ../shared/models`);
  process.exit(1);
}

log(`machine's node ${process.version}; runtimes in ${opts.dir}`);
const runtimes = [];
let failed = false;
for (const name of names) {
  const found = install(name);
  if (!found) {
    log(`${name}: not installed`);
    failed = true;
    continue;
  }
  const r = { name, kind: RUNTIMES[name].kind, exe: found.exe, version: found.version };
  if (r.kind === 'node') {
    const t = spawnSync(found.exe, ['-p', 'process.features.typescript ?? ""'], { encoding: 'utf8' });
    r.typescript = opts.ts !== 'strip' && /strip|transform/.test(t.stdout);
  } else r.typescript = opts.ts !== 'strip';
  runtimes.push(r);
  log(`${name}: ${r.version} (${r.exe})${r.typescript ? ', runs .ts files itself' : ''}`);
}

const readme = readmePrograms();
if (readme.problems.length) {
  log(`README problems:\n  ${readme.problems.join('\n  ')}`);
  failed = true;
}
const root = mkdtempSync(join(tmpdir(), 'llama-addon-smoke-'));
const app = prepareRunDir(root, { sharedModels: opts['shared-models'], programs: readme.programs, tsconfig: readme.tsconfig });
await writePrograms(app, readme.programs);
writeFileSync(join(app, 'smoke.mjs'), SMOKE);
writeFileSync(join(app, 'smoke-using.mjs'), SMOKE_USING);

const env = { ...process.env, NO_COLOR: '1' };
delete env.FORCE_COLOR;
const timeout = Number(opts.timeout) * 1000;
const rows = [];
for (const rt of runtimes) {
  const t = Date.now();
  const tests = [];
  if (!opts['no-smoke']) tests.push({ label: 'smoke test', program: { name: 'smoke', line: 0, heading: '', parts: [], file: 'smoke.mjs' } });
  if (!opts['no-readme']) for (const p of readme.programs) tests.push({ label: describeProgram(p), program: p });
  let passed = 0;
  for (const { label, program } of tests) {
    const res = await runProgram(app, program, { runtime: rt, timeout, env });
    const ts = rt.typescript && program.tsFile ? ' (.ts)' : '';
    if (res.ok) {
      passed++;
      const extra = program.name === 'smoke' ? ` ${res.stdout.trim().split('\n').pop()}` : '';
      log(`${rt.name}: ok   ${label}${ts} ${res.ms} ms${extra}`);
    } else {
      failed = true;
      log(`${rt.name}: FAIL ${label}${ts} ${res.ms} ms: ${res.why}\n--- stdout\n${res.stdout.slice(-3000)}\n--- stderr\n${res.stderr.slice(-6000)}\n---`);
    }
  }
  rows.push({ runtime: rt.name, version: rt.version, passed, total: tests.length, seconds: ((Date.now() - t) / 1000).toFixed(1) });
}
rmSync(root, { recursive: true, force: true });

console.log('\n| runtime | version | passed | seconds |\n|---|---|---|---|');
for (const r of rows) console.log(`| ${r.runtime} | ${r.version} | ${r.passed}/${r.total} | ${r.seconds} |`);
console.log(`\n[runtimes] Deno ran with ${DENO_FLAGS.join(' ')} (and --allow-net for the server); total ${((Date.now() - started) / 1000).toFixed(1)} s: ${failed ? 'FAILED' : 'all passed'}`);
process.exit(failed ? 1 : 0);

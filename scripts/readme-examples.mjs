// The README's code blocks as programs that can be run: used by test/readme.test.ts (under the machine's
// Node.js, through vitest) and by scripts/runtime-smoke.mjs (under Node.js 22 and 24, Bun and Deno).
//
// Every ```ts, ```js and ```sh block of README.md runs, unless an HTML comment on the line before it (blank
// lines allowed between) says otherwise. Such comments are invisible on the rendered page:
//
//   <!-- readme-test: skip (why) -->   not run: signatures, fragments, commands that build or need other machines
//   <!-- readme-test: name NAME -->    the block starts a program called NAME
//   <!-- readme-test: continues -->    the block goes on from the previous block's program, in the same file
//   <!-- readme-test: after NAME -->   the block runs as its own program, after the block called NAME (the
//                                      README says it continues that example: `model`, `ctx`, ...)
//   <!-- readme-test: server -->       (sh) the first command starts a server: it runs in the background until
//                                      GET /health answers, then the other commands and the blocks that continue
//   <!-- readme-test: tsconfig -->     (json) the tsconfig.json the README recommends: TypeScript programs are
//                                      type-checked with it (tsc --strict)
//
// A TypeScript program is type-checked and run as an ES module (its types stripped by esbuild, or the .ts file
// itself on runtimes that run TypeScript); a JavaScript program that calls require() runs as CommonJS.
// Programs run in a folder of their own whose node_modules links llama-addon to this checkout.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const readmePath = join(repoRoot, 'README.md');
export const defaultSharedModels = resolve(repoRoot, '..', 'shared', 'models');

/**
 * Model files named in the README, and the file of ../shared/models each one stands for. The programs run
 * with these names as links in their folder, so the code runs as
 * written. A runnable block that names another .gguf file fails the check.
 */
export const MODEL_FILES = {
  'stories260k.gguf': 'stories260k.gguf',
  'model.gguf': 'stories260k.gguf',
  'qwen.gguf': 'tinystories-656k-q8_0.gguf',
};

/**
 * Other substitutions, each documented here. In a program with a `server` block, the port 8080 becomes a free
 * port (another program on the machine may hold 8080). In every sh command, `npx llama-addon` becomes the
 * runtime under test running the package's bin (dist/cli.js), so that the CLI runs on that runtime.
 */
export const SERVER_PORT = '8080';

/** Deno's permissions for the README's programs: what the README documents, plus --allow-net for servers. */
export const DENO_FLAGS = ['--allow-read', '--allow-ffi', '--allow-env', '--allow-sys'];

const LANGS = { ts: 'ts', typescript: 'ts', js: 'js', javascript: 'js', mjs: 'js', cjs: 'js', sh: 'sh', bash: 'sh', shell: 'sh', json: 'json', jsonc: 'json' };
const MARKER = /^<!--\s*readme-test:\s*(.*?)\s*-->$/;

/** Every fenced code block of a Markdown text, with the marker comment before it. */
export function parseBlocks(markdown) {
  const lines = markdown.split('\n');
  const blocks = [];
  let heading = '';
  for (let i = 0; i < lines.length; i++) {
    const open = /^(\s*)(`{3,}|~{3,})\s*([^\s`]*)(.*)$/.exec(lines[i]);
    if (!open) {
      if (/^#{1,6}\s/.test(lines[i])) heading = lines[i].replace(/^#+\s*/, '');
      continue;
    }
    const [, indent, fence, info] = open;
    const code = [];
    let j = i + 1;
    for (; j < lines.length; j++) {
      if (new RegExp(`^\\s*\\${fence[0]}{${fence.length},}\\s*$`).test(lines[j])) break;
      code.push(lines[j].startsWith(indent) ? lines[j].slice(indent.length) : lines[j]);
    }
    let k = i - 1;
    while (k >= 0 && lines[k].trim() === '') k--;
    const m = k >= 0 ? MARKER.exec(lines[k].trim()) : null;
    blocks.push({
      line: i + 1,
      info: info.toLowerCase(),
      lang: LANGS[info.toLowerCase()] ?? (info ? 'other' : ''),
      code: code.join('\n'),
      marker: m ? m[1] : null,
      markerLine: m ? k + 1 : null,
      heading,
    });
    i = j;
  }
  return blocks;
}

function parseMarker(text) {
  const out = {};
  // Parts are separated by `;` outside parentheses (a skip's reason may hold one).
  for (const part of text.split(/;(?![^()]*\))/).map((s) => s.trim()).filter(Boolean)) {
    const m = /^(skip|name|continues|after|server|tsconfig)\b\s*(.*)$/.exec(part);
    if (!m) throw new Error(`unknown readme-test marker "${part}"`);
    const [, kind, arg] = m;
    if (kind === 'skip') {
      const why = /^\((.+)\)$/.exec(arg);
      if (!why) throw new Error('a skip marker gives its reason: <!-- readme-test: skip (why) -->');
      out.skip = why[1];
    } else if (kind === 'name' || kind === 'after') {
      if (!/^[\w-]+$/.test(arg)) throw new Error(`"${kind}" takes a name of letters, digits and dashes, not "${arg}"`);
      out[kind] = arg;
    } else {
      if (arg) throw new Error(`"${kind}" takes no argument`);
      out[kind] = true;
    }
  }
  return out;
}

/**
 * The README's programs. Returns { programs, skipped, tsconfig, problems }: a program is { name, line, parts },
 * each part { lang, code, line, server? }; `problems` lists markers and blocks the test must refuse.
 */
export function readmePrograms(markdown = readFileSync(readmePath, 'utf8')) {
  const programs = [];
  const skipped = [];
  const problems = [];
  const named = new Map();
  let tsconfig = null;
  let last = null;
  for (const block of parseBlocks(markdown)) {
    let marker = {};
    try {
      marker = block.marker === null ? {} : parseMarker(block.marker);
    } catch (e) {
      problems.push(`README.md:${block.markerLine}: ${e.message}`);
      continue;
    }
    const where = `README.md:${block.line}`;
    if (block.lang === 'json') {
      if (marker.tsconfig) {
        try {
          tsconfig = { line: block.line, text: block.code, json: JSON.parse(block.code) };
        } catch (e) {
          problems.push(`${where}: the tsconfig block is not JSON: ${e.message}`);
        }
      } else if (Object.keys(marker).length) problems.push(`${where}: only "tsconfig" applies to a json block`);
      continue;
    }
    if (block.lang !== 'ts' && block.lang !== 'js' && block.lang !== 'sh') {
      if (block.marker !== null) problems.push(`${where}: a readme-test marker on a block that is never run (\`\`\`${block.info})`);
      continue;
    }
    if (marker.skip) {
      skipped.push({ line: block.line, lang: block.lang, heading: block.heading, reason: marker.skip });
      if (Object.keys(marker).length > 1) problems.push(`${where}: "skip" goes alone`);
      continue;
    }
    if (marker.tsconfig) problems.push(`${where}: "tsconfig" marks a json block`);
    if (marker.server && block.lang !== 'sh') problems.push(`${where}: "server" marks a sh block`);
    const part = { lang: block.lang, code: block.code, line: block.line, ...(marker.server ? { server: true } : {}) };
    let program;
    if (marker.continues) {
      if (!last) {
        problems.push(`${where}: "continues" but no program before it`);
        continue;
      }
      program = last;
      program.parts.push(part);
    } else {
      const parts = [];
      if (marker.after) {
        const base = named.get(marker.after);
        if (!base) {
          problems.push(`${where}: "after ${marker.after}" but no block before it is named so`);
          continue;
        }
        parts.push({ ...base, prelude: true });
      }
      parts.push(part);
      program = { name: '', line: block.line, heading: block.heading, parts };
      programs.push(program);
    }
    if (marker.name) {
      if (named.has(marker.name)) problems.push(`${where}: the name "${marker.name}" is taken`);
      named.set(marker.name, part);
      if (!program.name) program.name = marker.name;
    }
    last = program;
  }
  const used = new Set();
  for (const p of programs) {
    const base = (p.name || slug(p.heading) || 'block').slice(0, 40);
    let name = base;
    for (let n = 2; used.has(name); n++) name = `${base}-${n}`;
    used.add(name);
    p.name = name;
    problems.push(...checkProgram(p));
  }
  return { programs, skipped, tsconfig, problems };
}

function slug(text) {
  return text.toLowerCase().replace(/\(.*$/, '').replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '');
}

function checkProgram(p) {
  const problems = [];
  const js = p.parts.filter((x) => x.lang !== 'sh');
  const firstCode = p.parts.findIndex((x) => x.lang !== 'sh');
  if (firstCode >= 0 && firstCode < p.parts.findLastIndex((x) => x.lang === 'sh'))
    problems.push(`README.md:${p.line}: program "${p.name}": sh blocks come before the code that continues them`);
  if (p.parts.filter((x) => x.server).length > 1) problems.push(`README.md:${p.line}: program "${p.name}" starts two servers`);
  if (p.parts.some((x) => x.lang === 'sh') && !p.parts.some((x) => x.server) && js.length)
    problems.push(`README.md:${p.line}: program "${p.name}" mixes sh and code without a server`);
  for (const part of p.parts) {
    for (const m of part.code.matchAll(/[\w./-]*\.gguf\b/g)) {
      if (!(m[0] in MODEL_FILES)) problems.push(`README.md:${part.line}: "${m[0]}" is not in the model table of scripts/readme-examples.mjs (MODEL_FILES)`);
    }
  }
  return problems;
}

/** What kind of file a program's code is: 'ts', 'esm' or 'cjs' (null for sh only). */
export function programKind(p) {
  const code = p.parts.filter((x) => x.lang !== 'sh');
  if (!code.length) return null;
  if (code.some((x) => x.lang === 'ts')) return 'ts';
  const text = code.map((x) => x.code).join('\n');
  return /\brequire\s*\(/.test(text) && !/^\s*import\s/m.test(text) ? 'cjs' : 'esm';
}

/** The program's code as one file, and for each of its lines the README line it comes from. */
export function programSource(p) {
  const lines = [];
  const map = [];
  for (const part of p.parts) {
    if (part.lang === 'sh') continue;
    lines.push(`// README.md:${part.line}${part.prelude ? ' (the block this one continues)' : ''}`);
    map.push(part.line);
    part.code.split('\n').forEach((l, i) => {
      lines.push(l);
      map.push(part.line + 1 + i);
    });
  }
  return { text: lines.join('\n') + '\n', map };
}

/** The sh commands of a program's sh blocks: continuation lines joined, comments and blank lines dropped. */
export function shCommands(p) {
  const out = [];
  for (const part of p.parts.filter((x) => x.lang === 'sh')) {
    let cur = '';
    for (const raw of part.code.split('\n')) {
      const line = cur ? raw.trim() : raw.replace(/^\s*#.*$/, '').trim();
      if (!cur && !line) continue;
      if (line.endsWith('\\')) {
        cur += line.slice(0, -1) + ' ';
        continue;
      }
      out.push({ command: cur + line, server: Boolean(part.server) && !out.some((c) => c.part === part), part });
      cur = '';
    }
  }
  return out;
}

/**
 * Makes the folder programs run in: `<root>/app` with package.json ("type": "module"), node_modules linking
 * llama-addon to this checkout and every other package the programs import to this checkout's node_modules,
 * the model links of MODEL_FILES, and the README's tsconfig.json. Returns the app folder.
 */
export function prepareRunDir(root, { sharedModels = defaultSharedModels, programs = [], tsconfig = null } = {}) {
  const app = join(root, 'app');
  mkdirSync(join(app, 'node_modules', '.bin'), { recursive: true });
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'readme-examples', private: true, type: 'module' }, null, 2) + '\n');
  const link = (target, path) => {
    mkdirSync(dirname(path), { recursive: true });
    rmSync(path, { force: true, recursive: true });
    symlinkSync(target, path);
  };
  link(repoRoot, join(app, 'node_modules', 'llama-addon'));
  link(join('..', 'llama-addon', 'dist', 'cli.js'), join(app, 'node_modules', '.bin', 'llama-addon'));
  link(join(repoRoot, 'node_modules', '@types'), join(app, 'node_modules', '@types'));
  const imports = new Set();
  for (const p of programs)
    for (const part of p.parts)
      for (const m of part.code.matchAll(/(?:from\s+|import\s*\(\s*|require\s*\(\s*)['"]([^'"./][^'"]*)['"]/g)) imports.add(m[1]);
  for (const spec of imports) {
    const name = spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0];
    if (name === 'llama-addon' || spec.startsWith('node:')) continue;
    const target = join(repoRoot, 'node_modules', name);
    if (existsSync(target)) link(target, join(app, 'node_modules', name));
  }
  for (const [name, file] of Object.entries(MODEL_FILES)) link(join(sharedModels, file), resolve(app, name));
  if (tsconfig) writeFileSync(join(app, 'tsconfig.json'), tsconfig.text + '\n');
  return app;
}

/** Writes each program's files into the app folder; sets p.file (code file, or null) for each. */
export async function writePrograms(app, programs) {
  const esbuild = await import('esbuild');
  programs.forEach((p, i) => {
    const kind = programKind(p);
    p.kind = kind;
    const base = `${String(i + 1).padStart(2, '0')}-${p.name}`;
    if (!kind) {
      p.file = null;
      return;
    }
    const { text, map } = programSource(p);
    p.lineMap = map;
    if (kind === 'ts') {
      p.tsFile = `${base}.ts`;
      writeFileSync(join(app, p.tsFile), text);
      // Types stripped, nothing else changed: the ES module a TypeScript user's build would give.
      const js = esbuild.transformSync(text, { loader: 'ts', format: 'esm', target: 'esnext', sourcefile: p.tsFile }).code;
      p.file = `${base}.mjs`;
      writeFileSync(join(app, p.file), js);
    } else {
      p.file = `${base}.${kind === 'cjs' ? 'cjs' : 'mjs'}`;
      writeFileSync(join(app, p.file), text);
    }
  });
}

/**
 * Type-checks the TypeScript programs with the README's tsconfig.json (plus --strict) in one tsc run.
 * Returns { ok, output, errors: [{ program, readmeLine, message }] }.
 */
export function typecheck(app, programs) {
  const files = programs.filter((p) => p.tsFile);
  const tsc = join(repoRoot, 'node_modules', 'typescript', 'bin', 'tsc');
  const r = spawnSync(process.execPath, [tsc, '--noEmit', '--strict', '--pretty', 'false', '-p', join(app, 'tsconfig.json')], { cwd: app, encoding: 'utf8', timeout: 300_000 });
  const output = `${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? String(r.error) : ''}`;
  const errors = [];
  for (const m of output.matchAll(/^(.+?)\((\d+),(\d+)\): (error .*)$/gm)) {
    const p = files.find((f) => resolve(app, m[1]) === resolve(app, f.tsFile));
    errors.push({ program: p?.name ?? m[1], readmeLine: p ? p.lineMap[Number(m[2]) - 1] : null, message: m[4] });
  }
  return { ok: r.status === 0, output, errors };
}

/** A free TCP port on 127.0.0.1. */
export function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.unref();
    s.on('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

function run(cmd, args, { cwd, env, timeout, input }) {
  return new Promise((res) => {
    const started = Date.now();
    const child = spawn(cmd, args, { cwd, env, stdio: ['pipe', 'pipe', 'pipe'], detached: true });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.stdin.end(input ?? '');
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {}
    }, timeout);
    child.on('error', (e) => (stderr += String(e)));
    child.on('close', (status, signal) => {
      clearTimeout(timer);
      res({ status, signal, timedOut, stdout, stderr, ms: Date.now() - started });
    });
  });
}

/** How a runtime runs a program file: [executable, ...arguments]. */
function fileCommand(runtime, file, { net }) {
  if (runtime.kind === 'deno') return [runtime.exe, ['run', ...DENO_FLAGS, ...(net ? ['--allow-net'] : []), file]];
  return [runtime.exe, [file]];
}

/**
 * Runs one program under a runtime ({ kind: 'node' | 'bun' | 'deno', exe, typescript?: boolean }; without
 * one, the Node.js running this). With `runtime.typescript`, a TypeScript program runs as its .ts file (the
 * runtime strips the types itself). Returns { ok, status, stdout, stderr, ms, why }.
 */
export async function runProgram(app, p, { runtime = { kind: 'node', exe: process.execPath }, timeout = 240_000, env = process.env } = {}) {
  const started = Date.now();
  const commands = shCommands(p);
  const server = commands.find((c) => c.server);
  const port = server ? String(await freePort()) : null;
  const sub = (s) => (port ? s.replaceAll(SERVER_PORT, port) : s);
  const file = runtime.typescript && p.tsFile ? p.tsFile : p.file;
  let logs = '';
  const result = (ok, why, extra = {}) => ({ ok, why, ms: Date.now() - started, stdout: extra.stdout ?? '', stderr: `${extra.stderr ?? ''}${logs ? `\n[server]\n${logs}` : ''}`, status: extra.status ?? null });
  const childEnv = { ...env, PATH: `${join(app, 'node_modules', '.bin')}:${env.PATH ?? ''}` };
  // `npx llama-addon` becomes the runtime under test running the package's bin.
  const cli = fileCommand(runtime, join(app, 'node_modules', 'llama-addon', 'dist', 'cli.js'), { net: true }).flat().map(shellQuote).join(' ');
  let serverChild = null;
  try {
    if (server) {
      const cmd = sub(server.command).replace(/^npx llama-addon\b/, cli);
      serverChild = spawn('bash', ['-c', `exec ${cmd}`], { cwd: app, env: childEnv, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
      serverChild.stdout.on('data', (d) => (logs += d));
      serverChild.stderr.on('data', (d) => (logs += d));
      let exited = null;
      serverChild.on('close', (code, signal) => (exited = { code, signal }));
      const until = Date.now() + Math.min(timeout, 180_000);
      for (;;) {
        if (exited) return result(false, `the server exited (${exited.signal ?? exited.code}) before answering GET /health`);
        if (Date.now() > until) return result(false, 'the server did not answer GET /health in time');
        const ok = await fetch(`http://127.0.0.1:${port}/health`).then((r) => r.ok, () => false);
        if (ok) break;
        await new Promise((r) => setTimeout(r, 250));
      }
    }
    let stdout = '';
    let stderr = '';
    for (const c of commands.filter((x) => !x.server)) {
      const r = await run('bash', ['-eo', 'pipefail', '-c', sub(c.command).replace(/^npx llama-addon\b/, cli)], { cwd: app, env: childEnv, timeout });
      stdout += r.stdout;
      stderr += r.stderr;
      if (r.status !== 0 || r.timedOut) return result(false, r.timedOut ? `timed out: ${c.command}` : `exit ${r.status ?? r.signal}: ${c.command}`, { stdout, stderr, status: r.status });
      if (/"error"\s*:/.test(r.stdout)) return result(false, `an error answer: ${c.command}`, { stdout, stderr });
    }
    if (file) {
      let path = join(app, file);
      if (port) {
        path = join(app, file.replace(/(\.\w+)$/, `.port$1`));
        writeFileSync(path, sub(readFileSync(join(app, file), 'utf8')));
      }
      const [exe, args] = fileCommand(runtime, path, { net: Boolean(server) });
      const r = await run(exe, args, { cwd: app, env: childEnv, timeout });
      stdout += r.stdout;
      stderr += r.stderr;
      if (r.timedOut) return result(false, `timed out after ${timeout} ms`, { stdout, stderr });
      if (r.status !== 0) return result(false, `exit ${r.status ?? r.signal}`, { stdout, stderr, status: r.status });
    }
    return result(true, '', { stdout, stderr, status: 0 });
  } finally {
    if (serverChild && serverChild.exitCode === null && serverChild.signalCode === null) {
      const closed = new Promise((r) => serverChild.on('close', r));
      try {
        process.kill(-serverChild.pid, 'SIGTERM');
      } catch {}
      const t = setTimeout(() => {
        try {
          process.kill(-serverChild.pid, 'SIGKILL');
        } catch {}
      }, 15_000);
      await closed;
      clearTimeout(t);
    }
  }
}

function shellQuote(s) {
  return /^[\w./=:,@+-]+$/.test(s) ? s : `'${s.replaceAll("'", `'\\''`)}'`;
}

/** A short description of a program for reports: its name and the README lines of its blocks. */
export function describeProgram(p) {
  return `${p.name} (README.md:${p.parts.map((x) => x.line).join(', ')})`;
}

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { describeShared, fixtures, repoRoot, shared } from './helpers/models.js';

const cli = ['--import', 'tsx', join(repoRoot, 'lib', 'cli.ts')];
const run = (...args: string[]) => spawnSync(process.execPath, [...cli, ...args], { cwd: repoRoot, encoding: 'utf8', timeout: 60_000 });
const quote = (a: string) => `'${a.replace(/'/g, "'\\''")}'`;

/** The CLI in a pseudo-terminal (script(1)): stdin, stdout and stderr are a terminal, as for a user. */
function terminal(...args: string[]) {
  const child = spawn('script', ['-qfec', [process.execPath, ...cli, ...args].map(quote).join(' '), '/dev/null'], { cwd: repoRoot });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
  return {
    child,
    exited,
    get out() {
      return out;
    },
    /** Waits until what was written since `from` matches. */
    async waitFor(re: RegExp, from = 0) {
      for (let i = 0; i < 600 && !re.test(out.slice(from)); i++) await new Promise((r) => setTimeout(r, 25));
      expect(out.slice(from)).toMatch(re);
    },
    /** Types a line (Enter is \r on a terminal) and returns where its echo starts. */
    type(line: string) {
      const mark = out.length;
      child.stdin.write(`${line}\r`);
      return mark;
    },
  };
}

/** Collects a child's stderr and resolves `waitFor` when it matches. */
function stderrOf(child: ChildProcess) {
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  return {
    get text() {
      return err;
    },
    async waitFor(re: RegExp, ms = 30_000) {
      for (let i = 0; i < ms / 25 && !re.test(err); i++) await new Promise((r) => setTimeout(r, 25));
      expect(err).toMatch(re);
      return re.exec(err)!;
    },
  };
}

describeShared('llama-addon command line', () => {
  it('inspects a GGUF file from its header', () => {
    const r = run('inspect', shared('vocab-phi-3.gguf'), '--json');
    expect(r.status).toBe(0);
    const info = JSON.parse(r.stdout) as { architecture: string; tensors: number; chatTemplate: string | null; contextLength: number };
    expect(info).toMatchObject({ architecture: 'phi3', tensors: 0, contextLength: 4096 });
    expect(JSON.parse(run('inspect', shared('tinystories-656k-q8_0.gguf'), '--json').stdout).quantization).toBe('Q8_0');
    expect(info.chatTemplate).toContain('<|assistant|>');
    const text = run('inspect', shared('stories260k.gguf'), '--all');
    expect(text.stdout).toMatch(/architecture\s+llama/);
    expect(text.stdout).toContain('tokenizer.ggml.model = llama');
  });

  it('completes and tokenizes', () => {
    const r = run('complete', '--model', shared('stories260k.gguf'), '--max-tokens', '12', '--temperature', '0', 'Once upon a time');
    expect(r.status).toBe(0);
    expect(r.stdout.startsWith(', there was a little girl')).toBe(true);
    const j = run('complete', '--model', shared('stories260k.gguf'), '--max-tokens', '5', '--temperature', '0', '--json', 'Once upon a time');
    expect(JSON.parse(j.stdout)).toMatchObject({ stopReason: 'maxTokens', usage: { completionTokens: 5 } });
    const schema = join(fixtures, 'cli-schema.json');
    writeFileSync(schema, JSON.stringify({ type: 'object', properties: { ok: { type: 'boolean' } }, required: ['ok'] }));
    const constrained = run('complete', '--model', shared('stories260k.gguf'), '--max-tokens', '40', '--json-schema', schema, 'Answer:');
    expect(constrained.status, constrained.stderr).toBe(0);
    expect(typeof JSON.parse(constrained.stdout).ok).toBe('boolean');
    const gbnf = join(fixtures, 'cli-yes-no.gbnf');
    writeFileSync(gbnf, 'root ::= "yes" | "no"');
    expect(['yes', 'no']).toContain(run('complete', '--model', shared('stories260k.gguf'), '--grammar', gbnf, 'Answer:').stdout.trim());
    const t = run('tokenize', '--model', shared('stories260k.gguf'), 'Once upon a time');
    expect(t.stdout.trim().split(' ').length).toBe(5);
  });

  it('ends without --max-tokens: complete and chat stop at 512 tokens by default, and chat marks the cut', () => {
    // Greedy, this model tells the same story over and over: only the limit ends it.
    const r = run('complete', '--model', shared('stories260k.gguf'), '--temperature', '0', '--json', 'Once upon a time');
    expect(r.status, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ stopReason: 'maxTokens', usage: { completionTokens: 512 } });
    const c = spawnSync(process.execPath, [...cli, 'chat', '--model', shared('stories260k.gguf'), '--temperature', '0'], {
      cwd: repoRoot, encoding: 'utf8', timeout: 60_000, input: 'Once upon a time\n',
    });
    expect(c.status, c.stderr).toBe(0);
    // Not a terminal: stdout carries the answer only (no banner, no loading bar, no prompt, no marker); the
    // marker goes to stderr.
    expect(c.stdout).not.toContain('[cut at');
    expect(c.stdout).not.toContain('Chatting with');
    expect(c.stdout.length).toBeGreaterThan(100);
    expect(c.stderr).toBe('[cut at 512 tokens]\n');
  });

  it('shows a loading bar on a terminal (a percentage of the file size) and clears it when done', async () => {
    const t = terminal('complete', '--model', shared('stories260k.gguf'), '--max-tokens', '4', '--temperature', '0', 'Once upon a time');
    expect(await t.exited).toBe(0);
    const out = t.out;
    expect(out).toMatch(/loading stories260k\.gguf \[[#.]{24}\] \d{1,3}% of 1\.1 MiB/);
    expect(out).toContain('100% of 1.1 MiB');
    expect(out).not.toMatch(/0\.0\/0\.0|NaN/);
    // After the bar's last drawing: the line is cleared, then the answer, then the note that it was cut.
    const after = out.slice(out.lastIndexOf('% of 1.1 MiB'));
    expect(after).toMatch(/^% of 1\.1 MiB\r\x1b\[2K, there was/);
    expect(after).toContain('[cut at 4 tokens: raise --max-tokens for more]');
    // Without a terminal, stderr stays empty.
    expect(run('complete', '--model', shared('stories260k.gguf'), '--max-tokens', '4', 'Once upon a time').stderr).toBe('');
  });

  it('embeds texts as JSON', () => {
    const r = run('embed', '--model', shared('stories260k.gguf'), 'Once upon a time', 'The dog');
    expect(r.status).toBe(0);
    const out = JSON.parse(r.stdout) as Array<{ text: string; embedding: number[] }>;
    expect(out.map((x) => x.text)).toEqual(['Once upon a time', 'The dog']);
    expect(out[0].embedding).toHaveLength(64);
  });

  it('chats: multi-line messages, /reset, and Ctrl-C stops an answer without leaving', async () => {
    const child = spawn(process.execPath, [...cli, 'chat', '--model', shared('stories260k.gguf'), '--max-tokens', '20000', '--temperature', '1'], { cwd: repoRoot });
    let out = '';
    let notes = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    // Piped, the answers go to stdout and the markers and notes to stderr.
    child.stderr.on('data', (d: Buffer) => (notes += d.toString()));
    const waitFor = async (re: RegExp, where: () => string = () => out) => {
      for (let i = 0; i < 400 && !re.test(where()); i++) await new Promise((r) => setTimeout(r, 25));
      expect(where()).toMatch(re);
    };
    child.stdin.write('Tell me a long story\\\nabout a dog\n');
    await waitFor(/\S{3}/);
    child.kill('SIGINT');
    await waitFor(/\[stopped\]\n/, () => notes);
    child.stdin.write('/reset\n');
    await waitFor(/\(conversation reset\)/, () => notes);
    child.stdin.end();
    const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
    expect(code).toBe(0);
  });

  it('chats in a terminal (a pseudo-terminal from script(1)): prompt, answer, Ctrl-D quits', async () => {
    const command = [process.execPath, ...cli, 'chat', '--model', shared('stories260k.gguf'), '--max-tokens', '8', '--temperature', '0']
      .map((a) => `'${a.replace(/'/g, "'\\''")}'`)
      .join(' ');
    const child = spawn('script', ['-qfec', command, '/dev/null'], { cwd: repoRoot });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const waitFor = async (re: RegExp, from = 0) => {
      for (let i = 0; i < 400 && !re.test(out.slice(from)); i++) await new Promise((r) => setTimeout(r, 25));
      expect(out.slice(from)).toMatch(re);
    };
    await waitFor(/> /);
    const mark = out.length;
    child.stdin.write('Hello\r');
    await waitFor(/\n> /, mark);
    child.stdin.write('\u0004');
    const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
    expect(code).toBe(0);
  });

  it('chats in a terminal: a one-line banner, /help, /save, /load, /system, /reset, /exit, the cut marker', async () => {
    const file = join(fixtures, 'cli-chat.json');
    rmSync(file, { force: true });
    const t = terminal('chat', '--model', shared('stories260k.gguf'), '--max-tokens', '8', '--temperature', '0');
    await t.waitFor(/Chatting with stories260k\.gguf: \/help, \/system TEXT, \/reset, \/save FILE, \/load FILE, \/exit; Ctrl-C stops an answer, Ctrl-D quits\r\n> $/);
    await t.waitFor(/\[cut at 8 tokens\]\r\n> $/, t.type('Once upon a time'));
    await t.waitFor(/\(unknown command \/sav; did you mean \/save\? \/help lists the commands.*\)\r\n> $/, t.type(`/sav ${file}`));
    await t.waitFor(/\(saved 2 messages to .*cli-chat\.json\)\r\n> $/, t.type(`/save ${file}`));
    const saved = JSON.parse(readFileSync(file, 'utf8')) as { messages: Array<{ role: string; content: string }> };
    expect(saved.messages.map((m) => m.role)).toEqual(['user', 'assistant']);
    expect(saved.messages[0].content).toBe('Once upon a time');
    await t.waitFor(/\(system prompt set; the conversation of 2 messages goes on\)\r\n> $/, t.type('/system You tell stories.'));
    await t.waitFor(/\(system prompt: You tell stories\.\)\r\n> $/, t.type('/system'));
    await t.waitFor(/\(conversation reset\)\r\n> $/, t.type('/reset'));
    await t.waitFor(/\(cannot load \/nonexistent\.json: ENOENT.*\)\r\n> $/, t.type('/load /nonexistent.json'));
    await t.waitFor(/\(loaded 2 messages from .*cli-chat\.json\)\r\n> $/, t.type(`/load ${file}`));
    // The file had no system message: loading it leaves none.
    await t.waitFor(/\(no system prompt\)\r\n> $/, t.type('/system'));
    const help = t.type('/help');
    await t.waitFor(/\/exit +quit.*\r\n(.*\r\n)*> $/, help);
    for (const c of ['/help', '/system TEXT', '/reset', '/save FILE', '/load FILE', '/exit']) expect(t.out.slice(help)).toContain(`  ${c} `);
    t.type('/exit');
    expect(await t.exited).toBe(0);
  });

  it('runs the benchmarks', () => {
    const r = run('bench', '--scenario', 'speculative', '--reps', '1', '--json', '--results-dir', join(fixtures, 'cli-bench'));
    expect(r.status, r.stderr.slice(-1000)).toBe(0);
    const report = JSON.parse(r.stdout) as { speculative: { rows: Array<{ mode: string }> } };
    expect(report.speculative.rows.map((x) => x.mode)).toEqual(['plain', 'draft', 'lookup']);
  });

  it('says what went wrong, with a non-zero exit code', () => {
    const missing = run('complete', '--model', '/nonexistent.gguf', 'x');
    expect(missing.status).toBe(1);
    expect(missing.stderr).toMatch(/ERR_MODEL_NOT_FOUND/);
    const unknown = run('frobnicate');
    expect(unknown.status).toBe(2);
    expect(unknown.stderr).toMatch(/unknown command 'frobnicate'/);
    expect(run('--help').stdout).toMatch(/Usage: llama-addon <command>/);
  });

  it('serves, reloads on SIGHUP, and exits cleanly on SIGTERM', async () => {
    const child = spawn(process.execPath, [...cli, 'serve', '--model', `stories=${shared('stories260k.gguf')}`, '--port', '0', '--ctx-size', '256'], { cwd: repoRoot });
    let err = '';
    const url = await new Promise<string>((resolve, reject) => {
      child.stderr.on('data', (d: Buffer) => {
        err += d.toString();
        const m = /listening on (http:\/\/\S+)[^]*\nChat page: (http:\/\/\S+\/)\n/.exec(err);
        if (m) {
          expect(m[2]).toBe(`${m[1]}/`);
          resolve(m[1]);
        }
      });
      child.on('exit', () => reject(new Error(err)));
    });
    for (let i = 0; i < 100; i++) {
      if ((await fetch(url + '/health')).status === 200) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    const r = await fetch(url + '/v1/completions', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'Once upon a time', max_tokens: 4, temperature: 0 }) });
    expect(r.status).toBe(200);
    const page = await fetch(url + '/');
    expect(page.status).toBe(200);
    expect(page.headers.get('content-type')).toContain('text/html');
    // SIGHUP reloads the model file; requests go on being served.
    child.kill('SIGHUP');
    for (let i = 0; i < 200 && !/now serves .* \(version 2\)/.test(err); i++) await new Promise((r) => setTimeout(r, 25));
    expect(err).toMatch(/stories now serves .* \(version 2\)/);
    const models = (await (await fetch(url + '/v1/models')).json()) as { data: Array<{ version: number }> };
    expect(models.data[0].version).toBe(2);
    child.kill('SIGTERM');
    const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
    expect(code).toBe(0);
  });

  it('serve: Ctrl-C finishes running requests, a second Ctrl-C exits at once', async () => {
    const child = spawn(process.execPath, [...cli, 'serve', '--model', shared('stories260k.gguf'), '--port', '0', '--ctx-size', '256', '--max-tokens', '1000000'], { cwd: repoRoot });
    const err = stderrOf(child);
    const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
    const [, url] = await err.waitFor(/listening on (http:\/\/\S+)/);
    await err.waitFor(/the model is loaded: serving/);
    // A request that would run for minutes: the first Ctrl-C waits for it.
    const res = await fetch(url + '/v1/completions', {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'Once upon a time', max_tokens: 1_000_000, stream: true }),
    });
    const reader = res.body!.getReader();
    await reader.read();
    child.kill('SIGINT');
    await err.waitFor(/SIGINT: finishing running requests \(10 s at most; Ctrl-C again exits at once\)/);
    await new Promise((r) => setTimeout(r, 500));
    expect(child.exitCode).toBe(null);
    child.kill('SIGINT');
    expect(await exited).toBe(130);
    expect(err.text).toContain('SIGINT again: exiting now');
    await reader.cancel().catch(() => {});
  });

  // npm runs a bin through `sh -c`. bash execs the command: npm forwards each signal to it, so one Ctrl-C
  // arrives twice. dash (Debian's sh) waits for it: npm forwards a signal to the shell, which dies and leaves
  // the command behind. Both must end in one clean stop.
  const shells = ['/bin/sh', '/bin/bash'].filter((s) => existsSync(s));
  it.each(shells)('serve under npx (npm script shell %s): Ctrl-C and SIGTERM to npm stop it cleanly', async (shell) => {
    const dir = mkdtempSync(join(tmpdir(), 'llama-addon-npx-'));
    try {
      mkdirSync(join(dir, 'node_modules', '.bin'), { recursive: true });
      writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'app', private: true }));
      // The installed bin, as npm links it; it runs this checkout's CLI in the same process (exec).
      const bin = join(dir, 'node_modules', '.bin', 'llama-addon');
      writeFileSync(bin, `#!/bin/sh\ncd ${quote(repoRoot)} && exec ${[process.execPath, ...cli].map(quote).join(' ')} "$@"\n`);
      chmodSync(bin, 0o755);
      const env = { ...process.env, npm_config_script_shell: shell, npm_config_offline: 'true', npm_config_update_notifier: 'false' };
      for (const how of ['Ctrl-C', 'SIGTERM to npm'] as const) {
        // Its own process group, as a terminal's foreground job: Ctrl-C signals the whole group.
        const npx = spawn('npx', ['llama-addon', 'serve', '--model', shared('stories260k.gguf'), '--port', '0', '--ctx-size', '256', '--max-tokens', '100000'], {
          cwd: dir, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'],
        });
        const err = stderrOf(npx);
        // 'close': every holder of its pipes has exited, the server too (not only npm).
        const closed = new Promise<void>((resolve) => npx.on('close', () => resolve()));
        const [, url] = await err.waitFor(/listening on (http:\/\/\S+)/, 60_000);
        await err.waitFor(/the model is loaded: serving/);
        // A request runs (about a second), so that the stop takes a while: an echoed signal would force the exit.
        const res = await fetch(url + '/v1/completions', {
          method: 'POST', headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ prompt: 'Once upon a time', max_tokens: 200, temperature: 0, stream: true }),
        });
        const body = res.text();
        await new Promise((r) => setTimeout(r, 50));
        if (how === 'Ctrl-C') process.kill(-npx.pid!, 'SIGINT');
        else npx.kill('SIGTERM');
        await closed;
        // The running request was let finish.
        expect(await body).toMatch(/"finish_reason":"length"[^]*data: \[DONE\]/);
        expect(err.text, how).toMatch(/SIGINT: finishing running requests|SIGTERM: finishing running requests|npm, which started this server, has exited: finishing/);
        expect(err.text, how).not.toContain('exiting now');
        await expect(fetch(url + '/health')).rejects.toThrow();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describeShared('the CLI piped into a reader that stops early', () => {
  // `llama-addon inspect model.gguf | head -1`: the reader closes the pipe, the next write fails with EPIPE.
  // The command ends quietly with status 0, as other command-line tools do, not with an unhandled error.
  it('ends quietly when its output pipe closes (inspect, complete)', async () => {
    for (const args of [['inspect', shared('stories260k.gguf')], ['complete', '--model', shared('stories260k.gguf'), '--max-tokens', '300', '--temperature', '0', 'Once upon a time']]) {
      const child = spawn(process.execPath, [...cli, ...args], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
      let err = '';
      child.stderr.on('data', (d: Buffer) => (err += d.toString()));
      child.stdout.destroy(); // the reader is gone before the first write
      const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
      expect({ args: args[0], code, err }).toEqual({ args: args[0], code: 0, err: '' });
    }
  }, 120_000);
});

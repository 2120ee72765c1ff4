import { spawn, spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { describeShared, fixtures, repoRoot, shared } from './helpers/models.js';

const cli = ['--import', 'tsx', join(repoRoot, 'lib', 'cli.ts')];
const run = (...args: string[]) => spawnSync(process.execPath, [...cli, ...args], { cwd: repoRoot, encoding: 'utf8', timeout: 60_000 });

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
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const waitFor = async (re: RegExp) => {
      for (let i = 0; i < 400 && !re.test(out); i++) await new Promise((r) => setTimeout(r, 25));
      expect(out).toMatch(re);
    };
    child.stdin.write('Tell me a long story\\\nabout a dog\n');
    await waitFor(/\S{3}/);
    child.kill('SIGINT');
    await waitFor(/\[stopped\]\n/);
    child.stdin.write('/reset\n');
    await waitFor(/\(conversation reset\)/);
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
        const m = /listening on (http:\/\/\S+)/.exec(err);
        if (m) resolve(m[1]);
      });
      child.on('exit', () => reject(new Error(err)));
    });
    for (let i = 0; i < 100; i++) {
      if ((await fetch(url + '/health')).status === 200) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    const r = await fetch(url + '/v1/completions', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'Once upon a time', max_tokens: 4, temperature: 0 }) });
    expect(r.status).toBe(200);
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
});

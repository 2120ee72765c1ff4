import { spawn, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { describeShared, repoRoot, shared } from './helpers/models.js';

const cli = ['--import', 'tsx', join(repoRoot, 'lib', 'cli.ts')];
const run = (...args: string[]) => spawnSync(process.execPath, [...cli, ...args], { cwd: repoRoot, encoding: 'utf8', timeout: 60_000 });

describeShared('llama-addon command line', () => {
  it('inspects a GGUF file from its header', () => {
    const r = run('inspect', shared('vocab-phi-3.gguf'), '--json');
    expect(r.status).toBe(0);
    const info = JSON.parse(r.stdout) as { architecture: string; tensors: number; chatTemplate: string | null; contextLength: number };
    expect(info).toMatchObject({ architecture: 'phi3', tensors: 0, contextLength: 4096 });
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

  it('says what went wrong, with a non-zero exit code', () => {
    const missing = run('complete', '--model', '/nonexistent.gguf', 'x');
    expect(missing.status).toBe(1);
    expect(missing.stderr).toMatch(/ERR_MODEL_NOT_FOUND/);
    const unknown = run('frobnicate');
    expect(unknown.status).toBe(2);
    expect(unknown.stderr).toMatch(/unknown command 'frobnicate'/);
    expect(run('--help').stdout).toMatch(/Usage: llama-addon <command>/);
  });

  it('serves until SIGTERM, then exits cleanly', async () => {
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
    child.kill('SIGTERM');
    const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
    expect(code).toBe(0);
  });
});

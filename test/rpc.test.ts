// A model split across two llama.cpp RPC servers (our `rpc-server` command) on loopback gives exactly the
// output of the local run.
import { spawn, type ChildProcess } from 'node:child_process';
import { connect, createServer } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { loadModel, setLogger, setLogLevel } from 'llama-addon';
import { rejectsWith } from './helpers/errors.js';
import { describeShared, repoRoot, shared } from './helpers/models.js';

const freePort = () =>
  new Promise<number>((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });

const accepting = async (port: number, ms: number) => {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    const ok = await new Promise<boolean>((resolve) => {
      const c = connect({ host: '127.0.0.1', port }, () => (c.end(), resolve(true)));
      c.on('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`no RPC server on port ${port} after ${ms} ms`);
};

describeShared('RPC: a model split across rpc-server processes', () => {
  const servers: ChildProcess[] = [];
  const endpoints: string[] = [];
  let output = '';

  beforeAll(async () => {
    for (let i = 0; i < 2; i++) {
      const port = await freePort();
      const child = spawn(process.execPath, ['--import', 'tsx', join(repoRoot, 'lib', 'cli.ts'), 'rpc-server', '--port', String(port), '--threads', '1', '--gpu', 'off'], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      child.stdout!.on('data', (d: Buffer) => (output += d.toString()));
      child.stderr!.on('data', (d: Buffer) => (output += d.toString()));
      servers.push(child);
      endpoints.push(`127.0.0.1:${port}`);
    }
    await Promise.all(endpoints.map((e) => accepting(Number(e.split(':')[1]), 60_000)));
  });

  afterAll(() => {
    for (const s of servers) s.kill('SIGTERM');
  });

  it('generates exactly what the local run does, with the layers on the two servers', async () => {
    const path = shared('tinystories-656k-q8_0.gguf');
    const prompt = 'Once upon a time, there was a little';
    const local = await loadModel(path, { gpu: false });
    const localCtx = await local.createContext({ contextSize: 256 });
    const expected = await localCtx.createSession().complete(prompt, { maxTokens: 48, temperature: 0 });
    await local.dispose();

    const lines: string[] = [];
    setLogLevel('info');
    setLogger((_l, m) => lines.push(m));
    let remote;
    try {
      remote = await loadModel(path, { rpcServers: endpoints, gpu: false });
    } finally {
      setLogger(null);
      setLogLevel('warn');
    }
    expect(remote.placement.devices).toEqual(endpoints);
    expect(remote.placement.gpuLayers).toBe(-1);
    // llama.cpp put model buffers on both servers' devices.
    for (const e of endpoints) expect(lines.some((l) => l.includes(`[${e}]`) && /model buffer size/.test(l)), lines.join('\n')).toBe(true);
    const ctx = await remote.createContext({ contextSize: 256 });
    const got = await ctx.createSession().complete(prompt, { maxTokens: 48, temperature: 0 });
    expect(got.text).toBe(expected.text);
    expect(got.tokens).toEqual(expected.tokens);
    await remote.dispose();
    expect(output).toMatch(/rpc-server on 127\.0\.0\.1:\d+ serving the CPU/);
  });

  it('fails with ERR_BACKEND_UNAVAILABLE when a server is not there', async () => {
    const port = await freePort();
    const e = await rejectsWith(loadModel(shared('stories260k.gguf'), { rpcServers: [`127.0.0.1:${port}`] }), 'ERR_BACKEND_UNAVAILABLE');
    expect(e.message).toContain(`127.0.0.1:${port}`);
  });
});

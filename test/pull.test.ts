import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { pullModel } from 'llama-addon';
import { describeShared, fixtures, repoRoot, shared } from './helpers/models.js';

// A local stand-in for the hub: serves one model file with range requests and the hub's headers, and can
// cut a transfer short or lie about the checksum.
describeShared('pulling models (local HTTP server)', () => {
  const file = readFileSync(shared('stories260k.gguf'));
  const sha = createHash('sha256').update(file).digest('hex');
  const cacheDir = join(fixtures, 'pull-cache');
  let server: Server;
  let base = '';
  let cutAfter = 0;
  let lieSha = false;
  // How a resume is answered: from the byte asked for, from the file's start, or from another byte.
  let resumeFrom: 'asked' | 'start' | 'elsewhere' = 'asked';
  const ranges: string[] = [];
  beforeAll(async () => {
    rmSync(cacheDir, { recursive: true, force: true });
    mkdirSync(cacheDir, { recursive: true });
    server = createServer((req, res) => {
      if (req.url?.endsWith('/silent.gguf')) return; // accepts the connection and never answers
      if (!req.url?.includes('/resolve/main/stories260k.gguf') && !req.url?.endsWith('/plain.gguf')) {
        res.writeHead(404).end();
        return;
      }
      const headers: Record<string, string> = { 'x-linked-size': String(file.length), 'x-linked-etag': `"${lieSha ? '0'.repeat(64) : sha}"`, 'accept-ranges': 'bytes' };
      if (req.method === 'HEAD') {
        res.writeHead(200, { ...headers, 'content-length': String(file.length) }).end();
        return;
      }
      const range = /bytes=(\d+)-/.exec(req.headers.range ?? '');
      const asked = range ? Number(range[1]) : 0;
      const start = resumeFrom === 'start' ? 0 : resumeFrom === 'elsewhere' && asked > 0 ? asked - 1000 : asked;
      ranges.push(req.headers.range ?? 'none');
      res.writeHead(range ? 206 : 200, {
        ...headers,
        'content-length': String(file.length - start),
        ...(range ? { 'content-range': `bytes ${start}-${file.length - 1}/${file.length}` } : {}),
      });
      if (cutAfter > 0) {
        // send part of the body, then drop the connection
        res.write(file.subarray(start, start + cutAfter), () => res.destroy());
        return;
      }
      res.end(file.subarray(start));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    process.env.HF_ENDPOINT = base;
  });
  afterAll(() => {
    delete process.env.HF_ENDPOINT;
    server.close();
  });

  it('downloads an hf: reference, checks it, and finds it in the cache afterwards', async () => {
    const seen: number[] = [];
    const r = await pullModel('hf:ggml-org/models/stories260k.gguf', { cacheDir, onProgress: (n) => seen.push(n) });
    expect(r.downloaded).toBe(true);
    expect(r.sha256).toBe(sha);
    expect(readFileSync(r.path).equals(file)).toBe(true);
    expect(seen.at(-1)).toBe(file.length);
    const again = await pullModel('hf:ggml-org/models/stories260k.gguf', { cacheDir });
    expect(again).toMatchObject({ downloaded: false, path: r.path, sha256: sha });
  });

  it('resumes an interrupted transfer where it stopped', async () => {
    const ref = 'hf:owner/other/stories260k.gguf';
    cutAfter = 300_000;
    ranges.length = 0;
    let e: unknown;
    try {
      e = await pullModel(ref, { cacheDir }).catch((x: unknown) => x);
    } finally {
      cutAfter = 0;
    }
    expect(e).toMatchObject({ code: 'ERR_IO' });
    // The server sent 300,000 bytes before it dropped the connection. fetch discards what it had received
    // but not yet handed over when the connection breaks, so a busy reader may have fewer: the partial file
    // holds exactly what the message says, and the resume asks for the rest from there.
    const kept = Number(/interrupted after (\d+) bytes/.exec((e as Error).message)?.[1]);
    const partial = join(cacheDir, 'hf', 'owner', 'other', 'stories260k.gguf.partial');
    expect(kept).toBeGreaterThan(0);
    expect(kept).toBeLessThanOrEqual(300_000);
    expect(statSync(partial).size).toBe(kept);
    const r = await pullModel(ref, { cacheDir });
    expect(ranges).toEqual(['none', `bytes=${kept}-`]);
    expect(readFileSync(r.path).equals(file)).toBe(true);
    expect(existsSync(partial)).toBe(false);
  });

  // Found by a hostile review: a resume answered from the file's start was appended to the partial file.
  it('checks where a resumed transfer starts: from the start it starts over, from elsewhere it is refused', async () => {
    for (const mode of ['start', 'elsewhere'] as const) {
      const ref = `hf:owner/resume-${mode}/stories260k.gguf`;
      const partial = join(cacheDir, 'hf', 'owner', `resume-${mode}`, 'stories260k.gguf.partial');
      cutAfter = 300_000;
      await expect(pullModel(ref, { cacheDir })).rejects.toMatchObject({ code: 'ERR_IO' });
      cutAfter = 0;
      expect(statSync(partial).size).toBeGreaterThan(0);
      resumeFrom = mode;
      try {
        if (mode === 'start') {
          const r = await pullModel(ref, { cacheDir });
          expect(readFileSync(r.path).equals(file)).toBe(true);
        } else {
          const e = await pullModel(ref, { cacheDir }).catch((x: unknown) => x);
          expect(e).toMatchObject({ code: 'ERR_IO' });
          expect((e as Error).message).toMatch(/resumed .* at byte \d+, not at byte \d+ where the partial file ends; the partial file was deleted/);
          expect(existsSync(partial)).toBe(false);
        }
      } finally {
        resumeFrom = 'asked';
      }
    }
  });

  it('every failure is a LlamaError: a server that never answers, a bad URL, a cache folder that cannot be made', async () => {
    const t0 = Date.now();
    const e = await pullModel(`${base}/silent.gguf`, { cacheDir, stallMs: 300 }).catch((x: unknown) => x);
    expect(e).toMatchObject({ code: 'ERR_IO' });
    expect((e as Error).message).toMatch(/sent nothing for 300 ms/);
    expect(Date.now() - t0).toBeLessThan(10_000);
    await expect(pullModel(`${base}/x/%E0%A4%A.gguf`, { cacheDir })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(pullModel(`${base}/plain.gguf`, { cacheDir: '/dev/null' })).rejects.toMatchObject({ code: 'ERR_IO' });
    // Under /proc, Node's recursive mkdir never returned (ENOENT for a folder whose parent exists): pull hung.
    for (const dir of ['/proc/llama-cache', '/proc/self/llama/cache', '/dev/null/x']) {
      await expect(pullModel(`${base}/plain.gguf`, { cacheDir: dir }), dir).rejects.toMatchObject({ code: 'ERR_IO' });
    }
    await expect(pullModel(`${base}/plain.gguf`, { cacheDir, stallMs: 0 })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    // A host that cannot be reached: the message says why (fetch's own says only "fetch failed"; a
    // newcomer offline saw nothing more).
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((r) => closed.close(() => r()));
    const refused = await pullModel(`http://127.0.0.1:${port}/m.gguf`, { cacheDir }).catch((x: unknown) => x);
    expect(refused).toMatchObject({ code: 'ERR_IO' });
    expect((refused as Error).message).toMatch(/^Could not reach http:\/\/127\.0\.0\.1:\d+\/m\.gguf: fetch failed: .*ECONNREFUSED/);
  });

  it('deletes a download whose checksum does not match', async () => {
    lieSha = true;
    try {
      const e = await pullModel('hf:owner/third/stories260k.gguf', { cacheDir }).catch((x: unknown) => x);
      expect((e as { code: string }).code).toBe('ERR_IO');
      expect((e as Error).message).toMatch(/corrupt: its SHA-256 is/);
      expect(existsSync(join(cacheDir, 'hf', 'owner', 'third', 'stories260k.gguf'))).toBe(false);
      expect(existsSync(join(cacheDir, 'hf', 'owner', 'third', 'stories260k.gguf.partial'))).toBe(false);
    } finally {
      lieSha = false;
    }
    await expect(pullModel(`${base}/nothing-here.gguf`, { cacheDir })).rejects.toThrow(/not found/);
    await expect(pullModel('hf:only-two/parts', { cacheDir })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    // References never reach outside the cache folder.
    await expect(pullModel('hf:../../etc/passwd', { cacheDir })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(pullModel(`${base}/a/%2e%2e%2f%2e%2e%2fescape.gguf`, { cacheDir })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
  });

  it('pulls from the command line, and --model takes a reference', async () => {
    // Asynchronous: the server that answers the child runs in this process.
    const run = promisify(execFile);
    const env = { ...process.env, HF_ENDPOINT: base, LLAMA_ADDON_CACHE: cacheDir };
    const cli = ['--import', 'tsx', join(repoRoot, 'lib', 'cli.ts')];
    const pulled = await run(process.execPath, [...cli, 'pull', `${base}/plain.gguf`, '--json'], { cwd: repoRoot, env });
    expect(JSON.parse(pulled.stdout)).toMatchObject({ sha256: sha, size: file.length });
    const r = await run(process.execPath, [...cli, 'complete', '--model', 'hf:ggml-org/models/stories260k.gguf', '--max-tokens', '6', '--temperature', '0', 'Once upon a time'], { cwd: repoRoot, env });
    expect(r.stdout.startsWith(', there was a little')).toBe(true);
  });
});

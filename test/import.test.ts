// Importing the package loads only what the core API needs: the server's dependencies load with the server.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { repoRoot } from './helpers/models.js';

it('require("llama-addon") loads neither fastify nor prom-client; startServer does', () => {
  const script = `
    const lib = require(${JSON.stringify(join(repoRoot, 'dist', 'cjs', 'index.js'))});
    const loaded = () => Object.keys(require.cache).filter((k) => /node_modules[\\\\/](fastify|prom-client)[\\\\/]/.test(k)).length;
    const before = loaded();
    lib.startServer({ models: [], port: 0 }).then((s) => s.close(), () => {}).finally(() => {
      console.log(JSON.stringify({ before, after: loaded() }));
    });`;
  const r = spawnSync(process.execPath, ['-e', script], { cwd: repoRoot, encoding: 'utf8', timeout: 60_000 });
  expect(r.status, r.stderr).toBe(0);
  const { before, after } = JSON.parse(r.stdout.trim().split('\n').pop()!);
  expect(before).toBe(0);
  expect(after).toBeGreaterThan(0);
});

// The published types describe the public API only: members marked @internal (native handles, the
// session's start(), the context's residency, constructors) are stripped from dist/**/*.d.ts.
it('the published .d.ts files hold no internals', async () => {
  const { readFileSync } = await import('node:fs');
  const dts = (f: string) => readFileSync(join(repoRoot, 'dist', f), 'utf8');
  const session = dts('core/session.d.ts');
  const context = dts('core/context.d.ts');
  const model = dts('core/model.d.ts');
  expect(session).toContain('generate(');
  expect(session).not.toMatch(/\bstart</);
  expect(session).not.toContain('sharableTokens');
  expect(context).toContain('createSession(');
  expect(context).not.toMatch(/\bhandle\(caller/);
  expect(context).not.toContain('get residency');
  expect(model).toContain('tokenizeAsync(');
  expect(model).not.toContain('nativeHandle');
});

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

// Long native work runs on the addon's own threads (native/pool_worker.h), not on libuv's pool: there a
// model load or a quantize held one of its threads (four by default) for seconds to minutes, and the host
// application's file reads, DNS lookups and crypto waited behind it. With libuv's pool cut to one thread,
// file reads go on while the work runs (before, none finished until it had).
import { spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { writeSyntheticLlama } from '../lib/gguf/index.js';
import { fixtures, repoRoot, vocab } from './helpers/models.js';

it("a quantize and a model load leave libuv's threads to the host: file reads go on beside them", async () => {
  // About 130 MB of F32 weights: quantizing or reading them takes far longer than reading a small file.
  const input = join(fixtures, 'libuv-pool-f32.gguf');
  await writeSyntheticLlama(input, { vocabFrom: vocab('llama-spm'), embeddingLength: 512, layers: 4, heads: 4, feedForwardLength: 2048, type: 'f32', seed: 9 });
  const output = join(fixtures, 'libuv-pool-q8.gguf');
  rmSync(output, { force: true });
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(repoRoot, 'test', 'helpers', 'libuv-pool-child.ts'), input, output, join(repoRoot, 'package.json')], {
    cwd: repoRoot,
    env: { ...process.env, UV_THREADPOOL_SIZE: '1' },
    encoding: 'utf8',
    timeout: 120_000,
  });
  expect(r.status, r.stderr).toBe(0);
  const { quantizing, loading } = JSON.parse(r.stdout) as { quantizing: number; loading: number };
  expect(quantizing, 'file reads that finished while the model was quantized').toBeGreaterThanOrEqual(3);
  expect(loading, 'file reads that finished while the model loaded').toBeGreaterThanOrEqual(3);
  rmSync(output, { force: true });
}, 180_000);

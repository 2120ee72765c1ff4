// A model or adapter that loads can be used: files that llama.cpp would load and then crash on at the first
// decode (on ggml's compute threads, where nothing can catch) are rejected at load instead. Each sweep runs
// in a child process, so that a crash fails the test naming the case instead of taking the suite down.
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { readGguf, writeSyntheticLlama, writeSyntheticLora } from '../lib/gguf/index.js';
import { GgufType } from '../lib/gguf/types.js';
import { fixtures, repoRoot, vocab } from './helpers/models.js';
import { setTensorType } from './helpers/mutate-gguf.js';

const shape = { embeddingLength: 64, layers: 1, heads: 4, headsKv: 2, feedForwardLength: 128 } as const;
const dir = join(fixtures, 'hardening-models');
const T = { F32: 0, F16: 1, I8: 24, I16: 25, I32: 26, I64: 27, F64: 28, BF16: 30, Q8_0: 8 } as const;

interface Case {
  id: string;
  model: string;
  lora?: string;
}

/** Runs the cases in a child process; returns each case's outcome ('ok' or an error code). */
function runCases(cases: Case[]): Map<string, string> {
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(repoRoot, 'test', 'helpers', 'model-case-child.ts'), JSON.stringify(cases)], {
    cwd: repoRoot,
    encoding: 'utf8',
    timeout: 240_000,
  });
  const out = new Map<string, string>();
  let started: string | null = null;
  for (const line of r.stdout.split('\n')) {
    const [kind, id, ...rest] = line.split(' ');
    if (kind === 'START') started = id;
    if (kind === 'RESULT') {
      out.set(id, rest.join(' '));
      started = null;
    }
  }
  if (r.status !== 0 || r.signal !== null) {
    throw new Error(`the child process ended (status ${r.status}, signal ${r.signal}) during case ${started}:\n${r.stderr.slice(-2000)}`);
  }
  return out;
}

let base: string;
beforeAll(async () => {
  mkdirSync(dir, { recursive: true });
  base = join(dir, 'base.gguf');
  await writeSyntheticLlama(base, { vocabFrom: vocab('llama-spm'), ...shape, type: 'f32', seed: 3 });
});

async function variant(id: string, metadata: Parameters<typeof writeSyntheticLlama>[1]['metadata'], type: 'f32' | 'f16' = 'f32'): Promise<Case> {
  const path = join(dir, `${id}.gguf`);
  await writeSyntheticLlama(path, { vocabFrom: vocab('llama-spm'), ...shape, type, seed: 3, metadata });
  return { id, model: path };
}

describe('models that load can be used', () => {
  it('rejects the known crashing files with ERR_INVALID_MODEL, and still runs the valid ones', async () => {
    const cases: Case[] = [
      { id: 'valid', model: base },
      await variant('eps-minus-1', [{ key: 'llama.attention.layer_norm_rms_epsilon', type: GgufType.FLOAT32, value: -1 }]),
      await variant('eps-nan', [{ key: 'llama.attention.layer_norm_rms_epsilon', type: GgufType.FLOAT32, value: NaN }]),
      await variant('tokenizer-none', [{ key: 'tokenizer.ggml.model', type: GgufType.STRING, value: 'none' }]),
      await variant('tokenizer-no-vocab', [{ key: 'tokenizer.ggml.model', type: GgufType.STRING, value: 'no_vocab' }]),
    ];
    const normF16 = join(dir, 'norm-f16.gguf');
    copyFileSync(base, normF16);
    setTensorType(normF16, 'blk.0.attn_norm.weight', T.F16);
    cases.push({ id: 'norm-f16', model: normF16 });
    const outputI32 = join(dir, 'output-i32.gguf');
    copyFileSync(base, outputI32);
    setTensorType(outputI32, 'output.weight', T.I32);
    cases.push({ id: 'output-i32', model: outputI32 });

    const out = runCases(cases);
    expect(out.get('valid')).toBe('ok');
    for (const c of cases.slice(1)) expect(out.get(c.id), c.id).toBe('ERR_INVALID_MODEL');
  });

  it('sweep: every tensor retyped to every type is either rejected or runs', async () => {
    const g = await readGguf(base);
    const cases: Case[] = [];
    for (const t of g.tensors) {
      // Same-size or smaller element types keep the data section large enough for the file to stay readable.
      for (const [name, type] of Object.entries(T)) {
        if (type === t.type || name === 'Q8_0' || name === 'I64' || name === 'F64') continue;
        const id = `${t.name}-${name}`.replace(/[^\w.-]/g, '_');
        const path = join(dir, `${id}.gguf`);
        copyFileSync(base, path);
        setTensorType(path, t.name, type);
        cases.push({ id, model: path });
      }
    }
    expect(cases.length).toBeGreaterThan(40);
    const out = runCases(cases);
    for (const c of cases) {
      expect(['ok', 'ERR_INVALID_MODEL'], `${c.id}: ${out.get(c.id)}`).toContain(out.get(c.id));
    }
    // The kinds the issue names are refused, whatever tensor carries them.
    for (const c of cases) {
      if (/-I(8|16|32)$/.test(c.id)) expect(out.get(c.id), c.id).toBe('ERR_INVALID_MODEL');
      if (/norm\.weight-(F16|BF16)$/.test(c.id)) expect(out.get(c.id), c.id).toBe('ERR_INVALID_MODEL');
    }
  }, 300_000);

  it('weights of a quantized type that is only ever an activation (Q8_1, Q8_K) are refused, in a model and in an adapter', async () => {
    const Q8_1 = 9;
    const Q8_K = 15;
    const cases: Case[] = [];
    // Same-size blocks are not needed: the check refuses at load, before any data is read.
    for (const [name, type] of [['Q8_1', Q8_1], ['Q8_K', Q8_K]] as const) {
      for (const tensor of ['blk.0.attn_q.weight', 'token_embd.weight', 'output.weight']) {
        const id = `${tensor}-${name}`.replace(/[^\w.-]/g, '_');
        const path = join(dir, `${id}.gguf`);
        copyFileSync(base, path);
        setTensorType(path, tensor, type);
        cases.push({ id, model: path });
      }
    }
    const lora = join(dir, 'lora-q8k-base.gguf');
    await writeSyntheticLora(lora, { ...shape, seed: 5 });
    for (const [name, type] of [['Q8_1', Q8_1], ['Q8_K', Q8_K]] as const) {
      const path = join(dir, `lora-a-${name}.gguf`);
      copyFileSync(lora, path);
      setTensorType(path, 'blk.0.attn_q.weight.lora_a', type);
      cases.push({ id: `lora-a-${name}`, model: base, lora: path });
    }
    const out = runCases(cases);
    for (const c of cases) expect(out.get(c.id), c.id).toBe(c.lora ? 'ERR_INVALID_ADAPTER' : 'ERR_INVALID_MODEL');
  }, 120_000);

  it('sweep: every floating-point hyper-parameter set to NaN, ±Infinity, -1 or 0 is either rejected or runs', async () => {
    const keys = ['llama.attention.layer_norm_rms_epsilon', 'llama.rope.freq_base', 'llama.rope.scaling.factor', 'llama.attention.scale', 'llama.rope.scaling.attn_factor'];
    const cases: Case[] = [];
    for (const key of keys) {
      for (const [label, value] of [['nan', NaN], ['inf', Infinity], ['-inf', -Infinity], ['-1', -1], ['0', 0]] as const) {
        cases.push(await variant(`${key.replace(/\W/g, '_')}-${label}`, [{ key, type: GgufType.FLOAT32, value }]));
      }
    }
    const out = runCases(cases);
    for (const c of cases) expect(['ok', 'ERR_INVALID_MODEL'], `${c.id}: ${out.get(c.id)}`).toContain(out.get(c.id));
    for (const c of cases) {
      if (/-(nan|inf|-inf)$/.test(c.id)) expect(out.get(c.id), c.id).toBe('ERR_INVALID_MODEL');
      if (c.id.includes('epsilon') && /-(-1|0)$/.test(c.id)) expect(out.get(c.id), c.id).toBe('ERR_INVALID_MODEL');
    }
  }, 300_000);

  it('sweep: attention shapes that do not divide evenly are rejected', async () => {
    const cases: Case[] = [];
    for (const [h, kv] of [[4, 0], [4, 3], [4, 8], [3, 2]] as const) {
      cases.push(await variant(`heads-${h}-kv-${kv}`, [
        { key: 'llama.attention.head_count', type: GgufType.UINT32, value: h },
        { key: 'llama.attention.head_count_kv', type: GgufType.UINT32, value: kv },
      ]));
    }
    const out = runCases(cases);
    for (const c of cases) expect(['ok', 'ERR_INVALID_MODEL'], `${c.id}: ${out.get(c.id)}`).toContain(out.get(c.id));
    expect(out.get('heads-4-kv-0')).toBe('ERR_INVALID_MODEL');
    expect(out.get('heads-4-kv-3')).toBe('ERR_INVALID_MODEL');
  }, 120_000);
});

describe('LoRA adapters that load can be used', () => {
  it('rejects adapters whose matrices have integer types with ERR_INVALID_ADAPTER (every tensor, every integer type)', async () => {
    const good = join(dir, 'lora-good.gguf');
    await writeSyntheticLora(good, { ...shape, seed: 5 });
    const g = await readGguf(good);
    const cases: Case[] = [{ id: 'lora-good', model: base, lora: good }];
    for (const t of g.tensors) {
      for (const [name, type] of [['I32', T.I32], ['I8', T.I8], ['I16', T.I16]] as const) {
        const id = `lora-${t.name}-${name}`.replace(/[^\w.-]/g, '_');
        const path = join(dir, `${id}.gguf`);
        copyFileSync(good, path);
        setTensorType(path, t.name, type);
        cases.push({ id, model: base, lora: path });
      }
    }
    const out = runCases(cases);
    expect(out.get('lora-good')).toBe('ok');
    for (const c of cases.slice(1)) expect(out.get(c.id), c.id).toBe('ERR_INVALID_ADAPTER');
  }, 300_000);
});

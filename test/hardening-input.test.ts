// No input ends the process: text a vocabulary cannot represent, oversized input, impossible thread counts,
// session files that lie, files that are not files. Each kind is swept, not only the example that found it.
import { spawnSync } from 'node:child_process';
import { mkdirSync, readdirSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jsonSchemaToGrammar, limits, loadModel, LlamaError, setLogLevel, type LlamaModel } from 'llama-addon';
import { rejectsWith, throwsWith } from './helpers/errors.js';
import { describeShared, fixtures, repoRoot, shared, tinySynthetic, vocab, vocabDir } from './helpers/models.js';

setLogLevel('error');

/** A seeded sample of code points from every plane and category: ASCII, Latin, CJK, emoji, combining, controls. */
function sampleStrings(seed: number, n: number): string[] {
  let s = seed >>> 0 || 1;
  const rand = () => ((s = (s * 1103515245 + 12345) >>> 0) / 0x100000000);
  const ranges: Array<[number, number]> = [
    [0x20, 0x7e], [0x00, 0x1f], [0xa0, 0x24f], [0x370, 0x52f], [0x590, 0x6ff], [0x900, 0xdff], [0x3040, 0x30ff],
    [0x4e00, 0x9fff], [0xac00, 0xd7a3], [0x300, 0x36f], [0x1f300, 0x1faff], [0x10000, 0x1000f], [0xe000, 0xe0ff],
    [0xfff0, 0xfffd], [0x20000, 0x2000f], [0xe0000, 0xe007f], [0x10fff0, 0x10ffff],
  ];
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    let str = '';
    const len = 1 + Math.floor(rand() * 12);
    for (let k = 0; k < len; k++) {
      const [lo, hi] = ranges[Math.floor(rand() * ranges.length)];
      str += String.fromCodePoint(lo + Math.floor(rand() * (hi - lo + 1)));
    }
    out.push(str);
  }
  return out;
}

describeShared('text a vocabulary cannot represent', () => {
  let model: LlamaModel;
  beforeAll(async () => {
    model = await loadModel(shared('tinystories-656k-q8_0.gguf'));
  });
  afterAll(() => model.dispose());

  it('is ERR_TOKENIZE naming the character, for the examples from the issue', () => {
    for (const [text, code] of [['é', 'U+00E9'], ['{', 'U+007B'], ['~', 'U+007E'], ['un café', 'U+00E9']] as const) {
      const e = throwsWith(() => model.tokenize(text), 'ERR_TOKENIZE');
      expect(e.message).toContain(code);
    }
    // The model still works afterwards.
    expect(model.tokenize('Once upon a time').length).toBeGreaterThan(0);
  });

  it('reaches a chat and a session as an error, not a crash', async () => {
    await using ctx = await model.createContext({ contextSize: 256 });
    using s = ctx.createSession();
    await rejectsWith(s.complete('Un café, ¿por qué?', { maxTokens: 4 }), 'ERR_TOKENIZE');
    const r = await s.complete('Once upon a time', { maxTokens: 4, temperature: 0 });
    expect(r.tokens.length).toBeGreaterThan(0);
  });

  it('sweep: 3000 strings from every Unicode plane on every vocabulary give tokens or ERR_TOKENIZE', async () => {
    const files = [
      ...readdirSync(vocabDir).filter((f) => f.startsWith('ggml-vocab-') && f.endsWith('.gguf')).map((f) => join(vocabDir, f)),
      shared('tinystories-656k-q8_0.gguf'), shared('stories260k.gguf'), shared('llama-2-tiny-random.gguf'), shared('vocab-phi-3.gguf'),
    ];
    const strings = sampleStrings(42, 150);
    let errors = 0;
    let ok = 0;
    for (const f of files) {
      const m = await loadModel(f, { vocabOnly: true });
      try {
        for (const text of strings) {
          try {
            const t = m.tokenize(text, { special: true });
            expect(t).toBeInstanceOf(Int32Array);
            m.detokenize(t);
            ok++;
          } catch (e) {
            expect(e).toBeInstanceOf(LlamaError);
            expect((e as LlamaError).code, `${f}: ${JSON.stringify(text)}: ${(e as Error).message}`).toBe('ERR_TOKENIZE');
            errors++;
          }
        }
      } finally {
        await m.dispose();
      }
    }
    expect(files.length).toBeGreaterThan(15);
    expect(ok).toBeGreaterThan(0);
    // The 656K vocabulary has no byte tokens: some strings must have been refused.
    expect(errors).toBeGreaterThan(0);
  }, 120_000);
});

describeShared('input sizes', () => {
  let model: LlamaModel;
  beforeAll(async () => {
    model = await loadModel(shared('stories260k.gguf'));
  });
  afterAll(() => model.dispose());

  it('token ids are checked as the caller wrote them, each bad item named by its index, in every API that takes them', async () => {
    // 2**32 + 5 became token 5 in an Int32Array and was detokenized; 2**31 was reported as -2147483648.
    const bad: Array<[unknown[], number, string]> = [
      [[1, 2 ** 32 + 5], 1, '4294967301'], [[2 ** 31], 0, '2147483648'], [[3, -1], 1, '-1'], [[512], 0, '512'],
      [[1, 1.5], 1, '1.5'], [['a', 'b'], 0, '"a"'], [[1, null], 1, 'null'], [[1, [2]], 1, 'an array of length 1'], [[NaN], 0, 'NaN'],
    ];
    const ctx = await model.createContext({ contextSize: 64 });
    try {
      const s = ctx.createSession();
      for (const [tokens, at, shown] of bad) {
        const expected = `expected a token id from 0 to 511 at index ${at}, received ${shown}`;
        expect(throwsWith(() => model.detokenize(tokens as number[]), 'ERR_INVALID_ARGUMENT').message).toBe(`Invalid option "tokens": ${expected}`);
        expect(throwsWith(() => s.generate(tokens as number[]), 'ERR_INVALID_ARGUMENT').message).toBe(`Invalid option "input": ${expected}`);
        await expect(s.complete(tokens as number[], { beams: 2, maxTokens: 1 })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT', message: `Invalid option "input": ${expected}` });
      }
      expect(throwsWith(() => model.detokenize(Int32Array.of(1, 600)), 'ERR_INVALID_ARGUMENT').message).toBe('Invalid option "tokens": expected a token id from 0 to 511 at index 1, received 600');
      // Lazy grammar trigger tokens: the same wording.
      expect(throwsWith(() => s.generate('x', { grammar: 'root ::= "a"', grammarTriggers: { tokens: [3, 2 ** 32 + 5] } }), 'ERR_INVALID_ARGUMENT').message)
        .toBe('Invalid option "grammarTriggers.tokens": expected a token id from 0 to 511 at index 1, received 4294967301');
      // logitBias keys name a token only in its decimal form (" 407", "407.0", "0x197" and "" named one through Number()).
      for (const key of [' 407', '407.0', '0x197', '407e0', '+407', '', '01', '-0']) {
        expect(throwsWith(() => s.generate('x', { logitBias: { [key]: 1 } }), 'ERR_INVALID_ARGUMENT').message, JSON.stringify(key)).toContain('token ids from 0 to 511 as keys');
      }
      expect((await s.complete('x', { logitBias: { '407': 1, 0: 0 }, maxTokens: 1 })).usage.completionTokens).toBe(1);
    } finally {
      await ctx.dispose();
    }
  });

  it('tokenize takes at most limits.tokenizeBytes, at once and without blocking for long', () => {
    const t0 = Date.now();
    const e = throwsWith(() => model.tokenize('ab'.repeat(50e6)), 'ERR_LIMIT_EXCEEDED');
    expect(e.message).toContain(String(limits.tokenizeBytes));
    expect(Date.now() - t0).toBeLessThan(5_000);
    // A text just under the limit is not refused for its size.
    expect(model.tokenize('a'.repeat(1 << 16)).length).toBeGreaterThan(0);
  });

  // Two quadratic loops in llama.cpp's tokenizer, patched (patches/llama.cpp): SentencePiece byte fallback
  // copied the whole output for each character it spelled in bytes, and the special-token partition walked
  // its fragment list from the start for each match. Quadratic, these took minutes; linear, about a second.
  // The bounds leave a margin of tens for a busy machine. (fuzz/tokenize-scaling.ts sweeps every vocabulary.)
  it('byte fallback is linear: 4 MiB of characters without tokens take seconds, not minutes', () => {
    const text = '日本'.repeat(700_000);
    const t0 = Date.now();
    const tokens = model.tokenize(text, { addBos: false });
    expect(Date.now() - t0).toBeLessThan(60_000);
    // stories260k spells each of these characters as its three UTF-8 bytes (plus the leading space piece).
    expect(tokens.length).toBeGreaterThanOrEqual(6 * 700_000);
    expect(model.detokenize(tokens).trimStart()).toBe(text);
  }, 120_000);

  it('the special-token partition is linear: 1 MiB that matches user-defined tokens throughout', async () => {
    const ds = await loadModel(vocab('deepseek-llm'), { vocabOnly: true });
    try {
      const unit = 'Ünïcödé wörds, ';
      const small = ds.tokenize(unit, { addBos: false });
      const text = unit.repeat(Math.floor((1 << 20) / Buffer.byteLength(unit)));
      const t0 = Date.now();
      const tokens = ds.tokenize(text, { addBos: false });
      // 86 s before the patch on this machine, 7 s after.
      expect(Date.now() - t0).toBeLessThan(45_000);
      expect(ds.detokenize(tokens)).toBe(text);
      expect(tokens.length).toBeGreaterThanOrEqual(small.length * Math.floor(text.length / unit.length) * 0.9);
    } finally {
      await ds.dispose();
    }
  }, 120_000);

  it('threads beyond ggml\'s maximum are an argument error', async () => {
    await rejectsWith(model.createContext({ threads: 1000 }), 'ERR_INVALID_ARGUMENT');
    await rejectsWith(model.createContext({ threadsBatch: limits.threads + 1 }), 'ERR_INVALID_ARGUMENT');
  });

  it('a context whose threads cannot be created (address-space limit) is an error, not an exit', () => {
    const prlimit = spawnSync('prlimit', ['--version'], { encoding: 'utf8' });
    if (prlimit.status !== 0) return; // util-linux missing: nothing to limit with
    // Plain ESM on the built package (dist/): tsx's WebAssembly needs more address space than the limit leaves.
    const script = `
      import { loadModel, setLogLevel } from ${JSON.stringify(join(repoRoot, 'dist', 'index.js'))};
      setLogLevel('silent');
      const m = await loadModel(${JSON.stringify(shared('stories260k.gguf'))});
      console.log('LOADED');
      const { readFileSync } = await import('node:fs');
      const threads = () => Number(/Threads:\\s+(\\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))[1]);
      const before = threads();
      try { await m.createContext({ threads: 512, contextSize: 128 }); console.log('RESULT created'); }
      catch (e) { console.log('RESULT ' + e.code); console.log('LEFT ' + (threads() - before)); }
      const ctx = await m.createContext({ threads: 1, contextSize: 128 });
      const r = await ctx.createSession().complete('Once', { maxTokens: 2, temperature: 0 });
      console.log('AFTER ' + r.tokens.length);
      process.exit(0);`;
    const file = join(fixtures, 'threads-child.mjs');
    mkdirSync(fixtures, { recursive: true });
    writeFileSync(file, script);
    // 512 threads with 8 MiB stacks need 4 GiB of address space on their own: the smallest limit that lets
    // Node itself start leaves too little for them.
    let out = '';
    for (const gib of [4, 5, 6]) {
      const r = spawnSync('prlimit', [`--as=${gib * 2 ** 30}`, process.execPath, file], { cwd: repoRoot, encoding: 'utf8', timeout: 120_000 });
      if (!r.stdout.includes('LOADED')) continue;
      expect(r.signal, r.stderr).toBeNull();
      out = r.stdout;
      break;
    }
    expect(out, 'Node could not start under any of the address-space limits tried').toContain('LOADED');
    expect(out).toMatch(/RESULT (created|ERR_CONTEXT_CREATE)/);
    // A refused thread count leaves no thread behind (ggml's pool would have left hundreds spinning).
    if (out.includes('RESULT ERR_CONTEXT_CREATE')) expect(out).toMatch(/LEFT (0|-\d+)\b/);
    expect(out).toContain('AFTER 2');
  }, 150_000);
});

describeShared('session files that lie', () => {
  let model: LlamaModel;
  const dir = join(fixtures, 'session-hardening');
  beforeAll(async () => {
    model = await loadModel(shared('stories260k.gguf'));
    mkdirSync(dir, { recursive: true });
  });
  afterAll(async () => {
    await model.dispose();
    rmSync(dir, { recursive: true, force: true });
  });

  /** Rewrites a saved file's state with `edit`, keeping the checksum valid. */
  function craft(from: string, to: string, edit: (state: Buffer, header: Record<string, unknown>) => void): void {
    const buf = readFileSync(from);
    const jsonLength = buf.readUInt32LE(12);
    const header = JSON.parse(buf.subarray(16, 16 + jsonLength).toString('utf8'));
    const stateAt = 16 + jsonLength + 4 * (header.cacheTokens + header.historyTokens);
    const state = Buffer.from(buf.subarray(stateAt));
    edit(state, header);
    header.stateSha256 = createHash('sha256').update(state).digest('hex');
    header.stateBytes = state.length;
    const json = Buffer.from(JSON.stringify(header), 'utf8');
    const head = Buffer.from(buf.subarray(0, 16));
    head.writeUInt32LE(json.length, 12);
    writeFileSync(to, Buffer.concat([head, json, buf.subarray(16 + jsonLength, stateAt), state]));
  }

  it('a valid checksum over a crafted cell count or cell position is ERR_INVALID_STATE, and the context keeps working', async () => {
    await using ctx = await model.createContext({ contextSize: 256, sequences: 2 });
    using s = ctx.createSession();
    const first = await s.complete('Once upon a time', { maxTokens: 8, temperature: 0 });
    const saved = join(dir, 'good.session');
    await s.save(saved);
    // Layout: magic u32, sequence i32, streams u32, then the stream's cell count and cells (pos i32, n_seq u32, seq i32).
    const cellCountAt = 12;
    const cases: Array<[string, (st: Buffer) => void]> = [
      ['count-2^31-1', (st) => st.writeUInt32LE(2 ** 31 - 1, cellCountAt)],
      ['count-2^32-1', (st) => st.writeUInt32LE(2 ** 32 - 1, cellCountAt)],
      ['count-context+1', (st) => st.writeUInt32LE(257, cellCountAt)],
      ['pos-2^31-1', (st) => st.writeInt32LE(2 ** 31 - 1, cellCountAt + 4)],
      ['pos-negative', (st) => st.writeInt32LE(-5, cellCountAt + 4)],
      ['pos-last-huge', (st) => st.writeInt32LE(2 ** 31 - 1, cellCountAt + 4 + 12 * (st.readUInt32LE(cellCountAt) - 1))],
      ['pos-repeated', (st) => st.writeInt32LE(0, cellCountAt + 4 + 12)],
      ['n-seq-2', (st) => st.writeUInt32LE(2, cellCountAt + 8)],
      ['streams-0', (st) => st.writeUInt32LE(0, 8)],
    ];
    for (const [name, edit] of cases) {
      const path = join(dir, `${name}.session`);
      craft(saved, path, edit);
      using other = ctx.createSession();
      const t0 = Date.now();
      const e = await other.load(path).then(() => null, (err: unknown) => err);
      expect(e, name).toBeInstanceOf(LlamaError);
      expect(['ERR_INVALID_STATE'], `${name}: ${(e as Error).message}`).toContain((e as LlamaError).code);
      expect(Date.now() - t0, name).toBeLessThan(10_000);
      // The context still generates what it did before.
      other.reset();
      const again = await other.complete('Once upon a time', { maxTokens: 8, temperature: 0 });
      expect(again.tokens, name).toEqual(first.tokens);
    }
  }, 120_000);

  it('a device, a FIFO or a folder is refused at once with ERR_IO', async () => {
    await using ctx = await model.createContext({ contextSize: 256 });
    using s = ctx.createSession();
    const fifo = join(dir, 'fifo');
    spawnSync('mkfifo', [fifo]);
    for (const path of ['/dev/zero', '/dev/urandom', fifo, dir]) {
      const t0 = Date.now();
      const e = await rejectsWith(s.load(path), 'ERR_IO');
      expect(e.message).toContain(path);
      expect(Date.now() - t0).toBeLessThan(5_000);
    }
    const r = await s.complete('Once upon a time', { maxTokens: 2 });
    expect(r.tokens.length).toBe(2);
  });

  // Found by a hostile review: save() writes beside the name and renames over it, so run as root it replaced
  // /dev/full (and would /dev/null) with a regular file. Only a regular file or a new name is written.
  it('save() refuses a device, a FIFO or a folder, and writes through a symbolic link to its file', async () => {
    const { lstatSync, readlinkSync, statSync, symlinkSync, rmSync } = await import('node:fs');
    await using ctx = await model.createContext({ contextSize: 256 });
    using s = ctx.createSession();
    await s.complete('Once upon a time', { maxTokens: 2, temperature: 0 });
    const fifo = join(dir, 'save-fifo');
    rmSync(fifo, { force: true });
    spawnSync('mkfifo', [fifo]);
    // A device of the test's own (as /dev/null: char 1,3), so that a regression replaces nothing of the system's.
    const device = join(dir, 'save-device');
    rmSync(device, { force: true });
    const made = spawnSync('mknod', [device, 'c', '1', '3']).status === 0;
    for (const path of [...(made ? [device] : []), fifo, dir]) {
      const before = statSync(path);
      const e = await rejectsWith(s.save(path), 'ERR_IO');
      expect(e.message).toMatch(/expected a regular file or a new name, received a (device|FIFO|folder)/);
      const after = statSync(path);
      expect({ dev: after.rdev, ino: after.ino, mode: after.mode }).toEqual({ dev: before.rdev, ino: before.ino, mode: before.mode });
    }
    const real = join(dir, 'real.session');
    const link = join(dir, 'link.session');
    rmSync(real, { force: true });
    rmSync(link, { force: true });
    await s.save(real);
    symlinkSync(real, link);
    await s.save(link);
    expect(lstatSync(link).isSymbolicLink()).toBe(true);
    expect(readlinkSync(link)).toBe(real);
    using t = ctx.createSession();
    await t.load(link);
    expect(Array.from(t.tokens)).toEqual(Array.from(s.tokens));
    expect(t.tokens.length).toBeGreaterThan(2);
  });
});

describeShared('a memory-mapped model file changed while in use', () => {
  it('is refused before a context uses it when rewritten in place; a write-then-rename replacement is safe', async () => {
    const { copyFileSync, appendFileSync, renameSync } = await import('node:fs');
    const dir = join(fixtures, 'mmap-change');
    mkdirSync(dir, { recursive: true });
    const path = join(dir, 'model.gguf');
    copyFileSync(shared('stories260k.gguf'), path);
    const model = await loadModel(path);
    try {
      // Replaced by rename: the mapping keeps the old file; contexts still work.
      copyFileSync(shared('stories260k.gguf'), path + '.new');
      renameSync(path + '.new', path);
      const ctx = await model.createContext({ contextSize: 128 });
      await ctx.dispose();
      // The same file changed in place (here: grown), as a copy tool overwriting it would: refused.
      const inPlace = await loadModel(path);
      try {
        appendFileSync(path, Buffer.alloc(4096));
        const e = await rejectsWith(inPlace.createContext({ contextSize: 128 }), 'ERR_INVALID_MODEL');
        expect(e.message).toContain('changed in place');
      } finally {
        await inPlace.dispose();
      }
      // With useMmap: false the weights are in memory: nothing to refuse.
      const inMemory = await loadModel(path, { useMmap: false });
      appendFileSync(path, Buffer.alloc(4096));
      await (await inMemory.createContext({ contextSize: 128 })).dispose();
      await inMemory.dispose();
    } finally {
      await model.dispose();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

// Values the library writes as JSON (tool schemas, tool-call arguments, tool results, JSON schemas) that
// JSON cannot hold, or that nest too deep, are errors with codes, never a TypeError or a stack overflow.
describe('values that JSON cannot hold', () => {
  let model: LlamaModel;
  beforeAll(async () => {
    model = await loadModel(await tinySynthetic());
  });
  afterAll(() => model.dispose());

  it('are ERR_INVALID_SCHEMA, ERR_INVALID_ARGUMENT or ERR_LIMIT_EXCEEDED, with the caller in the stack', async () => {
    await using ctx = await model.createContext({ contextSize: 128, sequences: 1 });
    const cyclic: Record<string, unknown> = { type: 'object' };
    cyclic.properties = { a: cyclic };
    let deep: Record<string, unknown> = { type: 'string' };
    for (let i = 0; i < 5000; i++) deep = { type: 'object', properties: { a: deep } };
    const cases: Array<[string, () => unknown, string]> = [
      ['a cyclic tool schema', () => ctx.createChat({ tools: [{ name: 'f', parameters: cyclic as never }] }), 'ERR_INVALID_SCHEMA'],
      ['a tool schema 5000 deep', () => ctx.createChat({ tools: [{ name: 'f', parameters: deep as never }] }), 'ERR_LIMIT_EXCEEDED'],
      ['a BigInt in a tool schema', () => ctx.createChat({ tools: [{ name: 'f', parameters: { type: 'object', default: 5n } as never }] }), 'ERR_INVALID_SCHEMA'],
      // A schema is plain data: a toJSON is refused as the function it is, wherever it would lead.
      ['a schema whose toJSON nests 5000 deep', () => jsonSchemaToGrammar({ toJSON: () => deep } as never), 'ERR_INVALID_SCHEMA'],
      ['a schema whose toJSON is cyclic', () => jsonSchemaToGrammar({ toJSON: () => cyclic } as never), 'ERR_INVALID_SCHEMA'],
      ['cyclic tool-call arguments', () => ctx.createChat({ messages: [{ role: 'assistant', content: '', toolCalls: [{ id: 'a', name: 'f', arguments: cyclic }] }] }), 'ERR_INVALID_ARGUMENT'],
    ];
    for (const [what, fn, code] of cases) {
      const e = throwsWith(fn, code);
      expect(e.stack, what).toContain('hardening-input.test.ts');
    }
    using chat = ctx.createChat({ messages: [{ role: 'user', content: 'x' }, { role: 'assistant', content: '', toolCalls: [{ id: 'a1', name: 'f', arguments: {} }] }] });
    throwsWith(() => chat.addToolResult('a1', cyclic), 'ERR_INVALID_ARGUMENT');
    throwsWith(() => chat.addToolResult('a1', 5n), 'ERR_INVALID_ARGUMENT');
    expect(chat.messages).toHaveLength(2);
    chat.addToolResult('a1', { ok: true });
    expect(chat.messages.at(-1)?.content).toBe('{"ok":true}');
  });
});

// session: saved session files, mutated (bytes, header counts, tokens), and crafted ones whose llama.cpp
// state is changed with the checksum recomputed (cell counts, positions, sequence ids, layer counts, types);
// also special paths (/dev/zero, a FIFO, a directory). Expected: ERR_INVALID_STATE / ERR_IO, never a hang or
// a crash, and the session keeps working afterwards.
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Rng } from '../prng.js';
import { runSteps, step, wrong, type Env, type Target } from './common.js';
import { loadGen } from './gen-model.js';
import type { LlamaSession } from '../../lib/index.js';

type StateField = 'magic' | 'seqId' | 'nStream' | 'cellCount' | 'pos' | 'nSeqId' | 'cellSeq' | 'posLast' | 'vTrans' | 'nLayer' | 'kType' | 'kRowSize' | 'vType' | 'vRowSize';

type Mutation =
  | { op: 'header'; key: string; value: unknown }
  | { op: 'token'; index: number; value: number }
  | { op: 'flip'; at: number; xor: number }
  | { op: 'truncate'; to: number }
  | { op: 'append'; bytes: number }
  /** Writes `value` into a field of llama.cpp's sequence state and recomputes the checksum. */
  | { op: 'state'; field: StateField; value: number | string }
  | { op: 'stateFlip'; at: number; xor: number }
  | { op: 'stateTruncate'; to: number }
  | { op: 'stateAppend'; bytes: number };

type Input =
  | { kind: 'file'; sequences: 1 | 2; otherSession: boolean; prompt: string; maxTokens: number; mutations: Mutation[] }
  | { kind: 'path'; path: string }
  | { kind: 'save'; path: string };

const ALLOWED = ['ERR_INVALID_STATE', 'ERR_IO'];

// ------------------------------------------------------------------ the file format (lib/core/session-file.ts)

interface Parsed {
  header: Record<string, unknown>;
  tokens: Buffer;
  state: Buffer;
}

function parse(buf: Buffer): Parsed {
  const jsonLength = buf.readUInt32LE(12);
  const header = JSON.parse(buf.subarray(16, 16 + jsonLength).toString('utf8')) as Record<string, unknown>;
  const tokensAt = 16 + jsonLength;
  const stateAt = tokensAt + 4 * ((header.cacheTokens as number) + (header.historyTokens as number));
  return { header, tokens: Buffer.from(buf.subarray(tokensAt, stateAt)), state: Buffer.from(buf.subarray(stateAt)) };
}

function build(p: Parsed, fixChecksum: boolean): Buffer {
  const header = { ...p.header };
  if (fixChecksum) {
    header.stateBytes = p.state.length;
    header.stateSha256 = createHash('sha256').update(p.state).digest('hex');
  }
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const head = Buffer.alloc(16);
  Buffer.from('LLADSEQ\0', 'latin1').copy(head, 0);
  head.writeUInt32LE(1, 8);
  head.writeUInt32LE(json.length, 12);
  return Buffer.concat([head, json, p.tokens, p.state]);
}

/** Offsets of llama.cpp's sequence state fields (llama_kv_cache::state_write), for the first non-empty stream. */
function stateFields(d: Buffer): Partial<Record<StateField, [number, 4 | 8]>> {
  const f: Partial<Record<StateField, [number, 4 | 8]>> = { magic: [0, 4], seqId: [4, 4], nStream: [8, 4] };
  try {
    const nStream = d.readUInt32LE(8);
    let at = 12;
    for (let s = 0; s < nStream && at + 4 <= d.length; s++) {
      const cells = d.readUInt32LE(at);
      if (cells === 0) {
        at += 4;
        continue;
      }
      f.cellCount = [at, 4];
      at += 4;
      f.pos = [at, 4];
      f.nSeqId = [at + 4, 4];
      if (d.readUInt32LE(at + 4) > 0) f.cellSeq = [at + 8, 4];
      for (let i = 0; i < cells; i++) {
        if (i === cells - 1) f.posLast = [at, 4];
        at += 8 + 4 * d.readUInt32LE(at + 4);
      }
      f.vTrans = [at, 4];
      f.nLayer = [at + 4, 4];
      f.kType = [at + 8, 4];
      f.kRowSize = [at + 12, 8];
      const kRow = Number(d.readBigUInt64LE(at + 12));
      const vAt = at + 20 + kRow * cells;
      // The V section follows all layers' K; for one layer models it is right after.
      if (vAt + 12 <= d.length && d.readUInt32LE(at + 4) === 1) {
        f.vType = [vAt, 4];
        f.vRowSize = [vAt + 4, 8];
      }
      break;
    }
  } catch {
    // a short state: the fields found so far
  }
  return f;
}

function mutate(buf: Buffer, mutations: Mutation[]): Buffer {
  for (const m of mutations) {
    if (m.op === 'flip') {
      if (buf.length) buf[m.at % buf.length] ^= m.xor || 1;
      continue;
    }
    if (m.op === 'truncate') {
      buf = buf.subarray(0, m.to % (buf.length + 1));
      continue;
    }
    if (m.op === 'append') {
      buf = Buffer.concat([buf, Buffer.alloc(m.bytes, 0x41)]);
      continue;
    }
    let p: Parsed;
    try {
      p = parse(buf);
    } catch {
      continue; // an earlier mutation broke the framing: later structured ones do not apply
    }
    if (m.op === 'header') {
      p.header[m.key] = m.value;
      buf = build(p, false);
    } else if (m.op === 'token') {
      // (A file cut short may leave a token area that is not a whole number of tokens.)
      const whole = Math.floor(p.tokens.length / 4);
      if (whole > 0) p.tokens.writeInt32LE(m.value | 0, 4 * (m.index % whole));
      buf = build(p, false);
    } else if (m.op === 'state') {
      const where = stateFields(p.state)[m.field];
      if (where && where[0] + where[1] <= p.state.length) {
        if (where[1] === 8) p.state.writeBigUInt64LE(BigInt.asUintN(64, BigInt(m.value)), where[0]);
        else p.state.writeUInt32LE(Number(BigInt.asUintN(32, BigInt(m.value))), where[0]);
      }
      buf = build(p, true);
    } else if (m.op === 'stateFlip') {
      if (p.state.length) p.state[m.at % p.state.length] ^= m.xor || 1;
      buf = build(p, true);
    } else if (m.op === 'stateTruncate') {
      p.state = p.state.subarray(0, m.to % (p.state.length + 1));
      buf = build(p, true);
    } else if (m.op === 'stateAppend') {
      p.state = Buffer.concat([p.state, Buffer.alloc(m.bytes, 0)]);
      buf = build(p, true);
    }
  }
  return buf;
}

function randomMutation(r: Rng): Mutation {
  const interesting = () => r.pick<number | string>([0, 1, 2, 3, 7, 255, 256, 4095, 4096, 65535, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, -1, '18446744073709551615', '9223372036854775808']);
  return r.weighted<() => Mutation>([
    [4, () => ({ op: 'state', field: r.pick<StateField>(['magic', 'seqId', 'nStream', 'cellCount', 'pos', 'nSeqId', 'cellSeq', 'posLast', 'vTrans', 'nLayer', 'kType', 'kRowSize', 'vType', 'vRowSize']), value: interesting() })],
    [2, () => ({ op: 'stateFlip', at: r.int(0, 4000), xor: 1 << r.int(0, 7) })],
    [1, () => ({ op: 'stateTruncate', to: r.int(0, 4000) })],
    [0.5, () => ({ op: 'stateAppend', bytes: r.int(1, 64) })],
    [2, () => ({ op: 'header', key: r.pick(['cacheTokens', 'historyTokens', 'streams', 'dropped', 'shiftKeep', 'stateBytes', 'model', 'stateSha256']), value: r.pick<unknown>([0, 1, 2, -1, 2 ** 31 - 1, 2 ** 53, 1.5, 'x', null, {}, [], 1e308]) })],
    [1, () => ({ op: 'token', index: r.int(0, 64), value: r.pick([-1, 0, 31999, 32000, 2 ** 31 - 1, -(2 ** 31)]) })],
    [1, () => ({ op: 'flip', at: r.int(0, 200_000), xor: 1 << r.int(0, 7) })],
    [0.5, () => ({ op: 'truncate', to: r.int(0, 200_000) })],
    [0.3, () => ({ op: 'append', bytes: r.int(1, 1000) })],
  ])();
}

// ------------------------------------------------------------------ the target

function specialPath(name: string, env: Env): string {
  switch (name) {
    case 'fifo': {
      const p = join(env.tmp, `fifo-${Date.now()}`);
      execFileSync('mkfifo', [p]);
      return p;
    }
    case 'dir':
      return env.tmp;
    case 'missing':
      return join(env.tmp, 'no-such-file.session');
    case 'missing-dir':
      return join(env.tmp, 'no-such-dir', 'x.session');
    case 'symlink-zero': {
      const p = join(env.tmp, `zero-${Date.now()}`);
      symlinkSync('/dev/zero', p);
      return p;
    }
    case 'empty': {
      const p = join(env.tmp, `empty-${Date.now()}`);
      writeFileSync(p, '');
      return p;
    }
    default:
      return name;
  }
}

export const session: Target<Input> = {
  name: 'session',
  description: 'mutated and crafted session files (checksum recomputed) and special paths through session.load / save',
  timeoutMs: 15_000,
  generate(r: Rng): Input {
    if (r.chance(0.15)) {
      if (r.chance(0.2)) return { kind: 'save', path: r.pick(['dir', 'missing-dir']) };
      return { kind: 'path', path: r.pick(['/dev/zero', '/dev/null', 'fifo', 'dir', 'missing', 'symlink-zero', 'empty', '/dev/urandom', '/proc/self/status', '/proc/self/mem', '/']) };
    }
    const sequences = r.chance(0.3) ? 2 : 1;
    return {
      kind: 'file',
      sequences,
      otherSession: sequences === 2 && r.chance(0.5),
      prompt: r.pick(['Once upon a time', 'Hello', 'café', 'The quick brown fox jumps over the lazy dog. '.repeat(4)]),
      maxTokens: r.pick([1, 4, 8]),
      mutations: Array.from({ length: r.int(1, 3) }, () => randomMutation(r)),
    };
  },
  run(input: Input, env: Env) {
    return runSteps(input.kind, async () => {
      const gen = await step('setup', [], () => loadGen(env, input.kind === 'file' ? input.sequences : 1));
      const sessions: LlamaSession[] = [];
      const newSession = () => {
        const s = gen.ctx.createSession({ sharePrefix: false });
        sessions.push(s);
        return s;
      };
      try {
        let target: LlamaSession;
        let failed: unknown = null;
        if (input.kind === 'file') {
          const src = newSession();
          await step('complete', [], () => src.complete(input.prompt, { maxTokens: input.maxTokens, temperature: 0 }));
          const saved = join(env.tmp, 'saved.session');
          await step('save', [], () => src.save(saved));
          const mutated = join(env.tmp, 'mutated.session');
          writeFileSync(mutated, mutate(readFileSync(saved), input.mutations));
          target = input.otherSession ? newSession() : src;
          await step('load', ALLOWED, () => target.load(mutated)).catch((e) => (failed = e));
        } else if (input.kind === 'path') {
          target = newSession();
          const path = specialPath(input.path, env);
          await step('load', ALLOWED, () => target.load(path)).catch((e) => (failed = e));
        } else {
          target = newSession();
          await step('complete', [], () => target.complete('Hello', { maxTokens: 1, temperature: 0 }));
          const path = specialPath(input.path, env);
          await step('save', ['ERR_IO'], () => target.save(path)).catch((e) => (failed = e));
        }
        // Whatever happened, the session must keep working.
        await step('after', [], () => target.complete(' and then', { maxTokens: 2, temperature: 0 })).catch((e) => {
          const res = (e as { result?: { code?: string; message?: string } }).result;
          wrong('after', `the session does not work after the ${input.kind === 'save' ? 'save' : 'load'}: ${res?.code}: ${res?.message}`);
        });
        // Nothing at a special path is a session file, and nothing can be saved at these.
        if (input.kind !== 'file' && !failed) wrong(input.kind === 'path' ? 'load' : 'save', `session.${input.kind === 'path' ? 'load' : 'save'}(${input.path}) succeeded`);
        if (failed) throw failed;
      } finally {
        for (const s of sessions) s.dispose();
      }
    });
  },
  shrink(input: Input): Input[] {
    if (input.kind !== 'file') return [];
    const out: Input[] = [];
    if (input.mutations.length > 1) for (let i = 0; i < input.mutations.length; i++) out.push({ ...input, mutations: input.mutations.filter((_, j) => j !== i) });
    if (input.otherSession) out.push({ ...input, otherSession: false });
    if (input.sequences === 2 && !input.otherSession) out.push({ ...input, sequences: 1 });
    if (input.maxTokens > 1) out.push({ ...input, maxTokens: 1 });
    return out;
  },
};

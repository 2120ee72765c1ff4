// A GGUF writer: metadata with explicit types, and tensors of F32, F16, Q8_0 or Q4_0 data.
import { open } from 'node:fs/promises';
import { GGML_TYPES, GgufType } from './types.js';

export interface GgufKv {
  key: string;
  type: GgufType;
  /** For arrays, the element type. */
  itemType?: GgufType;
  value: unknown;
}

export interface GgufTensorSpec {
  name: string;
  /** Dimensions, innermost first. */
  dims: number[];
  /** ggml type number. */
  type: number;
  /** The bytes, or a function making them when they are written (keeps memory low for big models). */
  data: Uint8Array | (() => Uint8Array);
}

class Bytes {
  private chunks: Buffer[] = [];
  length = 0;
  push(b: Buffer): void {
    this.chunks.push(b);
    this.length += b.length;
  }
  u32(v: number): void { const b = Buffer.alloc(4); b.writeUInt32LE(v); this.push(b); }
  u64(v: number | bigint): void { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); this.push(b); }
  str(s: string): void { const b = Buffer.from(s, 'utf8'); this.u64(b.length); this.push(b); }
  scalar(type: GgufType, v: unknown): void {
    const b = Buffer.alloc(8);
    switch (type) {
      case GgufType.UINT8: b.writeUInt8(Number(v)); return this.push(b.subarray(0, 1));
      case GgufType.INT8: b.writeInt8(Number(v)); return this.push(b.subarray(0, 1));
      case GgufType.UINT16: b.writeUInt16LE(Number(v)); return this.push(b.subarray(0, 2));
      case GgufType.INT16: b.writeInt16LE(Number(v)); return this.push(b.subarray(0, 2));
      case GgufType.UINT32: b.writeUInt32LE(Number(v)); return this.push(b.subarray(0, 4));
      case GgufType.INT32: b.writeInt32LE(Number(v)); return this.push(b.subarray(0, 4));
      case GgufType.FLOAT32: b.writeFloatLE(Number(v)); return this.push(b.subarray(0, 4));
      case GgufType.BOOL: b.writeUInt8(v ? 1 : 0); return this.push(b.subarray(0, 1));
      case GgufType.UINT64: b.writeBigUInt64LE(BigInt(v as number)); return this.push(b);
      case GgufType.INT64: b.writeBigInt64LE(BigInt(v as number)); return this.push(b);
      case GgufType.FLOAT64: b.writeDoubleLE(Number(v)); return this.push(b);
      case GgufType.STRING: return this.str(String(v));
      default: throw new Error(`cannot write a scalar of type ${type}`);
    }
  }
  concat(): Buffer { return Buffer.concat(this.chunks); }
}

/** Size in bytes of a tensor of `type` with `dims`. */
export function tensorBytes(type: number, dims: number[]): number {
  const t = GGML_TYPES[type];
  if (!t) throw new Error(`unknown ggml type ${type}`);
  const n = dims.reduce((a, b) => a * b, 1);
  if (dims[0] % t[1] !== 0) throw new Error(`the first dimension (${dims[0]}) must be a multiple of ${t[1]} for ${t[0]}`);
  return (n / t[1]) * t[2];
}

/** Writes a GGUF version 3 file. */
export async function writeGguf(
  path: string,
  file: { metadata: GgufKv[]; tensors: GgufTensorSpec[]; alignment?: number },
): Promise<void> {
  const alignment = file.alignment ?? 32;
  const head = new Bytes();
  head.u32(0x46554747);
  head.u32(3);
  head.u64(file.tensors.length);
  head.u64(file.metadata.length);
  for (const kv of file.metadata) {
    head.str(kv.key);
    head.u32(kv.type);
    if (kv.type === GgufType.ARRAY) {
      const items = kv.value as unknown[];
      if (kv.itemType === undefined) throw new Error(`metadata ${kv.key}: arrays need an itemType`);
      head.u32(kv.itemType);
      head.u64(items.length);
      for (const item of items) head.scalar(kv.itemType, item);
    } else {
      head.scalar(kv.type, kv.value);
    }
  }
  let offset = 0;
  const offsets: number[] = [];
  for (const t of file.tensors) {
    head.str(t.name);
    head.u32(t.dims.length);
    for (const d of t.dims) head.u64(d);
    head.u32(t.type);
    head.u64(offset);
    offsets.push(offset);
    offset += Math.ceil(tensorBytes(t.type, t.dims) / alignment) * alignment;
  }
  const headerPad = (alignment - (head.length % alignment)) % alignment;
  head.push(Buffer.alloc(headerPad));

  const fh = await open(path, 'w');
  try {
    await fh.write(head.concat());
    for (const t of file.tensors) {
      const data = typeof t.data === 'function' ? t.data() : t.data;
      const expected = tensorBytes(t.type, t.dims);
      if (data.byteLength !== expected) {
        throw new Error(`tensor ${t.name}: expected ${expected} bytes of data, received ${data.byteLength}`);
      }
      await fh.write(data);
      const pad = (alignment - (expected % alignment)) % alignment;
      if (pad) await fh.write(Buffer.alloc(pad));
    }
  } finally {
    await fh.close();
  }
}

// ------------------------------------------------------------------ number formats

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** IEEE 754 half precision bits of `v` (round to nearest even). */
export function toHalf(v: number): number {
  f32[0] = v;
  const x = u32[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && half & 1)) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++;
  return sign | half;
}

export function encodeF32(values: Float32Array): Uint8Array {
  return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
}

export function encodeF16(values: Float32Array): Uint8Array {
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = toHalf(values[i]);
  return new Uint8Array(out.buffer);
}

/** Q8_0: blocks of 32 values as an f16 scale and 32 signed bytes. */
export function encodeQ8_0(values: Float32Array): Uint8Array {
  const nb = values.length / 32;
  const out = Buffer.alloc(nb * 34);
  for (let b = 0; b < nb; b++) {
    let amax = 0;
    for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(values[b * 32 + j]));
    const d = amax / 127;
    const id = d ? 1 / d : 0;
    out.writeUInt16LE(toHalf(d), b * 34);
    for (let j = 0; j < 32; j++) out.writeInt8(Math.round(values[b * 32 + j] * id), b * 34 + 2 + j);
  }
  return out;
}

/** Q4_0: blocks of 32 values as an f16 scale and 16 bytes of 4-bit values (offset 8). */
export function encodeQ4_0(values: Float32Array): Uint8Array {
  const nb = values.length / 32;
  const out = Buffer.alloc(nb * 18);
  for (let b = 0; b < nb; b++) {
    let amax = 0;
    let max = 0;
    for (let j = 0; j < 32; j++) {
      const v = values[b * 32 + j];
      if (Math.abs(v) > amax) {
        amax = Math.abs(v);
        max = v;
      }
    }
    const d = max / -8;
    const id = d ? 1 / d : 0;
    out.writeUInt16LE(toHalf(d), b * 18);
    for (let j = 0; j < 16; j++) {
      const x0 = Math.min(15, Math.trunc(values[b * 32 + j] * id + 8.5));
      const x1 = Math.min(15, Math.trunc(values[b * 32 + 16 + j] * id + 8.5));
      out[b * 18 + 2 + j] = x0 | (x1 << 4);
    }
  }
  return out;
}

/** Encodes float values as the given ggml type (F32, F16, Q8_0 or Q4_0). */
export function encodeTensor(type: number, values: Float32Array): Uint8Array {
  switch (type) {
    case 0: return encodeF32(values);
    case 1: return encodeF16(values);
    case 8: return encodeQ8_0(values);
    case 2: return encodeQ4_0(values);
    default: throw new Error(`encoding ggml type ${type} is not supported`);
  }
}

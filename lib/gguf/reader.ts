// A GGUF header reader: metadata and tensor descriptions, with the consistency checks that tell a
// truncated or corrupt file from a good one before llama.cpp touches it.
import { open } from 'node:fs/promises';
import { GGML_TYPES, GgufType, type GgufArraySummary, type GgufFile, type GgufScalar, type GgufTensorInfo, type GgufValue } from './types.js';

export class GgufFormatError extends Error {}

class NeedMore extends Error {}

export interface ReadGgufOptions {
  /** Arrays longer than this are summarized (default 64). `Infinity` keeps every element. */
  maxArrayLength?: number;
}

class Cursor {
  pos = 0;
  private readonly view: DataView;
  constructor(
    private readonly buf: Uint8Array,
    private readonly complete: boolean,
    private readonly fileSize: number,
  ) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }
  need(n: number): void {
    if (this.pos + n > this.buf.byteLength) {
      if (this.complete || this.pos + n > this.fileSize) throw new GgufFormatError(`the file ends inside its header (at byte ${this.pos})`);
      throw new NeedMore();
    }
  }
  peekU32(): number { this.need(4); return this.view.getUint32(this.pos, true); }
  u8(): number { this.need(1); return this.view.getUint8(this.pos++); }
  i8(): number { this.need(1); return this.view.getInt8(this.pos++); }
  u16(): number { this.need(2); const v = this.view.getUint16(this.pos, true); this.pos += 2; return v; }
  i16(): number { this.need(2); const v = this.view.getInt16(this.pos, true); this.pos += 2; return v; }
  u32(): number { this.need(4); const v = this.view.getUint32(this.pos, true); this.pos += 4; return v; }
  i32(): number { this.need(4); const v = this.view.getInt32(this.pos, true); this.pos += 4; return v; }
  f32(): number { this.need(4); const v = this.view.getFloat32(this.pos, true); this.pos += 4; return v; }
  f64(): number { this.need(8); const v = this.view.getFloat64(this.pos, true); this.pos += 8; return v; }
  u64(): bigint { this.need(8); const v = this.view.getBigUint64(this.pos, true); this.pos += 8; return v; }
  i64(): bigint { this.need(8); const v = this.view.getBigInt64(this.pos, true); this.pos += 8; return v; }
  count(what: string, minBytesEach: number): number {
    const v = this.u64();
    if (v * BigInt(Math.max(1, minBytesEach)) > BigInt(this.fileSize)) {
      throw new GgufFormatError(`${what} ${v} cannot fit in a file of ${this.fileSize} bytes`);
    }
    return Number(v);
  }
  str(): string {
    const n = this.count('string length', 1);
    this.need(n);
    const s = Buffer.from(this.buf.buffer, this.buf.byteOffset + this.pos, n).toString('utf8');
    this.pos += n;
    return s;
  }
  skip(n: number): void { this.need(n); this.pos += n; }
}

const fixedSize: Partial<Record<GgufType, number>> = {
  [GgufType.UINT8]: 1, [GgufType.INT8]: 1, [GgufType.UINT16]: 2, [GgufType.INT16]: 2, [GgufType.UINT32]: 4,
  [GgufType.INT32]: 4, [GgufType.FLOAT32]: 4, [GgufType.BOOL]: 1, [GgufType.UINT64]: 8, [GgufType.INT64]: 8,
  [GgufType.FLOAT64]: 8,
};

function readScalar(c: Cursor, type: GgufType): GgufScalar {
  switch (type) {
    case GgufType.UINT8: return c.u8();
    case GgufType.INT8: return c.i8();
    case GgufType.UINT16: return c.u16();
    case GgufType.INT16: return c.i16();
    case GgufType.UINT32: return c.u32();
    case GgufType.INT32: return c.i32();
    case GgufType.FLOAT32: return c.f32();
    case GgufType.BOOL: return c.u8() !== 0;
    case GgufType.STRING: return c.str();
    case GgufType.UINT64: { const v = c.u64(); return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v; }
    case GgufType.INT64: { const v = c.i64(); return v <= BigInt(Number.MAX_SAFE_INTEGER) && v >= BigInt(Number.MIN_SAFE_INTEGER) ? Number(v) : v; }
    case GgufType.FLOAT64: return c.f64();
    default: throw new GgufFormatError(`unknown metadata value type ${type}`);
  }
}

function readValue(c: Cursor, type: GgufType, maxArray: number, depth = 0): GgufValue {
  if (type !== GgufType.ARRAY) return readScalar(c, type);
  if (depth > 4) throw new GgufFormatError('metadata arrays are nested too deeply');
  const itemType = c.u32() as GgufType;
  if (!(itemType in GgufType)) throw new GgufFormatError(`unknown array element type ${itemType}`);
  const n = c.count('array length', fixedSize[itemType] ?? 8);
  if (n <= maxArray) {
    const out: GgufValue[] = new Array(n);
    for (let i = 0; i < n; i++) out[i] = readValue(c, itemType, maxArray, depth + 1);
    return out;
  }
  const first: GgufScalar[] = [];
  const size = fixedSize[itemType];
  for (let i = 0; i < n; i++) {
    if (i < 16 && itemType !== GgufType.ARRAY) first.push(readScalar(c, itemType));
    else if (size !== undefined) { c.skip(size * (n - i)); break; }
    else if (itemType === GgufType.STRING) c.skip(c.count('string length', 1));
    else readValue(c, itemType, 0, depth + 1);
  }
  const summary: GgufArraySummary = { summarized: true, type: GgufType[itemType] as keyof typeof GgufType, length: n, first };
  return summary;
}

function parse(buf: Uint8Array, complete: boolean, fileSize: number, maxArray: number): GgufFile {
  const c = new Cursor(buf, complete, fileSize);
  const magic = c.u32();
  if (magic !== 0x46554747) throw new GgufFormatError('it does not start with the GGUF magic bytes');
  const version = c.u32();
  if (version < 2 || version > 3) throw new GgufFormatError(`GGUF version ${version} is not supported (expected 2 or 3)`);
  const nTensors = c.count('tensor count', 24);
  const nKv = c.count('metadata count', 12);
  const metadata: Record<string, GgufValue> = {};
  const metadataTypes: Record<string, GgufType> = {};
  const arrayTypes: Record<string, GgufType> = {};
  for (let i = 0; i < nKv; i++) {
    const key = c.str();
    const type = c.u32() as GgufType;
    if (!(type in GgufType)) throw new GgufFormatError(`metadata key ${JSON.stringify(key)} has unknown type ${type}`);
    if (type === GgufType.ARRAY) arrayTypes[key] = c.peekU32() as GgufType;
    metadata[key] = readValue(c, type, maxArray);
    metadataTypes[key] = type;
  }
  const tensors: GgufTensorInfo[] = [];
  for (let i = 0; i < nTensors; i++) {
    const name = c.str();
    const nDims = c.u32();
    if (nDims > 8) throw new GgufFormatError(`tensor ${JSON.stringify(name)} has ${nDims} dimensions`);
    const dims: number[] = [];
    for (let d = 0; d < nDims; d++) {
      const v = c.u64();
      if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new GgufFormatError(`tensor ${JSON.stringify(name)} has an impossible dimension`);
      dims.push(Number(v));
    }
    const type = c.u32();
    const offset = c.u64();
    if (offset > BigInt(fileSize)) throw new GgufFormatError(`tensor ${JSON.stringify(name)} starts beyond the end of the file`);
    const info: GgufTensorInfo = { name, dims, type, offset: Number(offset) };
    const t = GGML_TYPES[type];
    if (t) {
      const elements = dims.reduce((a, b) => a * b, 1);
      info.size = (elements / t[1]) * t[2];
    }
    tensors.push(info);
  }
  const alignValue = metadata['general.alignment'];
  const alignment = typeof alignValue === 'number' && alignValue > 0 ? alignValue : 32;
  const dataOffset = Math.ceil(c.pos / alignment) * alignment;
  for (const t of tensors) {
    if (t.size !== undefined && dataOffset + t.offset + t.size > fileSize) {
      throw new GgufFormatError(
        `tensor ${JSON.stringify(t.name)} needs bytes up to ${dataOffset + t.offset + t.size}, but the file has ${fileSize} (truncated?)`,
      );
    }
  }
  return { version, metadata, metadataTypes, arrayTypes, tensors, alignment, dataOffset, fileSize };
}

/**
 * Reads the header of a GGUF file: metadata and tensor descriptions. Throws GgufFormatError when the file
 * is not GGUF, or is truncated or inconsistent.
 */
export async function readGguf(path: string, options: ReadGgufOptions = {}): Promise<GgufFile> {
  const maxArray = options.maxArrayLength ?? 64;
  const fh = await open(path, 'r');
  try {
    const fileSize = (await fh.stat()).size;
    let length = Math.min(fileSize, 1 << 20);
    for (;;) {
      const buf = new Uint8Array(length);
      const { bytesRead } = await fh.read(buf, 0, length, 0);
      try {
        return parse(buf.subarray(0, bytesRead), bytesRead >= fileSize, fileSize, maxArray);
      } catch (e) {
        if (!(e instanceof NeedMore)) throw e;
        length = Math.min(fileSize, length * 4);
      }
    }
  } finally {
    await fh.close();
  }
}

/** GGUF metadata value types, as numbered by the GGUF format. */
export enum GgufType {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
}

/** ggml tensor types this package reads sizes of: [name, elements per block, bytes per block]. */
export const GGML_TYPES: Readonly<Record<number, readonly [string, number, number]>> = {
  0: ['F32', 1, 4], 1: ['F16', 1, 2], 2: ['Q4_0', 32, 18], 3: ['Q4_1', 32, 20], 6: ['Q5_0', 32, 22],
  7: ['Q5_1', 32, 24], 8: ['Q8_0', 32, 34], 9: ['Q8_1', 32, 36], 10: ['Q2_K', 256, 84], 11: ['Q3_K', 256, 110],
  12: ['Q4_K', 256, 144], 13: ['Q5_K', 256, 176], 14: ['Q6_K', 256, 210], 15: ['Q8_K', 256, 292],
  16: ['IQ2_XXS', 256, 66], 17: ['IQ2_XS', 256, 74], 18: ['IQ3_XXS', 256, 98], 19: ['IQ1_S', 256, 50],
  20: ['IQ4_NL', 32, 18], 21: ['IQ3_S', 256, 110], 22: ['IQ2_S', 256, 82], 23: ['IQ4_XS', 256, 136],
  24: ['I8', 1, 1], 25: ['I16', 1, 2], 26: ['I32', 1, 4], 27: ['I64', 1, 8], 28: ['F64', 1, 8],
  29: ['IQ1_M', 256, 56], 30: ['BF16', 1, 2], 34: ['TQ1_0', 256, 54], 35: ['TQ2_0', 256, 66],
  39: ['MXFP4', 32, 17], 40: ['NVFP4', 64, 36], 41: ['Q1_0', 128, 18], 42: ['Q2_0', 64, 18],
};

export const GGML_TYPE = { F32: 0, F16: 1, Q4_0: 2, Q8_0: 8 } as const;

/** A long array in metadata, summarized: its element type, length and first elements. */
export interface GgufArraySummary {
  readonly summarized: true;
  readonly type: keyof typeof GgufType;
  readonly length: number;
  readonly first: readonly GgufScalar[];
}

export type GgufScalar = number | bigint | boolean | string;
export type GgufValue = GgufScalar | GgufValue[] | GgufArraySummary;

export interface GgufTensorInfo {
  name: string;
  /** Dimensions, innermost first (ggml's ne[0], ne[1], ...). */
  dims: number[];
  /** ggml type number (see GGML_TYPES). */
  type: number;
  /** Offset of the data, relative to the start of the data section. */
  offset: number;
  /** Size of the data in bytes, when the type is known. */
  size?: number;
}

export interface GgufFile {
  version: number;
  metadata: Record<string, GgufValue>;
  /** The GGUF type of each metadata value, by key (arrays as `ARRAY`). */
  metadataTypes: Record<string, GgufType>;
  /** The element type of each array value, by key. */
  arrayTypes: Record<string, GgufType>;
  tensors: GgufTensorInfo[];
  alignment: number;
  /** Byte offset of the tensor data section. */
  dataOffset: number;
  fileSize: number;
}

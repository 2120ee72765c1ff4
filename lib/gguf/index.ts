// GGUF tools: reading, writing and synthetic test models.
export { readGguf, GgufFormatError } from './reader.js';
export type { ReadGgufOptions } from './reader.js';
export { writeGguf, encodeTensor, encodeF16, encodeQ8_0, encodeQ4_0, toHalf, tensorBytes } from './writer.js';
export type { GgufKv, GgufTensorSpec } from './writer.js';
export { writeSyntheticLlama, writeSyntheticLora, syntheticParameterCount } from './synthetic.js';
export type { SyntheticLlamaOptions, SyntheticLoraOptions } from './synthetic.js';
export * from './types.js';

// quantize: llama.cpp's quantizer, off the JS thread.
import { existsSync } from 'node:fs';
import { dirname } from 'node:path';
import { randomBytes } from 'node:crypto';
import { rename, rm, stat } from 'node:fs/promises';
import { LlamaError, callNative, toLlamaError } from '../base/errors.js';
import { native } from '../native/native.js';

/** Types {@link quantize} can write (llama.cpp's names). */
export const quantizationTypes = {
  F16: 1, BF16: 32, Q8_0: 7, Q4_0: 2, Q4_1: 3, Q5_0: 8, Q5_1: 9, Q2_K: 10, Q3_K_S: 11, Q3_K_M: 12, Q3_K_L: 13,
  Q4_K_S: 14, Q4_K_M: 15, Q5_K_S: 16, Q5_K_M: 17, Q6_K: 18,
} as const;

/** A quantization type name, such as `'Q4_K_M'`. */
export type QuantizationType = keyof typeof quantizationTypes;

/**
 * Quantizes a GGUF model with llama.cpp's quantizer (on a worker thread), writing `output` (through a
 * temporary file, so that a failure leaves nothing half-written). `onProgress` is told the bytes written
 * so far, about every 200 ms. Tensors whose shape a type cannot hold get llama.cpp's fallback type.
 * @throws LlamaError `ERR_INVALID_ARGUMENT` for an unknown type, `ERR_MODEL_NOT_FOUND`, `ERR_QUANTIZE`, `ERR_IO`
 * when `output` cannot be written (a folder, a missing directory).
 */
export async function quantize(
  input: string,
  output: string,
  type: QuantizationType,
  options: { threads?: number; onProgress?: (bytesWritten: number) => void } = {},
): Promise<void> {
  const ftype = Object.hasOwn(quantizationTypes, type) ? quantizationTypes[type as QuantizationType] : undefined;
  if (ftype === undefined) {
    throw new LlamaError('ERR_INVALID_ARGUMENT', `Invalid quantization type ${JSON.stringify(type)}: expected one of ${Object.keys(quantizationTypes).join(', ')}`);
  }
  if (!existsSync(input)) throw new LlamaError('ERR_MODEL_NOT_FOUND', `Model file not found: ${input}`);
  const existing = await stat(output).catch(() => null);
  if (existing && !existing.isFile()) {
    throw new LlamaError('ERR_IO', `Cannot write the quantized model to ${output}: expected a regular file or a new name, received ${existing.isDirectory() ? 'a folder' : 'something else'}`);
  }
  const folder = await stat(dirname(output)).catch(() => null);
  if (!folder?.isDirectory()) {
    throw new LlamaError('ERR_IO', `Cannot write the quantized model to ${output}: expected an existing folder ${dirname(output)}, received ${folder ? 'a file' : 'no such folder'}`);
  }
  // A temporary file of this call's own: two calls to the same output each write their own and the last to
  // end replaces the file (a shared name made one call's success rename the other's model).
  const tmp = `${output}.${process.pid}.${randomBytes(6).toString('hex')}.partial`;
  const promise = callNative(quantize, () => native().quantize(input, tmp, ftype, options.threads ?? 0));
  const timer = options.onProgress
    ? setInterval(() => {
        stat(tmp).then((s) => options.onProgress!(s.size), () => {});
      }, 200)
    : null;
  try {
    await promise;
    if (options.onProgress) options.onProgress((await stat(tmp)).size);
    try {
      await rename(tmp, output);
    } catch (e) {
      throw new LlamaError('ERR_IO', `Cannot write the quantized model to ${output}: ${(e as Error).message}`, { cause: e });
    }
  } catch (e) {
    await rm(tmp, { force: true });
    throw toLlamaError(e);
  } finally {
    if (timer) clearInterval(timer);
  }
}

// Byte-level mutations of GGUF files, for tests of files that our writer would never make: a tensor's type
// changed in place (the data section keeps its size, so the file stays readable).
import { readFileSync, writeFileSync } from 'node:fs';

/** Changes the ggml type of tensor `name` in the file's header, in place. */
export function setTensorType(path: string, name: string, type: number): void {
  const buf = readFileSync(path);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(name)));
  const needle = Buffer.concat([len, Buffer.from(name, 'utf8')]);
  // Tensor infos follow the metadata: the last occurrence of the name with its length prefix is the info.
  const at = buf.lastIndexOf(needle);
  if (at < 0) throw new Error(`tensor ${name} not found in ${path}`);
  let p = at + needle.length;
  const nDims = buf.readUInt32LE(p);
  p += 4 + 8 * nDims;
  buf.writeUInt32LE(type, p);
  writeFileSync(path, buf);
}

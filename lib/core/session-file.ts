// The file a session is saved to:
//   8 bytes  magic "LLADSEQ\0"
//   u32 LE   format version
//   u32 LE   length of the JSON header
//   JSON     SessionFileHeader
//   i32 LE   cache tokens, then history tokens
//   bytes    llama.cpp's sequence state
import { createHash } from 'node:crypto';
import { constants as bufferConstants } from 'node:buffer';
import { constants as fsConstants } from 'node:fs';
import { open, realpath, rename, stat, unlink } from 'node:fs/promises';
import { LlamaError } from '../base/errors.js';
import { limits } from '../base/limits.js';

const MAGIC = Buffer.from('LLADSEQ\0', 'latin1');
const VERSION = 1;

export interface SessionFileHeader {
  model: { fingerprint: string; name: string; vocabSize: number };
  /** Streams (sequences) of the context the state was saved from; 1 when it loads into any context. */
  streams: number;
  cacheTokens: number;
  historyTokens: number;
  dropped: number;
  shiftKeep: number;
  stateBytes: number;
  stateSha256: string;
  savedAt: string;
}

export interface SessionFile {
  header: SessionFileHeader;
  cache: number[];
  history: number[];
  state: Uint8Array;
}

function invalidState(message: string): LlamaError {
  return new LlamaError('ERR_INVALID_STATE', message);
}

/** Writes the file atomically: to a temporary name first, then renamed over `path`. */
export async function writeSessionFile(path: string, f: Omit<SessionFile, 'header'> & { header: Omit<SessionFileHeader, 'stateBytes' | 'stateSha256' | 'cacheTokens' | 'historyTokens'> }): Promise<void> {
  const header: SessionFileHeader = {
    ...f.header,
    cacheTokens: f.cache.length,
    historyTokens: f.history.length,
    stateBytes: f.state.length,
    stateSha256: createHash('sha256').update(f.state).digest('hex'),
  };
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const head = Buffer.alloc(16);
  MAGIC.copy(head, 0);
  head.writeUInt32LE(VERSION, 8);
  head.writeUInt32LE(json.length, 12);
  const tokens = Buffer.from(Int32Array.from([...f.cache, ...f.history]).buffer);
  const target = await writableTarget(path);
  const tmp = `${target}.${process.pid}.${Date.now()}.tmp`;
  try {
    const fh = await open(tmp, 'w');
    try {
      await fh.writev([head, json, tokens, f.state]);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, target);
  } catch (e) {
    await unlink(tmp).catch(() => {});
    throw new LlamaError('ERR_IO', `The session could not be written to ${path}: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * Where save() writes: the file a symbolic link points to (the link stays), and only a regular file or a new
 * one. The file is written beside its name and renamed over it, so a device, FIFO or folder there would be
 * replaced, not written to (run as root, `save('/dev/null')` replaced /dev/null with a file).
 */
async function writableTarget(path: string): Promise<string> {
  let target = path;
  try {
    target = await realpath(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return path; // a new file (or a dangling link's name)
    throw new LlamaError('ERR_IO', `The session could not be written to ${path}: ${(e as Error).message}`, { cause: e });
  }
  const st = await stat(target);
  if (!st.isFile()) {
    const kind = st.isDirectory() ? 'a folder' : st.isFIFO() ? 'a FIFO' : st.isSocket() ? 'a socket' : 'a device';
    throw new LlamaError('ERR_IO', `The session could not be written to ${path}: expected a regular file or a new name, received ${kind}`);
  }
  return target;
}

/** Largest session file `load()` reads (bytes): 16 GiB, or what one Buffer can hold where that is less. */
export const MAX_SESSION_FILE_BYTES = Math.min(limits.sessionFileBytes, bufferConstants.MAX_LENGTH);

/**
 * Reads a whole regular file, at most MAX_SESSION_FILE_BYTES. Devices (`/dev/zero`), FIFOs, sockets and
 * folders are refused before any read: they may never end. The file is opened without blocking (a FIFO
 * would otherwise wait for a writer) and checked on the open descriptor, so a swap after the check cannot
 * slip one in.
 */
async function readRegularFile(path: string): Promise<Buffer> {
  let fh;
  try {
    fh = await open(path, fsConstants.O_RDONLY | (fsConstants.O_NONBLOCK ?? 0));
  } catch (e) {
    throw new LlamaError('ERR_IO', `The session file ${path} could not be read: ${(e as Error).message}`, { cause: e });
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) {
      const kind = st.isDirectory() ? 'a folder' : st.isFIFO() ? 'a FIFO' : st.isCharacterDevice() || st.isBlockDevice() ? 'a device' : st.isSocket() ? 'a socket' : 'not a regular file';
      throw new LlamaError('ERR_IO', `The session file ${path} is ${kind}; expected a regular file`);
    }
    if (st.size > MAX_SESSION_FILE_BYTES) {
      throw new LlamaError('ERR_LIMIT_EXCEEDED', `The session file ${path} is ${st.size} bytes; the limit is ${MAX_SESSION_FILE_BYTES}`);
    }
    const buf = Buffer.allocUnsafe(st.size);
    let off = 0;
    while (off < st.size) {
      const { bytesRead } = await fh.read(buf, off, Math.min(st.size - off, 1 << 26), off);
      if (bytesRead === 0) break;
      off += bytesRead;
    }
    return off === st.size ? buf : buf.subarray(0, off);
  } catch (e) {
    if (e instanceof LlamaError) throw e;
    throw new LlamaError('ERR_IO', `The session file ${path} could not be read: ${(e as Error).message}`, { cause: e });
  } finally {
    await fh.close().catch(() => {});
  }
}

/** Reads and checks a session file; every defect is `ERR_INVALID_STATE` naming what is wrong. */
export async function readSessionFile(path: string): Promise<SessionFile> {
  const buf = await readRegularFile(path);
  if (buf.length < 16 || !buf.subarray(0, 8).equals(MAGIC)) {
    throw invalidState(`${path} is not a llama-addon session file (expected it to start with "LLADSEQ")`);
  }
  const version = buf.readUInt32LE(8);
  if (version !== VERSION) throw invalidState(`${path} has session format version ${version}; this version reads ${VERSION}`);
  const jsonLength = buf.readUInt32LE(12);
  if (16 + jsonLength > buf.length) throw invalidState(`${path} is truncated: its header needs ${16 + jsonLength} bytes, the file has ${buf.length}`);
  let header: SessionFileHeader;
  try {
    header = JSON.parse(buf.subarray(16, 16 + jsonLength).toString('utf8')) as SessionFileHeader;
  } catch (e) {
    throw new LlamaError('ERR_INVALID_STATE', `${path} has a corrupt header: ${(e as Error).message}`, { cause: e });
  }
  const ints = ['streams', 'cacheTokens', 'historyTokens', 'dropped', 'shiftKeep', 'stateBytes'] as const;
  if (
    typeof header !== 'object' || header === null ||
    typeof header.model?.fingerprint !== 'string' || typeof header.stateSha256 !== 'string' ||
    !ints.every((k) => Number.isSafeInteger(header[k]) && header[k] >= 0)
  ) {
    throw invalidState(`${path} has a corrupt header`);
  }
  if (header.streams < 1 || header.streams > 65536) {
    throw invalidState(`${path} has a corrupt header: it says the state has ${header.streams} streams (expected 1 to 65536)`);
  }
  const tokensAt = 16 + jsonLength;
  const stateAt = tokensAt + 4 * (header.cacheTokens + header.historyTokens);
  const expected = stateAt + header.stateBytes;
  if (buf.length !== expected) {
    throw invalidState(`${path} is ${buf.length < expected ? 'truncated' : 'too long'}: expected ${expected} bytes, found ${buf.length}`);
  }
  const tokens = new Int32Array(buf.buffer.slice(buf.byteOffset + tokensAt, buf.byteOffset + stateAt));
  const state = buf.subarray(stateAt);
  if (createHash('sha256').update(state).digest('hex') !== header.stateSha256) {
    throw invalidState(`${path} is corrupt: its state does not match its checksum`);
  }
  return {
    header,
    cache: Array.from(tokens.subarray(0, header.cacheTokens)),
    history: Array.from(tokens.subarray(header.cacheTokens)),
    state,
  };
}

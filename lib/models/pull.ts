// Downloads model files: Hugging Face references (hf:owner/repo/file.gguf) or URLs, into a cache folder,
// resuming an interrupted transfer and checking size and SHA-256 where the hub gives them.
import { createHash } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { open, rename, rm, stat } from 'node:fs/promises';
import { makeFolders } from '../base/folders.js';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { LlamaError } from '../base/errors.js';

/** Options of {@link pullModel}. */
export interface PullOptions {
  /** Where models go (default: `$LLAMA_ADDON_CACHE`, else `~/.cache/llama-addon/models`). */
  cacheDir?: string;
  /** Called as bytes arrive. */
  onProgress?: (received: number, total: number | null) => void;
  signal?: AbortSignal;
  /** Expected SHA-256 (hex), checked after the download (hub references bring their own). */
  sha256?: string;
  /**
   * Milliseconds a server may keep the transfer without sending anything (headers or data) before the pull
   * ends with `ERR_IO` (the partial file is kept, to resume). Default 60,000.
   */
  stallMs?: number;
}

/** The downloaded file. */
export interface PulledModel {
  path: string;
  size: number;
  sha256: string;
  /** False when the file was already in the cache. */
  downloaded: boolean;
}

/** The default cache folder. */
export function modelCacheDir(): string {
  return process.env.LLAMA_ADDON_CACHE ?? join(homedir(), '.cache', 'llama-addon', 'models');
}

function parseRef(ref: string): { url: string; file: string; hub: boolean } {
  if (ref.startsWith('hf:')) {
    const parts = ref.slice(3).split('/');
    // Each part becomes a folder of the cache: no empty, "." or ".." parts, no backslashes.
    if (parts.length < 3 || parts.some((p) => p.length === 0 || p === '.' || p === '..' || p.includes('\\'))) {
      throw new LlamaError('ERR_INVALID_ARGUMENT', `Invalid model reference ${JSON.stringify(ref)}: expected hf:owner/repo/path/to/file.gguf`);
    }
    const [owner, repo, ...path] = parts;
    const endpoint = (process.env.HF_ENDPOINT ?? 'https://huggingface.co').replace(/\/$/, '');
    return { url: `${endpoint}/${owner}/${repo}/resolve/main/${path.join('/')}`, file: join('hf', owner, repo, ...path), hub: true };
  }
  let u: URL;
  try {
    u = new URL(ref);
  } catch {
    throw new LlamaError('ERR_INVALID_ARGUMENT', `Invalid model reference ${JSON.stringify(ref)}: expected hf:owner/repo/file.gguf or an http(s) URL`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new LlamaError('ERR_INVALID_ARGUMENT', `Only http(s) URLs can be pulled, not ${u.protocol}`);
  let segments: string[];
  try {
    segments = u.pathname.split('/').filter(Boolean).map((p) => decodeURIComponent(p));
  } catch {
    throw new LlamaError('ERR_INVALID_ARGUMENT', `Invalid model URL ${JSON.stringify(ref)}: its path is not valid percent-encoding`);
  }
  if (segments.length === 0 || segments.some((p) => p === '.' || p === '..' || p.includes('/') || p.includes('\\'))) {
    throw new LlamaError('ERR_INVALID_ARGUMENT', `Invalid model URL ${JSON.stringify(ref)}: its path must name a file`);
  }
  return { url: u.href, file: join('url', u.host.replace(/:/g, '_'), ...segments), hub: false };
}

async function sha256Of(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** How far (bytes) the partial file's writes may fall behind the download before reading waits for them. */
const PULL_WRITE_AHEAD = 64 * 1024 * 1024;

const fail = (message: string, cause?: unknown) => new LlamaError('ERR_IO', message, cause === undefined ? undefined : { cause });

/**
 * What went wrong in a transfer, in words: fetch's own message is "fetch failed" or "terminated", and the
 * reason (no DNS, refused, reset, a timeout) is on its `cause` chain (`getaddrinfo ENOTFOUND huggingface.co`).
 */
function networkReason(e: unknown): string {
  const parts: string[] = [];
  for (let x: unknown = e, depth = 0; x !== undefined && x !== null && depth < 5; depth++) {
    const { message, code } = x as { message?: unknown; code?: unknown };
    const text = typeof message === 'string' && message !== '' ? message : typeof code === 'string' ? code : String(x);
    if (!parts.some((p) => p.includes(text))) parts.push(text);
    x = (x as { cause?: unknown }).cause;
  }
  return parts.join(': ');
}

/**
 * Downloads a model (`hf:owner/repo/file.gguf` or a URL) into the cache, or finds it there. An interrupted
 * download resumes where it stopped (HTTP range request); the size and SHA-256 the hub publishes for the
 * file (its `x-linked-size` and `x-linked-etag` headers) are checked, and a mismatch deletes the file.
 * @throws LlamaError `ERR_IO` for a failed or corrupt download, `ERR_INVALID_ARGUMENT` for a bad reference.
 */
export async function pullModel(ref: string, options: PullOptions = {}): Promise<PulledModel> {
  if (options.stallMs !== undefined && !(Number.isFinite(options.stallMs) && options.stallMs > 0)) {
    throw new LlamaError('ERR_INVALID_ARGUMENT', `Invalid option "stallMs": a positive number of milliseconds was expected, received ${String(options.stallMs)}`);
  }
  // Every failure is a LlamaError: the file system's too (a cache folder that cannot be made, a name too long).
  const stall = new AbortController();
  const stallMs = options.stallMs ?? 60_000;
  let stalled = false;
  let timer: NodeJS.Timeout | null = null;
  // alive(true): the server answered or sent data, the clock starts again; alive(false): no transfer is
  // waited for now (hashing, renaming).
  const alive = (waiting = true) => {
    if (timer) clearTimeout(timer);
    timer = waiting
      ? setTimeout(() => {
          stalled = true;
          stall.abort();
        }, stallMs)
      : null;
  };
  const signal = options.signal ? AbortSignal.any([options.signal, stall.signal]) : stall.signal;
  try {
    return await pull(ref, { ...options, signal }, alive);
  } catch (e) {
    if (stalled) throw fail(`The server of ${ref} sent nothing for ${stallMs} ms; run it again to resume`, e);
    if (e instanceof LlamaError) throw e;
    throw fail(`Could not pull ${ref}: ${(e as Error).message}`, e);
  } finally {
    if (timer) clearTimeout(timer);
  }
}

async function pull(ref: string, options: PullOptions & { signal: AbortSignal }, alive: (waiting?: boolean) => void): Promise<PulledModel> {
  const { url, file } = parseRef(ref);
  const dest = join(options.cacheDir ?? modelCacheDir(), file);
  const partial = `${dest}.partial`;
  await makeFolders(join(dest, '..'));

  // What the server says the file is: size and SHA-256 from the hub's headers, where it gives them.
  let expectedSize: number | null = null;
  let expectedSha = options.sha256?.toLowerCase() ?? null;
  try {
    alive();
    const head = await fetch(url, { method: 'HEAD', redirect: 'manual', signal: options.signal });
    alive(false);
    const linkedSize = head.headers.get('x-linked-size') ?? (head.status < 300 ? head.headers.get('content-length') : null);
    if (linkedSize && /^\d+$/.test(linkedSize)) expectedSize = Number(linkedSize);
    const etag = head.headers.get('x-linked-etag')?.replace(/^W\//, '').replace(/"/g, '');
    if (!expectedSha && etag && /^[0-9a-f]{64}$/i.test(etag)) expectedSha = etag.toLowerCase();
    if (head.status === 404) throw fail(`${ref} was not found (404 from ${url})`);
    if (head.status === 401 || head.status === 403) throw fail(`${ref} needs authorization (${head.status} from ${url})`);
  } catch (e) {
    if (e instanceof LlamaError) throw e;
    // Offline: a file already in the cache is used as it is.
    if (existsSync(dest)) {
      const size = (await stat(dest)).size;
      return { path: dest, size, sha256: await sha256Of(dest), downloaded: false };
    }
    throw fail(`Could not reach ${url}: ${networkReason(e)}`, e);
  }

  if (existsSync(dest)) {
    const size = (await stat(dest)).size;
    if (expectedSize === null || size === expectedSize) {
      const sha = await sha256Of(dest);
      if (!expectedSha || sha === expectedSha) return { path: dest, size, sha256: sha, downloaded: false };
    }
    await rm(dest);
  }

  let have = existsSync(partial) ? (await stat(partial)).size : 0;
  if (expectedSize !== null && have > expectedSize) {
    await rm(partial);
    have = 0;
  }
  alive();
  const res = await fetch(url, {
    redirect: 'follow',
    headers: have > 0 ? { Range: `bytes=${have}-` } : {},
    signal: options.signal,
  }).catch((e: Error) => {
    throw fail(`Could not download ${url}: ${networkReason(e)}`, e);
  });
  alive();
  if (res.status === 416 && expectedSize !== null && have === expectedSize) {
    // already complete
  } else if (res.status === 416) {
    await rm(partial, { force: true }); // the partial file does not fit what the server has: start over next time
    throw fail(`The server refused to resume ${url}; the partial file was deleted, run it again`);
  } else if (!res.ok || !res.body) {
    throw fail(`Downloading ${url} failed: HTTP ${res.status}`);
  }
  if (res.status === 200 && have > 0) have = 0; // the server ignored the range: start over
  if (res.status === 206) {
    // A resumed transfer must start where the partial file ends (a server that sent the file from its start
    // had it appended to the partial file, and the result cached as complete).
    const stated = res.headers.get('content-range');
    const range = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(stated ?? '');
    const start = range ? Number(range[1]) : stated === null ? have : NaN;
    if (start === 0) have = 0;
    else if (start !== have) {
      await res.body?.cancel().catch(() => {});
      await rm(partial, { force: true });
      throw fail(`The server resumed ${url} at ${range ? `byte ${start}` : 'an unstated offset'}, not at byte ${have} where the partial file ends; the partial file was deleted, run it again`);
    }
    if (range && range[3] !== '*' && expectedSize === null) expectedSize = Number(range[3]);
  }
  const total = expectedSize ?? (res.headers.get('content-length') ? have + Number(res.headers.get('content-length')) : null);
  if (res.status !== 416) {
    let received = have;
    const body = res.body as unknown as AsyncIterable<Uint8Array>;
    // The body is read as fast as it arrives (fetch drops what it has received but not handed over when
    // the connection breaks), and written in order behind the reader, at most PULL_WRITE_AHEAD bytes
    // behind. When the transfer breaks, the writes still pending finish first: every byte that was read is
    // in the partial file, so the resume starts where the message says it stopped.
    const out = await open(partial, have > 0 ? 'a' : 'w');
    let written = have;
    let writes: Promise<void> = Promise.resolve();
    let writeError: unknown = null;
    try {
      try {
        for await (const chunk of body) {
          alive();
          received += chunk.byteLength;
          writes = writes.then(async () => {
            if (writeError) return;
            try {
              await out.write(chunk);
              written += chunk.byteLength;
              options.onProgress?.(written, total);
            } catch (e) {
              writeError = e;
            }
          });
          if (received - written > PULL_WRITE_AHEAD) await writes;
          if (writeError) break;
        }
      } catch (e) {
        await writes;
        if (writeError) throw fail(`Writing ${partial} failed: ${(writeError as Error).message}`, writeError);
        throw fail(`The download of ${url} was interrupted after ${written} bytes; run it again to resume: ${networkReason(e)}`, e);
      }
      alive(false);
      await writes;
      if (writeError) throw fail(`Writing ${partial} failed: ${(writeError as Error).message}`, writeError);
    } finally {
      alive(false);
      await out.close();
    }
  }
  alive(false);
  const size = (await stat(partial)).size;
  if (expectedSize !== null && size !== expectedSize) {
    if (size > expectedSize) await rm(partial);
    throw fail(`The download of ${url} has ${size} bytes, expected ${expectedSize}${size < expectedSize ? '; run it again to resume' : ''}`);
  }
  const sha = await sha256Of(partial);
  if (expectedSha && sha !== expectedSha) {
    await rm(partial);
    throw fail(`The download of ${url} is corrupt: its SHA-256 is ${sha}, expected ${expectedSha} (the partial file was deleted)`);
  }
  await rename(partial, dest);
  return { path: dest, size, sha256: sha, downloaded: true };
}

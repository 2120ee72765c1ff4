// Creating folders without Node's recursive mkdir, which never returns where a file system answers ENOENT
// for a folder whose parent exists (under /proc, Node 20 and 22 loop forever, sync and async alike).
import { mkdir, stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';

/**
 * Creates `path` and the folders above it that are missing, one level at a time (what
 * `mkdir(path, { recursive: true })` does), and rejects with the file system's error where one cannot be
 * made: ENOENT when a parent that exists takes no new folder, ENOTDIR, EACCES.
 */
export async function makeFolders(path: string): Promise<void> {
  const missing: string[] = [];
  let at = resolve(path);
  for (;;) {
    const s = await stat(at).catch((e: NodeJS.ErrnoException) => (e.code === 'ENOENT' ? null : Promise.reject(e)));
    if (s) {
      if (!s.isDirectory()) throw Object.assign(new Error(`ENOTDIR: not a directory, mkdir '${at}'`), { code: 'ENOTDIR', path: at });
      break;
    }
    missing.push(at);
    const up = dirname(at);
    if (up === at) break;
    at = up;
  }
  for (const dir of missing.reverse()) {
    await mkdir(dir).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'EEXIST') throw e; // made meanwhile by another caller: fine
    });
  }
}

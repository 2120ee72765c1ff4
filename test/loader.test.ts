// The loader's one error when the native addon cannot be loaded: every place tried, and a fix that fits
// the cause (test/pack.test.ts checks the whole path in an installed package).
import { expect, it } from 'vitest';
import { nativeLoadError } from '../lib/native/native.js';

it('names the permission a runtime refused as the fix, not a build from source (Deno without --allow-ffi)', () => {
  const denied = '/app/node_modules/llama-addon/prebuilds/linux-x64/llama-addon.napi.glibc.node: Requires ffi access to "/app/node_modules/llama-addon/prebuilds/linux-x64/llama-addon.napi.glibc.node", run again with the --allow-ffi flag';
  const e = nativeLoadError(['/app/node_modules/llama-addon/build/Release/llama_addon.node: not found', denied], 'linux-x64 (glibc)', 'prebuilt binaries for linux-x64');
  expect(e.code).toBe('ERR_NATIVE_LOAD');
  expect(e.message).toContain('the runtime refused ffi access');
  expect(e.message).toContain(denied);
  expect(e.message).toMatch(/Fix: allow it \(Deno: `deno run --allow-ffi \.\.\.`/);
  expect(e.message).not.toContain('npm rebuild');
});

it('suggests a build from source when no binary loads for another reason', () => {
  const e = nativeLoadError(['/x/build/Release/llama_addon.node: not found', '/x/prebuilds/linux-x64/llama-addon.napi.glibc.node: /lib/libc.so.6: version `GLIBC_2.38\' not found'], 'linux-x64 (glibc)', 'prebuilt binaries for linux-x64');
  expect(e.message).toContain('GLIBC_2.38');
  expect(e.message).toContain('Found: prebuilt binaries for linux-x64.');
  expect(e.message).toContain('LLAMA_ADDON_REBUILD=1 npm rebuild llama-addon --foreground-scripts');
});

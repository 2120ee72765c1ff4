import { existsSync } from 'node:fs';
import { chromium, type Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type LlamaServer } from 'llama-addon';
import { hasShared, shared } from './helpers/models.js';

// The built-in chat page, in headless Chromium (Debian's package; .ci/run installs it).
const executable = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const available = existsSync(executable) && hasShared;
if (!available && !process.env.CI) console.warn(`[llama-addon tests] skipping the chat page test: ${executable} or ../shared/models is missing`);

describe.runIf(available || process.env.CI)('the built-in chat page (headless Chromium)', () => {
  let server: LlamaServer;
  let browser: Browser;
  beforeAll(async () => {
    if (!existsSync(executable)) throw new Error(`CI is set but ${executable} is missing: install Debian's chromium package`);
    server = await startServer({ models: [{ alias: 'stories', path: shared('stories260k.gguf') }], port: 0, parallel: 2, contextSize: 2048, maxTokensLimit: 100_000 });
    await server.ready;
    browser = await chromium.launch({
      executablePath: executable,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  });
  afterAll(async () => {
    await browser?.close();
    await server?.close(1000);
  });

  it('streams a reply into the page, and the stop button ends a long one', async () => {
    const page = await browser.newPage();
    await page.goto(server.url + '/');
    await expect.poll(() => page.locator('#model option').count()).toBe(1);
    await page.fill('#max', '40');
    await page.fill('#input', 'Tell me a story');
    await page.click('#send');
    const reply = page.locator('.msg.assistant').first();
    await reply.locator('xpath=self::*[@data-done="true"]').waitFor({ timeout: 30_000 });
    expect((await reply.textContent())!.length).toBeGreaterThan(0);
    expect(await page.locator('.msg.user').first().textContent()).toBe('Tell me a story');

    // A second message streams (up to 100000 tokens, far more than fit in the time); Stop ends it and the
    // page is ready for the next one.
    const tokens = async () => Number((await (await fetch(server.url + '/metrics')).text()).match(/llama_completion_tokens_total\{model="stories"\} (\d+)/)?.[1] ?? 0);
    const before = await tokens();
    await page.fill('#max', '100000');
    await page.fill('#input', 'And a very long one, please');
    await page.click('#send');
    const second = page.locator('.msg.assistant').nth(1);
    await expect.poll(async () => ((await second.textContent()) ?? '').length, { timeout: 30_000 }).toBeGreaterThan(0);
    await page.click('#stop');
    await second.locator('xpath=self::*[@data-done="true"]').waitFor({ timeout: 10_000 });
    expect(await page.locator('#send').isDisabled()).toBe(false);
    expect(await page.locator('#stop').isDisabled()).toBe(true);
    // The server's generation ended with the request, long before its 100000 tokens.
    expect((await tokens()) - before).toBeLessThan(50_000);
    await expect
      .poll(async () => (await (await fetch(server.url + '/metrics')).text()).match(/llama_requests_running\{model="stories"\} (\d+)/)?.[1], { timeout: 5000 })
      .toBe('0');
    await page.close();
  });
});

import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, type Browser, type BrowserContext, type BrowserContextOptions, type Page, type Route } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type LlamaServer } from 'llama-addon';
import { hasShared, repoRoot, shared } from './helpers/models.js';

// The built-in chat page (web/chat/, bundled by scripts/build-page.mjs), in headless Chromium (Debian's
// package; .ci/run installs it). Against the real server with stories260k where the model's text does not
// matter; where it does (Markdown, a reply that carries script, reasoning, regenerate), the page's request
// is answered by a stream written here (Playwright's route), in the server's format.
const executable = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const available = existsSync(executable) && hasShared;
if (!available && !process.env.CI) console.warn(`[llama-addon tests] skipping the chat page test: ${executable} or ../shared/models is missing`);

/** The server's stream for a reply made of these deltas (one chunk each), with usage at the end. */
function stream(deltas: Array<Record<string, unknown>>, completionTokens = deltas.length): string {
  const chunk = (delta: Record<string, unknown>, finish: string | null) =>
    `data: ${JSON.stringify({ id: 'chatcmpl-test', object: 'chat.completion.chunk', created: 0, model: 'stories', choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }] })}\n\n`;
  return (
    chunk({ role: 'assistant', content: '' }, null) +
    deltas.map((d) => chunk(d, null)).join('') +
    chunk({}, 'stop') +
    `data: ${JSON.stringify({ choices: [], usage: { prompt_tokens: 5, completion_tokens: completionTokens, total_tokens: 5 + completionTokens } })}\n\n` +
    'data: [DONE]\n\n'
  );
}
/** Answers the page's chat requests with these replies in turn (each split into a few deltas); records the bodies. */
async function answer(page: Page, replies: string[]): Promise<Array<Record<string, unknown>>> {
  const bodies: Array<Record<string, unknown>> = [];
  await page.route('**/v1/chat/completions', async (route: Route) => {
    bodies.push(route.request().postDataJSON() as Record<string, unknown>);
    const text = replies[Math.min(bodies.length - 1, replies.length - 1)];
    const pieces = text.match(/[\s\S]{1,12}/g) ?? [];
    await route.fulfill({ status: 200, headers: { 'content-type': 'text/event-stream' }, body: stream(pieces.map((content) => ({ content }))) });
  });
  return bodies;
}

describe.runIf(available || process.env.CI)('the built-in chat page (headless Chromium)', () => {
  let server: LlamaServer;
  let browser: Browser;
  const contexts: BrowserContext[] = [];
  // What the page writes to the console as errors, and what it throws: a test ends with none (a
  // Content-Security-Policy violation is reported there too).
  let problems: string[] = [];

  async function open(url = server.url + '/', options: BrowserContextOptions = {}): Promise<Page> {
    const context = await browser.newContext(options);
    contexts.push(context);
    const page = await context.newPage();
    page.on('console', (m) => {
      if (m.type() === 'error' && !/status of 401/.test(m.text())) problems.push(m.text());
    });
    page.on('pageerror', (err) => problems.push(String(err)));
    await page.goto(url);
    return page;
  }
  const ready = (page: Page) => expect.poll(() => page.locator('#model option').count()).toBe(1);
  async function say(page: Page, text: string): Promise<void> {
    const before = await page.locator('.msg.assistant').count();
    await page.fill('#input', text);
    await page.click('#send');
    await page.locator('.msg.assistant').nth(before).and(page.locator('[data-done="true"]')).waitFor({ timeout: 30_000 });
  }
  async function setting(page: Page, id: string, value: string): Promise<void> {
    await page.click('#open-settings');
    await page.fill(`#${id}`, value);
    await page.click('#close-settings');
  }

  beforeAll(async () => {
    if (!existsSync(executable)) throw new Error(`CI is set but ${executable} is missing: install Debian's chromium package`);
    // The page the server serves is what web/chat/ makes.
    execFileSync(process.execPath, [join(repoRoot, 'scripts', 'build-page.mjs'), '--check'], { stdio: 'inherit' });
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
  const done = async () => {
    for (const c of contexts.splice(0)) await c.close();
    expect(problems).toEqual([]);
    problems = [];
  };

  it('streams a reply with its timings, and the stop button ends a long one', async () => {
    const page = await open();
    await ready(page);
    await setting(page, 'max', '40');
    await say(page, 'Tell me a story');
    const reply = page.locator('.msg.assistant').first();
    expect((await reply.locator('.content').textContent())!.length).toBeGreaterThan(0);
    expect(await page.locator('.msg.user .content').first().textContent()).toBe('Tell me a story');
    // Tokens (the server's count), tokens per second and time to first token.
    expect(await reply.locator('.stats').textContent()).toMatch(/^\d+ tokens · [\d.]+ tok\/s · first token \d+ ms$/);
    const tokens = Number((await reply.locator('.stats').textContent())!.split(' ')[0]);
    expect(tokens).toBeGreaterThan(0);
    expect(tokens).toBeLessThanOrEqual(40);

    // A second message streams (up to 100000 tokens, far more than fit in the time); Stop ends it and the
    // page is ready for the next one.
    const completed = async () => Number((await (await fetch(server.url + '/metrics')).text()).match(/llama_completion_tokens_total\{model="stories"\} (\d+)/)?.[1] ?? 0);
    const before = await completed();
    await setting(page, 'max', '100000');
    await page.fill('#input', 'And a very long one, please');
    await page.click('#send');
    const second = page.locator('.msg.assistant').nth(1);
    await expect.poll(async () => ((await second.locator('.content').textContent()) ?? '').length, { timeout: 30_000 }).toBeGreaterThan(0);
    expect(await page.locator('#send').isVisible()).toBe(false);
    await page.click('#stop');
    await second.and(page.locator('[data-done="true"]')).waitFor({ timeout: 10_000 });
    expect(await page.locator('#send').isDisabled()).toBe(false);
    expect(await page.locator('#stop').isDisabled()).toBe(true);
    expect(await second.locator('.stats').textContent()).toMatch(/stopped$/);
    // The server's generation ended with the request, long before its 100000 tokens.
    expect((await completed()) - before).toBeLessThan(50_000);
    await expect
      .poll(async () => (await (await fetch(server.url + '/metrics')).text()).match(/llama_requests_running\{model="stories"\} (\d+)/)?.[1], { timeout: 5000 })
      .toBe('0');
    await done();
  });

  it('renders Markdown with highlighted code, shows a reply’s HTML as text and runs none of it', async () => {
    const page = await open();
    await ready(page);
    await page.evaluate('window.pwned = 0');
    const reply = [
      '## Reading a file',
      '',
      'Use **fs** and `readFile`:',
      '',
      '```js',
      "const text = await readFile('a.txt', 'utf8'); // a comment",
      '```',
      '',
      '- one',
      '- two',
      '',
      '<script>window.pwned = 1</script>',
      '',
      'Inline <img src="x" onerror="window.pwned = 2"> and <b onmouseover="window.pwned = 3">bold</b>.',
      '',
      '[a link](javascript:window.pwned=4) and [a real one](https://example.com/)',
      '',
      '![image](x" onerror="window.pwned=5)',
    ].join('\n');
    await answer(page, [reply]);
    await say(page, 'Show me');
    const md = page.locator('.msg.assistant .content');
    expect(await md.locator('h2').textContent()).toBe('Reading a file');
    expect(await md.locator('strong').textContent()).toBe('fs');
    expect(await md.locator('li').count()).toBe(2);
    // highlight.js markup in the code block
    const code = md.locator('pre code');
    expect(await code.getAttribute('class')).toBe('hljs language-js');
    expect(await code.locator('.hljs-keyword').first().textContent()).toBe('const');
    expect(await code.locator('.hljs-string').first().textContent()).toBe("'a.txt'");
    expect(await code.locator('.hljs-comment').textContent()).toBe('// a comment');
    expect(await code.textContent()).toBe("const text = await readFile('a.txt', 'utf8'); // a comment");
    // The HTML is text; nothing ran, the javascript: link lost its href, the real one opens apart.
    expect(await md.locator('script, img[onerror], [onerror], [onmouseover], b').count()).toBe(0);
    expect(await md.textContent()).toContain('<script>window.pwned = 1</script>');
    expect(await md.textContent()).toContain('<img src="x" onerror="window.pwned = 2">');
    const links = md.locator('a');
    expect(await links.count()).toBe(2);
    expect(await links.first().getAttribute('href')).toBeNull();
    expect(await links.nth(1).getAttribute('href')).toBe('https://example.com/');
    expect(await links.nth(1).getAttribute('rel')).toContain('noopener');
    await links.first().click();
    for (const img of await md.locator('img').all()) await img.dispatchEvent('error');
    await page.locator('.msg.assistant .content').hover();
    expect(await page.evaluate('window.pwned')).toBe(0);
    // The Content-Security-Policy would stop an inline script that got through.
    const blocked = await page.evaluate(`new Promise((resolve) => {
      document.addEventListener('securitypolicyviolation', () => resolve(true), { once: true });
      const s = document.createElement('script');
      s.textContent = 'window.pwned = 6';
      document.body.append(s);
      setTimeout(() => resolve(false), 1000);
    })`);
    expect(blocked).toBe(true);
    expect(await page.evaluate('window.pwned')).toBe(0);
    problems = problems.filter((p) => !p.includes('Content Security Policy'));
    await done();
  });

  it('shows a thinking model’s reasoning apart and collapsed, from <think> text or reasoning_content', async () => {
    const page = await open();
    await ready(page);
    let n = 0;
    await page.route('**/v1/chat/completions', async (route) => {
      n++;
      const deltas =
        n === 1
          ? [{ content: '<think>' }, { content: 'The user greets me.' }, { content: '</think>' }, { content: '\n\nHello **there**.' }]
          : [{ reasoning_content: 'Second ' }, { reasoning_content: 'thoughts.' }, { content: 'Hi again.' }];
      await route.fulfill({ status: 200, headers: { 'content-type': 'text/event-stream' }, body: stream(deltas) });
    });
    await say(page, 'Hello');
    await say(page, 'Hello again');
    const [first, second] = await page.locator('.msg.assistant').all();
    for (const [msg, thought, text] of [
      [first, 'The user greets me.', 'Hello there.'],
      [second, 'Second thoughts.', 'Hi again.'],
    ] as const) {
      const details = msg.locator('details.reasoning');
      expect(await details.isVisible()).toBe(true);
      expect(await details.getAttribute('open')).toBeNull();
      expect(await details.locator('summary').textContent()).toBe('Reasoning');
      expect(await details.locator('.text').textContent()).toBe(thought);
      expect(await details.locator('.text').isVisible()).toBe(false);
      expect((await msg.locator('.content').textContent())!.trim()).toBe(text);
      await details.locator('summary').click();
      expect(await details.locator('.text').isVisible()).toBe(true);
    }
    await done();
  });

  it('keeps conversations across a reload, switches between them and deletes them', async () => {
    const page = await open();
    await ready(page);
    await setting(page, 'max', '8');
    await say(page, 'First chat');
    const shown = await page.locator('.msg.assistant .content').innerHTML();
    await page.click('#new');
    expect(await page.locator('.msg').count()).toBe(0);
    await say(page, 'Second chat');
    await say(page, 'More of the second');
    expect(await page.locator('#convs li').count()).toBe(2);

    await page.reload();
    await ready(page);
    // Newest first; the one open before the reload is open again.
    expect(await page.locator('#convs li .open').allTextContents()).toEqual(['Second chat', 'First chat']);
    expect(await page.locator('#convs li[aria-current="true"] .open').textContent()).toBe('Second chat');
    expect(await page.locator('.msg.user .content').allTextContents()).toEqual(['Second chat', 'More of the second']);
    expect(await page.locator('.msg.assistant').count()).toBe(2);
    expect(await page.inputValue('#max')).toBe('8');

    await page.click('#convs li:nth-child(2) .open');
    expect(await page.locator('.msg.user .content').allTextContents()).toEqual(['First chat']);
    expect(await page.locator('.msg.assistant .content').innerHTML()).toBe(shown);
    const stored = JSON.parse((await page.evaluate("localStorage.getItem('llama-addon.chat.conversations')")) as string) as Array<{ title: string; messages: Array<{ content: string }> }>;
    const firstReply = stored.find((c) => c.title === 'First chat')!.messages[1].content;
    expect(firstReply.length).toBeGreaterThan(0);
    // Continuing it sends its history.
    const request = page.waitForRequest('**/v1/chat/completions');
    await say(page, 'Go on');
    const body = (await request).postDataJSON() as { messages: Array<{ role: string; content: string }> };
    expect(body.messages).toEqual([
      { role: 'user', content: 'First chat' },
      { role: 'assistant', content: firstReply },
      { role: 'user', content: 'Go on' },
    ]);
    expect(await page.locator('#convs li .open').allTextContents()).toEqual(['First chat', 'Second chat']);

    await page.click('#convs li:nth-child(2) .delete');
    expect(await page.locator('#convs li .open').allTextContents()).toEqual(['First chat']);
    await page.reload();
    await ready(page);
    expect(await page.locator('#convs li .open').allTextContents()).toEqual(['First chat']);
    await page.click('#convs li:nth-child(1) .delete');
    expect(await page.locator('#convs li').count()).toBe(0);
    expect(await page.locator('.empty').isVisible()).toBe(true);
    await done();
  });

  it('sends the settings with each request, and keeps them', async () => {
    const page = await open();
    await ready(page);
    await page.click('#open-settings');
    await page.fill('#system', 'You are a storyteller.');
    await page.fill('#temperature', '0.3');
    await page.fill('#top-p', '0.8');
    await page.fill('#max', '7');
    await page.click('#close-settings');
    await page.reload();
    await ready(page);
    expect([await page.inputValue('#system'), await page.inputValue('#temperature'), await page.inputValue('#top-p'), await page.inputValue('#max')]).toEqual(['You are a storyteller.', '0.3', '0.8', '7']);

    const request = page.waitForRequest('**/v1/chat/completions');
    await say(page, 'Once upon a time');
    const body = (await request).postDataJSON() as Record<string, unknown>;
    expect(body).toEqual({
      model: 'stories',
      messages: [
        { role: 'system', content: 'You are a storyteller.' },
        { role: 'user', content: 'Once upon a time' },
      ],
      stream: true,
      stream_options: { include_usage: true },
      temperature: 0.3,
      top_p: 0.8,
      max_tokens: 7,
    });
    // The server applied max_tokens: its count of the reply's tokens.
    expect(Number((await page.locator('.msg.assistant .stats').textContent())!.split(' ')[0])).toBeLessThanOrEqual(7);

    // Cleared fields are left to the server.
    await setting(page, 'temperature', '');
    const next = page.waitForRequest('**/v1/chat/completions');
    await say(page, 'Again');
    expect((await next).postDataJSON()).not.toHaveProperty('temperature');
    await done();
  });

  it('regenerates the last answer in its place, and copies a message', async () => {
    const page = await open();
    await ready(page);
    const bodies = await answer(page, ['Answer one', 'Answer **two**']);
    await say(page, 'A question');
    expect((await page.locator('.msg.assistant .content').textContent())!.trim()).toBe('Answer one');
    // Only the last answer can be regenerated.
    expect(await page.locator('.msg.assistant .regenerate').count()).toBe(1);
    await page.click('.msg.assistant .regenerate');
    await expect.poll(async () => (await page.locator('.msg.assistant .content').textContent())!.trim()).toBe('Answer two');
    await page.locator('.msg.assistant[data-done="true"]').waitFor();
    expect(await page.locator('.msg.assistant').count()).toBe(1);
    expect(bodies.map((b) => b.messages)).toEqual([[{ role: 'user', content: 'A question' }], [{ role: 'user', content: 'A question' }]]);
    await page.reload();
    await ready(page);
    expect((await page.locator('.msg .content').allTextContents()).map((t) => t.trim())).toEqual(['A question', 'Answer two']);

    await page.context().grantPermissions(['clipboard-read', 'clipboard-write'], { origin: server.url });
    await page.click('.msg.assistant .copy');
    // The label changes once the clipboard write resolves (and back after 1.2 s): wait for it, not a moment.
    await expect.poll(() => page.locator('.msg.assistant .copy').textContent(), { interval: 20 }).toBe('Copied');
    expect(await page.evaluate('navigator.clipboard.readText()')).toBe('Answer **two**');
    await done();
  });

  it('switches between light and dark themes, following the system until told', async () => {
    const page = await open(undefined, { colorScheme: 'dark' });
    const background = () => page.evaluate('getComputedStyle(document.body).backgroundColor');
    const dark = await background();
    expect(dark).toBe('rgb(17, 19, 24)');
    await page.click('#theme'); // auto → light
    expect(await page.evaluate('document.documentElement.dataset.theme')).toBe('light');
    expect(await background()).toBe('rgb(255, 255, 255)');
    await page.reload();
    expect(await background()).toBe('rgb(255, 255, 255)');
    await page.click('#theme'); // light → dark
    await page.emulateMedia({ colorScheme: 'light' });
    expect(await background()).toBe(dark);
    await page.click('#theme'); // dark → auto
    expect(await background()).toBe('rgb(255, 255, 255)');
    expect(await page.locator('link[rel="icon"]').getAttribute('href')).toMatch(/^data:image\/svg\+xml,/);
    await done();
  });

  it('takes ?key= for a server with an API key, and keeps it out of the address bar', async () => {
    const keyed = await startServer({ models: [{ alias: 'stories', path: shared('stories260k.gguf') }], port: 0, contextSize: 512, apiKey: 'sekret' });
    try {
      await keyed.ready;
      const page = await open(keyed.url + '/?key=sekret&x=1');
      await ready(page);
      expect(page.url()).toBe(keyed.url + '/?x=1');
      const request = page.waitForRequest('**/v1/chat/completions');
      await setting(page, 'max', '5');
      await say(page, 'Hi');
      expect((await request).headers().authorization).toBe('Bearer sekret');
      expect(await page.locator('.msg.assistant .error').isVisible()).toBe(false);
      expect((await page.locator('.msg.assistant .content').textContent())!.length).toBeGreaterThan(0);
      // A reload (the address has no key now) still has it; a new tab without it says what to do.
      await page.reload();
      await ready(page);
      const other = await open(keyed.url + '/');
      await expect.poll(() => other.locator('#notice').textContent()).toMatch(/Missing or wrong API key.*\?key=/);
      await done();
    } finally {
      await keyed.close(1000);
    }
  });

  it('fits a phone: no horizontal scroll, the conversations slide in', async () => {
    const page = await open(undefined, { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
    await ready(page);
    await answer(page, [
      [
        'A long line of code scrolls inside its block:',
        '',
        '```python',
        `print("${'x'.repeat(300)}")`,
        '```',
        '',
        `and a long word: ${'y'.repeat(200)} and a link https://example.com/${'z'.repeat(150)}`,
        '',
        '| a | b | c | d | e | f |',
        '|---|---|---|---|---|---|',
        `| ${'wide cell '.repeat(6)} | 2 | 3 | 4 | 5 | 6 |`,
      ].join('\n'),
    ]);
    await page.fill('#input', 'Something wide');
    await page.click('#send');
    await page.locator('.msg.assistant[data-done="true"]').waitFor();
    const widths = (await page.evaluate(`({
      page: document.documentElement.scrollWidth,
      body: document.body.scrollWidth,
      log: document.getElementById('log').scrollWidth,
      viewport: window.innerWidth,
    })`)) as Record<string, number>;
    expect(widths.viewport).toBe(390);
    expect(widths.page).toBeLessThanOrEqual(390);
    expect(widths.body).toBeLessThanOrEqual(390);
    expect(widths.log).toBeLessThanOrEqual(390);
    // The code block scrolls by itself.
    expect(await page.locator('pre code').evaluate((e) => e.scrollWidth > e.clientWidth)).toBe(true);
    // The list of conversations is off screen until the menu opens it; picking one closes it.
    expect(await page.locator('#sidebar').isVisible()).toBe(false);
    await page.tap('#menu');
    await page.locator('#sidebar').waitFor({ state: 'visible' });
    await page.waitForTimeout(300); // the slide
    const box = (await page.locator('#sidebar').boundingBox())!;
    expect(box.x).toBe(0);
    expect(box.width).toBeLessThanOrEqual(390);
    await page.tap('#convs li .open');
    await page.locator('#sidebar').waitFor({ state: 'hidden' });
    // The settings fit too.
    await page.tap('#open-settings');
    const dialog = (await page.locator('#settings').boundingBox())!;
    expect(dialog.x).toBeGreaterThanOrEqual(0);
    expect(dialog.x + dialog.width).toBeLessThanOrEqual(390);
    await done();
  });

  // `LLAMA_ADDON_SCREENSHOTS=1 npx vitest run test/page.test.ts` writes the README's screenshots to docs/.
  // The first answer in them is a stored example (stories260k only tells stories); the second is the
  // model's, streamed then.
  it.runIf(process.env.LLAMA_ADDON_SCREENSHOTS)('takes the screenshots in docs/', async () => {
    const example = [
      { id: 'c3', title: 'Stream a reply from Node.js', created: 3, updated: 3, messages: [] as unknown[] },
      { id: 'c2', title: 'What is a GGUF file?', created: 2, updated: 2, messages: [{ role: 'user', content: 'What is a GGUF file?' }, { role: 'assistant', content: 'A single-file format for model weights and metadata.' }] },
      { id: 'c1', title: 'Quantization types compared', created: 1, updated: 1, messages: [{ role: 'user', content: 'Quantization types compared' }, { role: 'assistant', content: 'Q4_K_M is a good default.' }] },
    ];
    example[0].messages = [
      { role: 'user', content: 'How do I stream a reply with llama-addon?' },
      {
        role: 'assistant',
        reasoning: 'The user wants streaming: session.generate returns an async iterator of chunks.',
        content: [
          'Load the model, make a context and a session, then iterate over `generate`:',
          '',
          '```ts',
          "import { loadModel } from 'llama-addon';",
          '',
          "await using model = await loadModel('stories260k.gguf');",
          'const ctx = await model.createContext({ contextSize: 2048 });',
          'const session = ctx.createSession();',
          '',
          "for await (const chunk of session.generate('Once upon a time', { maxTokens: 64 })) {",
          '  process.stdout.write(chunk.text); // each piece as it is decoded',
          '}',
          '```',
          '',
          '- `await using` frees the model at the end of the block',
          '- `gen.result` resolves with the **stop reason** and timings',
        ].join('\n'),
      },
    ];
    const docs = join(repoRoot, 'docs');
    mkdirSync(docs, { recursive: true });
    const shoot = async (name: string, options: BrowserContextOptions) => {
      const context = await browser.newContext(options);
      contexts.push(context);
      await context.addInitScript({
        content: `if (!localStorage.getItem('llama-addon.chat.conversations')) {
          localStorage.setItem('llama-addon.chat.conversations', ${JSON.stringify(JSON.stringify(example))});
          localStorage.setItem('llama-addon.chat.settings', '{"max_tokens":"48","temperature":"0.8"}');
        }`,
      });
      const page = await context.newPage();
      await page.goto(server.url + '/');
      await ready(page);
      await say(page, 'Now tell me a short story.');
      await page.fill('#input', '');
      await page.mouse.move(0, 0);
      await page.screenshot({ path: join(docs, name) });
    };
    await shoot('chat-page-light.png', { viewport: { width: 1280, height: 800 }, colorScheme: 'light' });
    await shoot('chat-page-dark.png', { viewport: { width: 1280, height: 800 }, colorScheme: 'dark' });
    await shoot('chat-page-phone.png', { viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true, colorScheme: 'light' });
    await done();
  });
});

// The chat page's script (bundled with its libraries by scripts/build-page.mjs). It talks to the server's
// own OpenAI-compatible endpoints only: GET /v1/models and streamed POST /v1/chat/completions.
import { renderMarkdown } from './markdown.js';

const $ = (id) => document.getElementById(id);
const log = $('log');
const input = $('input');
const sendButton = $('send');
const stopButton = $('stop');
const modelSelect = $('model');
const list = $('convs');
const notice = $('notice');
const dialog = $('settings');

const STORE = 'llama-addon.chat.conversations';
const CURRENT = 'llama-addon.chat.current';
const SETTINGS = 'llama-addon.chat.settings';
const THEME = 'llama-addon.chat.theme';
const KEY = 'llama-addon.chat.key';

function load(key, fallback) {
  try {
    const value = localStorage.getItem(key);
    return value ? JSON.parse(value) : fallback;
  } catch {
    return fallback;
  }
}
function save(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
  } catch (err) {
    showNotice(`This browser did not keep the change: ${err.message}`);
  }
}
function showNotice(text) {
  notice.textContent = text;
  notice.hidden = !text;
}

// ?key=KEY: kept for this tab (sessionStorage, so that a reload still has it) and taken out of the address
// bar and the history entry, then sent as Authorization: Bearer with every request.
let apiKey = null;
try {
  apiKey = sessionStorage.getItem(KEY);
} catch {}
const params = new URLSearchParams(location.search);
if (params.has('key')) {
  apiKey = params.get('key');
  try {
    sessionStorage.setItem(KEY, apiKey);
  } catch {}
  params.delete('key');
  const query = params.toString();
  history.replaceState(history.state, '', location.pathname + (query ? `?${query}` : '') + location.hash);
}
function headers() {
  return { 'content-type': 'application/json', ...(apiKey ? { authorization: `Bearer ${apiKey}` } : {}) };
}
async function errorOf(res) {
  let message = `${res.status} ${res.statusText}`;
  try {
    message = (await res.json()).error?.message || message;
  } catch {}
  if (res.status === 401) message += '. Open this page as /?key=YOUR_KEY.';
  return new Error(message);
}

// Theme: the system's (auto), light or dark; the button goes round the three.
const themes = ['auto', 'light', 'dark'];
function applyTheme(theme) {
  if (theme === 'light' || theme === 'dark') document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
  const label = `Theme: ${theme} (click for ${themes[(themes.indexOf(theme) + 1) % 3]})`;
  $('theme').title = label;
  $('theme').setAttribute('aria-label', label);
}
let theme = load(THEME, 'auto');
applyTheme(theme);
$('theme').onclick = () => {
  theme = themes[(themes.indexOf(theme) + 1) % 3];
  save(THEME, theme);
  applyTheme(theme);
};

// Settings: empty fields leave the value to the server.
const settings = { system: '', temperature: '', top_p: '', max_tokens: '', model: '', ...load(SETTINGS, {}) };
const fields = { system: $('system'), temperature: $('temperature'), top_p: $('top-p'), max_tokens: $('max') };
for (const [name, field] of Object.entries(fields)) {
  field.value = settings[name];
  field.addEventListener('input', () => {
    settings[name] = field.value;
    save(SETTINGS, settings);
  });
}
$('open-settings').onclick = () => dialog.showModal();
$('close-settings').onclick = () => dialog.close();
dialog.addEventListener('click', (e) => {
  if (e.target === dialog) dialog.close(); // a click on the backdrop
});

// Models.
fetch('/v1/models', { headers: headers() })
  .then(async (res) => {
    if (!res.ok) throw await errorOf(res);
    const models = (await res.json()).data;
    for (const m of models) modelSelect.add(new Option(m.id, m.id));
    if (models.some((m) => m.id === settings.model)) modelSelect.value = settings.model;
    renderLog();
  })
  .catch((err) => showNotice(`Could not list the models: ${err.message}`));
modelSelect.onchange = () => {
  settings.model = modelSelect.value;
  save(SETTINGS, settings);
};

// Conversations: [{ id, title, created, updated, messages: [{ role, content, reasoning?, stats?, error?,
// stopped? }] }], newest first, in localStorage.
let conversations = load(STORE, []);
if (!Array.isArray(conversations)) conversations = [];
let current = load(CURRENT, null);
if (!conversations.some((c) => c.id === current)) current = conversations[0]?.id ?? null;
// The answer being streamed: { conv, msg, el, controller }.
let live = null;

const currentConv = () => conversations.find((c) => c.id === current) ?? null;
function persist() {
  conversations.sort((a, b) => b.updated - a.updated);
  save(STORE, conversations);
  save(CURRENT, current);
}
function select(id) {
  current = id;
  save(CURRENT, current);
  document.body.classList.remove('nav-open');
  renderList();
  renderLog();
}

const icons = {
  copy: '<svg viewBox="0 0 24 24"><rect x="9" y="9" width="12" height="12" rx="2"/><path d="M5 15H4a2 2 0 0 1-2-2V4a2 2 0 0 1 2-2h9a2 2 0 0 1 2 2v1"/></svg>',
  regenerate: '<svg viewBox="0 0 24 24"><path d="M21 4v6h-6"/><path d="M20.5 15a9 9 0 1 1-2.1-9.4L21 10"/></svg>',
  delete: '<svg viewBox="0 0 24 24"><path d="M18 6 6 18M6 6l12 12"/></svg>',
};
function button(className, icon, label) {
  const b = document.createElement('button');
  b.type = 'button';
  b.className = className;
  b.title = label;
  b.innerHTML = icons[icon]; // the page's own markup
  b.append(label);
  return b;
}

function renderList() {
  list.replaceChildren(
    ...conversations.map((c) => {
      const li = document.createElement('li');
      li.dataset.id = c.id;
      li.setAttribute('aria-current', String(c.id === current));
      const open = document.createElement('button');
      open.type = 'button';
      open.className = 'open';
      open.textContent = c.title || 'New chat';
      open.title = c.title;
      open.onclick = () => select(c.id);
      const del = button('delete', 'delete', '');
      del.title = 'Delete';
      del.setAttribute('aria-label', `Delete "${c.title}"`);
      del.onclick = () => remove(c.id);
      li.append(open, del);
      return li;
    }),
  );
  $('title').textContent = currentConv()?.title ?? '';
  document.title = currentConv() ? `${currentConv().title} · llama-addon` : 'llama-addon chat';
}

function remove(id) {
  if (live && live.conv.id === id) live.controller.abort();
  conversations = conversations.filter((c) => c.id !== id);
  if (current === id) current = conversations[0]?.id ?? null;
  persist();
  renderList();
  renderLog();
}

const nearBottom = () => log.scrollHeight - log.scrollTop - log.clientHeight < 60;
const toBottom = () => {
  log.scrollTop = log.scrollHeight;
};

function renderLog() {
  const conv = currentConv();
  if (!conv || conv.messages.length === 0) {
    const empty = document.createElement('div');
    empty.className = 'empty';
    const img = document.createElement('img');
    img.src = document.querySelector('link[rel=icon]').href;
    img.alt = '';
    const h = document.createElement('h1');
    h.textContent = modelSelect.value ? `Chat with ${modelSelect.value}` : 'llama-addon chat';
    const p = document.createElement('p');
    p.textContent = 'Replies are rendered as Markdown. Conversations and settings stay in this browser.';
    empty.append(img, h, p);
    log.replaceChildren(empty);
    return;
  }
  const lastAssistant = conv.messages.length - 1;
  log.replaceChildren(
    ...conv.messages.map((msg, i) => {
      const el = messageElement(msg, i === lastAssistant && msg.role === 'assistant');
      if (live && live.msg === msg) live.el = el;
      return el;
    }),
  );
  toBottom();
}

function messageElement(msg, last) {
  const el = document.createElement('div');
  el.className = `msg ${msg.role}`;
  el.dataset.done = String(!(live && live.msg === msg));
  const meta = document.createElement('div');
  meta.className = 'meta';
  if (msg.role === 'user') {
    const content = document.createElement('div');
    content.className = 'content';
    content.textContent = msg.content;
    meta.append(button('copy', 'copy', 'Copy'));
    meta.lastChild.onclick = (e) => copy(msg.content, e.currentTarget);
    el.append(content, meta);
    return el;
  }
  const reasoning = document.createElement('details');
  reasoning.className = 'reasoning';
  reasoning.innerHTML = '<summary>Reasoning</summary><div class="text"></div>';
  const content = document.createElement('div');
  content.className = 'content md';
  const error = document.createElement('div');
  error.className = 'error';
  const stats = document.createElement('span');
  stats.className = 'stats';
  const copyButton = button('copy', 'copy', 'Copy');
  copyButton.onclick = (e) => copy(msg.content, e.currentTarget);
  meta.append(stats, copyButton);
  if (last) {
    const regen = button('regenerate', 'regenerate', 'Regenerate');
    regen.onclick = regenerate;
    regen.disabled = Boolean(live);
    meta.append(regen);
  }
  el.append(reasoning, content, error, meta);
  updateAssistant(el, msg);
  return el;
}

function updateAssistant(el, msg) {
  const [reasoning, content, error, meta] = el.children;
  reasoning.hidden = !msg.reasoning;
  reasoning.dataset.thinking = String(Boolean(msg.thinking));
  reasoning.querySelector('summary').textContent = msg.thinking ? 'Thinking' : 'Reasoning';
  reasoning.querySelector('.text').textContent = msg.reasoning || '';
  content.innerHTML = renderMarkdown(msg.content || '');
  for (const pre of content.querySelectorAll('pre')) {
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'copy-code';
    b.textContent = 'Copy';
    b.onclick = () => copy(pre.querySelector('code').textContent, b);
    pre.append(b);
  }
  error.textContent = msg.error || '';
  error.hidden = !msg.error;
  meta.querySelector('.stats').textContent = statsText(msg);
  meta.hidden = el.dataset.done === 'false';
}

function statsText(msg) {
  const s = msg.stats;
  if (!s) return '';
  const parts = [];
  if (s.tokens) parts.push(`${s.exact ? '' : '≈'}${s.tokens} tokens`);
  if (s.tps) parts.push(`${s.tps.toFixed(1)} tok/s`);
  if (s.ttft != null) parts.push(`first token ${Math.round(s.ttft)} ms`);
  if (msg.stopped) parts.push('stopped');
  return parts.join(' · ');
}

async function copy(text, b) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // Not a secure context (a LAN address over http): the older way.
    const ta = document.createElement('textarea');
    ta.value = text;
    ta.setAttribute('readonly', '');
    ta.style.position = 'fixed';
    ta.style.opacity = '0';
    document.body.append(ta);
    ta.select();
    document.execCommand('copy');
    ta.remove();
  }
  const before = b.lastChild.textContent;
  b.lastChild.textContent = 'Copied';
  setTimeout(() => {
    b.lastChild.textContent = before;
  }, 1200);
}

// Reasoning that a model writes into its text between <think> and </think> (the server streams the raw
// text; a server that sends reasoning_content deltas is read too).
function splitThink(raw) {
  const open = /^\s*<think>/.exec(raw);
  if (open) {
    const rest = raw.slice(open[0].length);
    const end = rest.indexOf('</think>');
    if (end < 0) return { reasoning: rest, content: '', thinking: true };
    return { reasoning: rest.slice(0, end).trim(), content: rest.slice(end + 8).trimStart(), thinking: false };
  }
  // Templates that open the block in the prompt: the text starts inside it.
  const end = raw.indexOf('</think>');
  if (end >= 0 && !raw.slice(0, end).includes('<think>')) return { reasoning: raw.slice(0, end).trim(), content: raw.slice(end + 8).trimStart(), thinking: false };
  return { reasoning: '', content: raw, thinking: false };
}

async function* events(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, '\n');
    let i;
    while ((i = buffer.indexOf('\n\n')) >= 0) {
      const event = buffer.slice(0, i);
      buffer = buffer.slice(i + 2);
      const data = event
        .split('\n')
        .filter((line) => line.startsWith('data:'))
        .map((line) => line.slice(5).replace(/^ /, ''))
        .join('\n');
      if (data) yield data;
    }
  }
}

function setBusy(busy) {
  sendButton.disabled = busy;
  sendButton.hidden = busy;
  stopButton.disabled = !busy;
  stopButton.hidden = !busy;
  for (const b of log.querySelectorAll('.regenerate')) b.disabled = busy;
}

function numberSetting(name) {
  const v = String(settings[name] ?? '').trim();
  return v === '' || !Number.isFinite(Number(v)) ? undefined : Number(v);
}

async function generate(conv) {
  const history = conv.messages.filter((m) => m.content).map((m) => ({ role: m.role, content: m.content }));
  const msg = { role: 'assistant', content: '', reasoning: '' };
  conv.messages.push(msg);
  conv.updated = Date.now();
  const controller = new AbortController();
  live = { conv, msg, controller, el: null };
  persist();
  renderList();
  renderLog();
  setBusy(true);

  const body = {
    model: modelSelect.value || undefined,
    messages: [...(settings.system.trim() ? [{ role: 'system', content: settings.system }] : []), ...history],
    stream: true,
    stream_options: { include_usage: true },
  };
  for (const name of ['temperature', 'top_p', 'max_tokens']) {
    const v = numberSetting(name);
    if (v !== undefined) body[name] = v;
  }

  const t0 = performance.now();
  let first = 0;
  let chunks = 0;
  let usage = null;
  let raw = '';
  let reasoned = '';
  let frame = 0;
  const paint = () => {
    frame = 0;
    if (!live?.el || !live.el.isConnected) return;
    const stick = nearBottom();
    updateAssistant(live.el, msg);
    if (stick) toBottom();
  };
  try {
    const res = await fetch('/v1/chat/completions', { method: 'POST', headers: headers(), body: JSON.stringify(body), signal: controller.signal });
    if (!res.ok) throw await errorOf(res);
    for await (const data of events(res.body)) {
      if (data === '[DONE]') break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      const delta = chunk.choices?.[0]?.delta;
      if (!delta) continue;
      const text = delta.content || '';
      const thought = delta.reasoning_content || delta.reasoning || '';
      if (!text && !thought) continue;
      if (!first) first = performance.now();
      chunks++;
      raw += text;
      reasoned += thought;
      const split = splitThink(raw);
      msg.content = split.content;
      msg.reasoning = [reasoned, split.reasoning].filter(Boolean).join('\n');
      msg.thinking = split.thinking || (Boolean(reasoned) && !split.content);
      if (!frame) frame = requestAnimationFrame(paint);
    }
  } catch (err) {
    if (err.name === 'AbortError') msg.stopped = true;
    else msg.error = String(err.message || err);
  } finally {
    if (frame) cancelAnimationFrame(frame);
    const end = performance.now();
    const tokens = usage?.completion_tokens ?? chunks;
    msg.thinking = false;
    msg.stats = {
      tokens,
      exact: Boolean(usage),
      ttft: first ? first - t0 : null,
      tps: first && tokens > 1 && end > first ? (tokens - 1) / ((end - first) / 1000) : null,
    };
    const el = live.el;
    live = null;
    conv.updated = Date.now();
    persist();
    renderList();
    if (el?.isConnected) {
      const stick = nearBottom();
      el.dataset.done = 'true';
      updateAssistant(el, msg);
      if (stick) toBottom();
    }
    setBusy(false);
    if (matchMedia('(pointer: fine)').matches) input.focus();
  }
}

function regenerate() {
  const conv = currentConv();
  if (!conv || live) return;
  if (conv.messages.at(-1)?.role === 'assistant') conv.messages.pop();
  if (conv.messages.length) generate(conv);
}

$('form').onsubmit = (e) => {
  e.preventDefault();
  const text = input.value.trim();
  if (!text || live) return;
  input.value = '';
  grow();
  let conv = currentConv();
  if (!conv) {
    conv = { id: `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`, title: text.replace(/\s+/g, ' ').slice(0, 60), created: Date.now(), updated: Date.now(), messages: [] };
    conversations.unshift(conv);
    current = conv.id;
  }
  conv.messages.push({ role: 'user', content: text });
  generate(conv);
};
stopButton.onclick = () => live?.controller.abort();
$('new').onclick = () => select(null);
$('menu').onclick = () => document.body.classList.toggle('nav-open');
$('scrim').onclick = () => document.body.classList.remove('nav-open');

// Enter sends (on a touch screen it starts a new line, and the button sends).
input.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && !matchMedia('(pointer: coarse)').matches) {
    e.preventDefault();
    $('form').requestSubmit();
  }
});
function grow() {
  input.style.height = 'auto';
  input.style.height = `${Math.min(input.scrollHeight, window.innerHeight * 0.4)}px`;
}
input.addEventListener('input', grow);

// Another tab changed the conversations: show them (unless this one is streaming into them).
window.addEventListener('storage', (e) => {
  if (e.key !== STORE || live) return;
  conversations = load(STORE, []);
  if (!conversations.some((c) => c.id === current)) current = conversations[0]?.id ?? null;
  renderList();
  renderLog();
});

renderList();
renderLog();
if (matchMedia('(pointer: fine)').matches) input.focus();

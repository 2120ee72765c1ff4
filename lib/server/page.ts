// The built-in chat page served at `/`: one file, no build step, streaming through the server's own
// OpenAI-compatible endpoint, with a stop button.
export const chatPage = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>llama-addon chat</title>
<style>
  body { font: 15px/1.5 system-ui, sans-serif; margin: 0; display: flex; flex-direction: column; height: 100vh; }
  header { padding: .5rem 1rem; border-bottom: 1px solid #ddd; display: flex; gap: .5rem; align-items: center; }
  #log { flex: 1; overflow-y: auto; padding: 1rem; }
  .msg { margin: .5rem 0; white-space: pre-wrap; }
  .user { color: #024; font-weight: 600; }
  .assistant { color: #222; }
  .error { color: #a00; }
  form { display: flex; gap: .5rem; padding: .5rem 1rem; border-top: 1px solid #ddd; }
  textarea { flex: 1; font: inherit; min-height: 3em; }
</style>
</head>
<body>
<header>
  <strong>llama-addon</strong>
  <label>model <select id="model"></select></label>
  <label>max tokens <input id="max" type="number" min="1" placeholder="server's" style="width:7em"></label>
  <button id="reset" type="button">New chat</button>
</header>
<div id="log" aria-live="polite"></div>
<form id="form">
  <textarea id="input" placeholder="Message (Enter to send, Shift+Enter for a new line)"></textarea>
  <button id="send" type="submit">Send</button>
  <button id="stop" type="button" disabled>Stop</button>
</form>
<script>
const log = document.getElementById('log');
const input = document.getElementById('input');
const send = document.getElementById('send');
const stop = document.getElementById('stop');
const select = document.getElementById('model');
const headers = { 'content-type': 'application/json' };
const key = new URLSearchParams(location.search).get('key');
if (key) headers.authorization = 'Bearer ' + key;
let messages = [];
let controller = null;

function add(role, text) {
  const div = document.createElement('div');
  div.className = 'msg ' + role;
  div.textContent = text;
  log.appendChild(div);
  log.scrollTop = log.scrollHeight;
  return div;
}

fetch('/v1/models', { headers }).then((r) => r.json()).then((m) => {
  for (const x of m.data) select.add(new Option(x.id, x.id));
});

document.getElementById('reset').onclick = () => { messages = []; log.textContent = ''; };
stop.onclick = () => controller && controller.abort();
input.onkeydown = (e) => { if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); document.getElementById('form').requestSubmit(); } };

document.getElementById('form').onsubmit = async (e) => {
  e.preventDefault();
  const text = input.value.trim();
  if (!text || controller) return;
  input.value = '';
  messages.push({ role: 'user', content: text });
  add('user', text);
  const out = add('assistant', '');
  controller = new AbortController();
  send.disabled = true;
  stop.disabled = false;
  try {
    const res = await fetch('/v1/chat/completions', {
      method: 'POST', headers, signal: controller.signal,
      body: JSON.stringify({
        model: select.value || undefined, messages, stream: true,
        ...(document.getElementById('max').value ? { max_tokens: Number(document.getElementById('max').value) } : {}),
      }),
    });
    if (!res.ok) throw new Error((await res.json()).error?.message || res.statusText);
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let i;
      while ((i = buffer.indexOf('\\n\\n')) >= 0) {
        const event = buffer.slice(0, i);
        buffer = buffer.slice(i + 2);
        const data = event.replace(/^data: /, '');
        if (data === '[DONE]') continue;
        const chunk = JSON.parse(data);
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        if (delta && delta.content) out.textContent += delta.content;
        log.scrollTop = log.scrollHeight;
      }
    }
  } catch (err) {
    if (err.name !== 'AbortError') add('error', String(err.message || err));
  } finally {
    if (out.textContent) messages.push({ role: 'assistant', content: out.textContent });
    out.dataset.done = 'true';
    controller = null;
    send.disabled = false;
    stop.disabled = true;
    input.focus();
  }
};
</script>
</body>
</html>
`;

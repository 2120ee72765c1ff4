// Electron's main process loads the model (never the renderer: it has no Node.js there, and a model belongs
// in one place); the window asks for a completion over IPC and streams the text back.
//   LLAMA_MODEL=/path/to/model.gguf npm start
const { app, BrowserWindow, ipcMain } = require('electron');
const path = require('node:path');
const { loadModel, getBackendInfo } = require('llama-addon');

let model;
let ctx;

async function ready() {
  const file = process.env.LLAMA_MODEL ?? process.argv.find((a) => a.endsWith('.gguf'));
  if (!file) throw new Error('Set LLAMA_MODEL to a .gguf file');
  model = await loadModel(file); // gpu: 'auto' — Metal, CUDA or Vulkan where they load, else the CPU
  ctx = await model.createContext({ contextSize: 2048 });
  console.log('backends', getBackendInfo().backends, 'placement', model.placement);

  ipcMain.on('complete', async (event, prompt) => {
    const session = ctx.createSession();
    try {
      for await (const chunk of session.generate(prompt, { maxTokens: 128 })) event.sender.send('chunk', chunk.text);
      event.sender.send('done');
    } finally {
      session.dispose();
    }
  });

  const win = new BrowserWindow({ width: 720, height: 480, webPreferences: { nodeIntegration: true, contextIsolation: false } });
  await win.loadFile(path.join(__dirname, 'index.html'));
}

app.whenReady().then(ready).catch((e) => {
  console.error(e);
  app.exit(1);
});
app.on('window-all-closed', async () => {
  await model?.dispose();
  app.quit();
});

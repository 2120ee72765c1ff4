// Fails early, with the reason, when the native addon is not built.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { repoRoot } from './models.js';

export default function setup(): void {
  const addon = join(repoRoot, 'build', 'Release', 'llama_addon.node');
  if (!existsSync(addon) && !process.env.LLAMA_ADDON_BINARY) {
    throw new Error(`The native addon is not built (${addon} is missing): run \`npm install\` or \`npm run build\` first`);
  }
}

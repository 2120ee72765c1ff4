// The built-in chat page served at `/`: one HTML document with its script, styles and favicon inline, that
// talks to the server's own OpenAI-compatible endpoints and fetches nothing else. Its sources are in
// web/chat/; scripts/build-page.mjs bundles them (with marked, DOMPurify and highlight.js) into
// ./page/bundle.ts, which `npm run build:page` writes and `prepare` and `build:ts` run before tsc.
export { chatPageHtml as chatPage } from './page/bundle.js';

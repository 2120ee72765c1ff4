// Markdown for the chat page: marked parses, highlight.js colours fenced code in the languages below, and
// DOMPurify cleans the result before it reaches the page. A reply's raw HTML is shown as text (a model that
// writes <div> means the tag, not an element), so the only markup is what marked makes of the Markdown;
// DOMPurify still runs over it (a link to javascript: is markup marked makes). The page's Content-Security-
// Policy (scripts/build-page.mjs) runs no script but its own in any case.
import { Marked } from 'marked';
import DOMPurify from 'dompurify';
import hljs from 'highlight.js/lib/core';
import bash from 'highlight.js/lib/languages/bash';
import cpp from 'highlight.js/lib/languages/cpp';
import diff from 'highlight.js/lib/languages/diff';
import go from 'highlight.js/lib/languages/go';
import java from 'highlight.js/lib/languages/java';
import json from 'highlight.js/lib/languages/json';
import python from 'highlight.js/lib/languages/python';
import rust from 'highlight.js/lib/languages/rust';
import sql from 'highlight.js/lib/languages/sql';
import typescript from 'highlight.js/lib/languages/typescript';
import xml from 'highlight.js/lib/languages/xml';
import yaml from 'highlight.js/lib/languages/yaml';

// A dozen grammars (highlight.js with them is about 60 kB of the page's 170); C is read with C++'s grammar and JavaScript with
// TypeScript's, which cover them.
for (const [name, lang] of Object.entries({ bash, cpp, diff, go, java, json, python, rust, sql, typescript, xml, yaml })) {
  hljs.registerLanguage(name, lang);
}
hljs.registerAliases(['c', 'h'], { languageName: 'cpp' });
hljs.registerAliases(['javascript', 'js', 'jsx', 'mjs', 'cjs', 'node'], { languageName: 'typescript' });

const entities = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
export const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (ch) => entities[ch]);

const marked = new Marked({
  gfm: true,
  renderer: {
    // Block and inline HTML in a reply: shown as written.
    html({ text }) {
      return escapeHtml(text);
    },
    code({ text, lang }) {
      const name = (lang || '').trim().split(/\s/)[0].toLowerCase();
      const known = name && hljs.getLanguage(name) ? name : '';
      const body = known ? hljs.highlight(text, { language: known, ignoreIllegals: true }).value : escapeHtml(text);
      const label = name ? `<span class="lang">${escapeHtml(name)}</span>` : '';
      return `<pre>${label}<code class="hljs${known ? ` language-${known}` : ''}">${body}</code></pre>\n`;
    },
  },
});

// Links open in a new tab, without access to this one.
DOMPurify.addHook('afterSanitizeAttributes', (node) => {
  if (node.tagName === 'A' && node.hasAttribute('href')) {
    node.setAttribute('target', '_blank');
    node.setAttribute('rel', 'noopener noreferrer nofollow');
  }
});

const purifyOptions = {
  FORBID_TAGS: ['style', 'form', 'button', 'textarea', 'select', 'dialog', 'iframe', 'object', 'embed', 'svg', 'math'],
  FORBID_ATTR: ['style', 'id', 'name'],
};

/** Markdown to sanitized HTML. */
export function renderMarkdown(text) {
  return DOMPurify.sanitize(marked.parse(text, { async: false }), purifyOptions);
}

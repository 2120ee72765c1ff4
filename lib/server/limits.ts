// Limits on what a request may contain, checked before anything else reads it.

export { jsonDepth } from '../base/json-depth.js';

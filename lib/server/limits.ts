// Limits on what a request may contain, checked before anything else reads it.

export { jsonDepth, prototypeKeyPath } from '../base/json-depth.js';

// Logging: llama.cpp's and ggml's output, routed through setLogger and setLogLevel.
import { native } from '../native/native.js';
import { invalid } from './validate.js';

/** Log levels, from most to least verbose. `silent` shows nothing. */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error' | 'silent';

/** Receives llama.cpp's and ggml's log lines (one call per line, without the trailing newline). */
export type Logger = (level: Exclude<LogLevel, 'silent'>, message: string) => void;

const levels: readonly LogLevel[] = ['debug', 'info', 'warn', 'error', 'silent'];

/**
 * Sets the least severe level that is shown. The default is `warn`: warnings and errors go to stderr.
 */
export function setLogLevel(level: LogLevel): void {
  const i = levels.indexOf(level);
  if (i < 0) throw invalid('level', `one of ${levels.join(', ')}`, level, setLogLevel);
  native().setLogLevel(i);
}

/**
 * Routes log lines to `logger` instead of stderr; `null` restores stderr. Lines from any thread reach the
 * logger on the JS thread, asynchronously. A logger that throws is ignored, so logging never breaks inference.
 */
export function setLogger(logger: Logger | null): void {
  if (logger !== null && typeof logger !== 'function') throw invalid('logger', 'a function or null', logger, setLogger);
  native().setLogSink(
    logger === null
      ? null
      : (level, message) => {
          try {
            logger(level as Exclude<LogLevel, 'silent'>, message);
          } catch {
            // a failing logger must not take the process down from a native callback
          }
        },
  );
}

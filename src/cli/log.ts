/** The CLI's logger: pino to stderr, silent unless --log-level asks (a silent pino does no work per call). */
import { pino, type Logger } from 'pino';

export const LOG_LEVELS = ['silent', 'fatal', 'error', 'warn', 'info', 'debug', 'trace'] as const;

export function makeLogger(level: string): Logger {
  return pino({ level, base: undefined }, pino.destination(2));
}

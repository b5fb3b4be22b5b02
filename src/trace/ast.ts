import type Long from 'long';

/** One argument as written: its value and where it stands (1-based line and column). */
export interface Arg<V> {
  value: V;
  line: number;
  col: number;
}

/** One parsed, validated command of a trace. */
export interface Command {
  verb: string;
  line: number;
  col: number;
  /** key=value arguments: u64/size values are unsigned Longs, int values numbers, enum values strings. */
  args: Map<string, Arg<Long | number | string>>;
  /** bare words given. */
  words: Set<string>;
}

export interface Trace {
  file: string;
  commands: Command[];
}

/** Invalid input: reported as FILE:LINE:COL: message, exit status 2. */
export class TraceError extends Error {
  constructor(readonly file: string, readonly line: number, readonly col: number, readonly detail: string) {
    super(`${file}:${line}:${col}: ${detail}`);
    this.name = 'TraceError';
  }
}

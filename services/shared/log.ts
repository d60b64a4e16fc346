import { activeTraceIds } from "./tracing.js";

/** Structured JSON logs on stderr, one object a line, so that log collectors need no parsing rules. */
export type Fields = Record<string, unknown>;

export interface Logger {
  info(message: string, fields?: Fields): void;
  warn(message: string, fields?: Fields): void;
  error(message: string, fields?: Fields): void;
  child(fields: Fields): Logger;
}

export function createLogger(service: string, base: Fields = {}, options: { quiet?: boolean } = {}): Logger {
  const write = (level: string, message: string, fields?: Fields) => {
    if (options.quiet) return;
    const line = { time: new Date().toISOString(), level, service, message, ...activeTraceIds(), ...base, ...fields };
    process.stderr.write(JSON.stringify(line, errorsAsText) + "\n");
  };
  return {
    info: (message, fields) => write("info", message, fields),
    warn: (message, fields) => write("warn", message, fields),
    error: (message, fields) => write("error", message, fields),
    child: (fields) => createLogger(service, { ...base, ...fields }, options),
  };
}

function errorsAsText(_key: string, value: unknown): unknown {
  return value instanceof Error ? value.message : value;
}

import { activeTraceIds } from "./tracing.js";

/**
 * Structured JSON logs on stderr, one object a line, so that log collectors need no parsing rules. Each line
 * has its level; lines below the logger's level are not written (STEPRUNNER_LOG_LEVEL, read in each
 * service's main). An Error in the fields is written with its name, message, code, stack and causes.
 */
export type Fields = Record<string, unknown>;

export const LOG_LEVELS = ["debug", "info", "warn", "error", "silent"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export interface Logger {
  debug(message: string, fields?: Fields): void;
  info(message: string, fields?: Fields): void;
  warn(message: string, fields?: Fields): void;
  error(message: string, fields?: Fields): void;
  child(fields: Fields): Logger;
}

export interface LoggerOptions {
  /** The lowest level written; "silent" writes nothing. Absent: info. */
  level?: LogLevel;
  /** Writes nothing (as level "silent"), for tests. */
  quiet?: boolean;
  /** Where lines go; absent: stderr. */
  write?: (line: string) => void;
}

/** A level's name as STEPRUNNER_LOG_LEVEL gives it; throws for anything else. */
export function parseLogLevel(text: string, setting = "STEPRUNNER_LOG_LEVEL"): LogLevel {
  const level = text.trim().toLowerCase();
  if (!(LOG_LEVELS as readonly string[]).includes(level)) throw new Error(`${setting} must be one of ${LOG_LEVELS.join(", ")}, got "${text}"`);
  return level as LogLevel;
}

export function createLogger(service: string, base: Fields = {}, options: LoggerOptions = {}): Logger {
  const lowest = LOG_LEVELS.indexOf(options.quiet ? "silent" : (options.level ?? "info"));
  const out = options.write ?? ((line: string) => process.stderr.write(line));
  const write = (level: Exclude<LogLevel, "silent">, message: string, fields?: Fields) => {
    if (LOG_LEVELS.indexOf(level) < lowest) return;
    const line = { time: new Date().toISOString(), level, service, message, ...activeTraceIds(), ...base, ...fields };
    out(`${JSON.stringify(line, errorsAsObjects)}\n`);
  };
  return {
    debug: (message, fields) => write("debug", message, fields),
    info: (message, fields) => write("info", message, fields),
    warn: (message, fields) => write("warn", message, fields),
    error: (message, fields) => write("error", message, fields),
    child: (fields) => createLogger(service, { ...base, ...fields }, options),
  };
}

/** A logger that writes nothing. */
export const silentLogger: Logger = createLogger("", {}, { level: "silent" });

const MAX_CAUSES = 5;

function errorsAsObjects(_key: string, value: unknown): unknown {
  return value instanceof Error ? errorFields(value, 0) : value;
}

/** An error's name, message, code (errno's or a gRPC code), stack and causes, as JSON can hold them. */
function errorFields(error: Error, depth: number): Fields {
  const fields: Fields = { name: error.name, message: error.message };
  const { code, rawMessage } = error as Error & { code?: unknown; rawMessage?: unknown };
  if (code !== undefined) fields.code = code;
  // A ConnectError's message starts with its code; its raw message is the one it was made with.
  if (typeof rawMessage === "string" && rawMessage !== error.message) fields.rawMessage = rawMessage;
  if (error.stack) fields.stack = error.stack;
  if (error.cause !== undefined && depth < MAX_CAUSES) {
    fields.cause = error.cause instanceof Error ? errorFields(error.cause, depth + 1) : error.cause;
  }
  return fields;
}

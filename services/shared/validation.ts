import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema } from "../../gen/google/rpc/error_details_pb.js";

/** How much of a bad value a message repeats: enough to recognise it, never a whole oversized field. */
const SHOWN_CHARACTERS = 80;

/** A value as an error message shows it: strings quoted (and cut short), numbers as they are. */
export function shown(value: string | number | bigint | boolean): string {
  if (typeof value !== "string") return String(value);
  if (value.length <= SHOWN_CHARACTERS) return JSON.stringify(value);
  return `${JSON.stringify(value.slice(0, SHOWN_CHARACTERS)).slice(0, -1)}…" (${value.length} characters)`;
}

/**
 * The one form of every INVALID_ARGUMENT message: the field's path in proto (snake_case) form, what is
 * allowed, and what was given, e.g. `limits.pids: must be at least 8, got 2`.
 */
export function violationMessage(field: string, rule: string, got?: string | number | bigint | boolean): string {
  return got === undefined ? `${field}: ${rule}` : `${field}: ${rule}, got ${shown(got)}`;
}

/** INVALID_ARGUMENT for one field, with a google.rpc.BadRequest detail naming it for clients that read details. */
export function invalidField(field: string, rule: string, got?: string | number | bigint | boolean): ConnectError {
  return invalidFieldMessage(field, violationMessage(field, rule, got));
}

/** INVALID_ARGUMENT for one field whose message is already in violationMessage's form. */
export function invalidFieldMessage(field: string, message: string): ConnectError {
  return new ConnectError(message, Code.InvalidArgument, undefined, [
    { desc: BadRequestSchema, value: { fieldViolations: [{ field, description: message }] } },
  ]);
}

/** A google.protobuf.Duration in milliseconds, or the rule it breaks (seconds and nanos of one sign, nanos below 1e9). */
export function durationMs(field: string, duration: { seconds: bigint; nanos: number }): number {
  const { seconds, nanos } = duration;
  if (nanos <= -1e9 || nanos >= 1e9 || (seconds > 0n && nanos < 0) || (seconds < 0n && nanos > 0)) {
    throw invalidField(field, "must be a valid duration (nanos below 1e9 in size, of the same sign as seconds)", `${seconds}s ${nanos}ns`);
  }
  return Number(seconds) * 1000 + nanos / 1e6;
}

import { violationMessage } from "../../shared/validation.js";

/**
 * Failures the core reports to callers, by what the caller can do about them. The API adapter maps each kind
 * to its gRPC code, so the core never depends on Connect.
 */
export type ContextErrorKind =
  | "not-found" // unknown repository, revision or context
  | "unavailable" // the repository did not answer; retrying may help
  | "invalid-argument" // malformed or oversized input
  | "failed-precondition" // a repository we refuse, with why
  | "out-of-range"; // an offset past the end of a file

export class ContextError extends Error {
  constructor(
    readonly kind: ContextErrorKind,
    message: string,
    /** The request field an invalid-argument error is about, in proto form (e.g. "properties[0].owner"). */
    readonly field?: string,
  ) {
    super(message);
    this.name = "ContextError";
  }
}

export const notFound = (message: string) => new ContextError("not-found", message);
export const unavailable = (message: string) => new ContextError("unavailable", message);
/** A request field that breaks its rule, said the same way by every service (shared/validation.ts). */
export const invalidField = (field: string, rule: string, got?: string | number) =>
  new ContextError("invalid-argument", violationMessage(field, rule, got), field);
export const failedPrecondition = (message: string) => new ContextError("failed-precondition", message);

import { violationMessage } from "../../shared/validation.js";

/**
 * Failures the image-service's core reports to callers, by what the caller can do about them. The API
 * adapter maps each kind to its gRPC code (api/image-service-adapter.ts), so the core never makes Connect
 * errors. (Errors of the ports' adapters, the BuildKit and context-service clients, pass through as they are.)
 */
export type ImageErrorKind =
  | "invalid-argument" // a malformed request field
  | "not-found" // a reuse-only request whose image was never built (or is gone)
  | "failed-precondition" // the build cannot succeed as asked: the Dockerfile, the base runner, the hand-off
  | "unavailable" // BuildKit, dockerd or the registry did not answer; retrying may help
  | "cancelled" // every caller of the build went away
  | "data-loss" // a context file arrived other than the context-service described it
  | "internal"; // BuildKit or a tool answered something it should not have

export class ImageError extends Error {
  constructor(
    readonly kind: ImageErrorKind,
    message: string,
    /** The request field an invalid-argument error is about, in proto form (e.g. "base_runner"). */
    readonly field?: string,
  ) {
    super(message);
    this.name = "ImageError";
  }
}

/** A request field that breaks its rule, said the same way by every service (shared/validation.ts). */
export const invalidField = (field: string, rule: string, got?: string) => new ImageError("invalid-argument", violationMessage(field, rule, got), field);
export const failedPrecondition = (message: string) => new ImageError("failed-precondition", message);
export const unavailable = (message: string) => new ImageError("unavailable", message);
export const notFound = (message: string) => new ImageError("not-found", message);
export const buildCancelled = () => new ImageError("cancelled", "the build was cancelled");

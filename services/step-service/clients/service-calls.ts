import { Code, ConnectError } from "@connectrpc/connect";
import { RefusedInputError } from "../steps/ports.js";

/** Codes by which a service says the request's content is at fault, not the service. */
const REFUSALS = new Set([Code.InvalidArgument, Code.NotFound, Code.FailedPrecondition, Code.OutOfRange]);

/**
 * Runs calls to another service, turning its refusals of the step's inputs into RefusedInputError, and a call
 * cut off while the step still wanted it (the service was killed or restarted) into UNAVAILABLE that says so.
 */
export async function callService<T>(service: string, signal: AbortSignal, call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (error) {
    if (!(error instanceof ConnectError)) throw error;
    if (REFUSALS.has(error.code)) throw new RefusedInputError(error.rawMessage);
    if (error.code === Code.Canceled && !signal.aborted) {
      throw new ConnectError(`the ${service} went away in the middle of the call (stopped or restarted): ${error.rawMessage}`, Code.Unavailable);
    }
    throw error;
  }
}

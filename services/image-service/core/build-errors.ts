import { Code, ConnectError } from "@connectrpc/connect";

/**
 * BuildKit reports every build failure as UNKNOWN with a message; turn the ones a user can act on into
 * FAILED_PRECONDITION with what to fix. `logTail` is the end of the failing step's output.
 */
export function explainBuildFailure(error: unknown, logTail: string): ConnectError {
  const failure = ConnectError.from(error);
  if (failure.code !== Code.Unknown) return failure;
  const message = failure.rawMessage;
  const parse = /dockerfile parse error line (\d+): (.*)$/m.exec(message);
  if (parse) return new ConnectError(`the Dockerfile has an error on line ${parse[1]}: ${parse[2]}`, Code.FailedPrecondition);
  const llb = /failed to create LLB definition: (.*)$/m.exec(message);
  if (llb) {
    const missing = /(\S+): not found|failed to resolve source metadata for (\S+)/.exec(llb[1]!);
    if (missing) return new ConnectError(`the base image ${missing[1] ?? missing[2]} was not found: ${llb[1]}`, Code.FailedPrecondition);
    return new ConnectError(`the Dockerfile cannot be built: ${llb[1]}`, Code.FailedPrecondition);
  }
  const run = /executor failed running \[(.*)\]: (.*)$/m.exec(message);
  if (run) {
    const tail = logTail.trim() ? `; its last output:\n${logTail.trimEnd()}` : "";
    return new ConnectError(`RUN ${run[1]} failed (${run[2]})${tail}`, Code.FailedPrecondition);
  }
  const outside = /failed to walk \S*\/buildkit-mount\d+\/([^:]*): lstat [^:]*: no such file or directory/.exec(message);
  if (outside) {
    return new ConnectError(
      `a COPY or ADD source is not in the build context ("${outside[1]}" is missing): the build context holds only repo.tar, step_context.json.zip and the Dockerfile, so ../ paths and the host's absolute paths are not there; commit the file to the repository and use it after ADD repo.tar`,
      Code.FailedPrecondition,
    );
  }
  const source = /failed to (?:resolve source metadata|load cache key|compute cache key)[^:]*: (.*)$/m.exec(message);
  if (source) return new ConnectError(`the build cannot start: ${source[1]}`, Code.FailedPrecondition);
  return new ConnectError(`the build failed: ${message}`, Code.FailedPrecondition);
}

/** Failures of the connection to BuildKit, not of the build: worth another try. */
export function isTransient(error: unknown): boolean {
  const code = ConnectError.from(error).code;
  return code === Code.Unavailable;
}

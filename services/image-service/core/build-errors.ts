import { Code, ConnectError } from "@connectrpc/connect";
import { failedPrecondition, type ImageError } from "./errors.js";

/**
 * BuildKit reports every build failure as UNKNOWN with a message; turn the ones a user can act on into
 * FAILED_PRECONDITION with what to fix. `logTail` is the end of the failing step's output. Both wordings are
 * known: BuildKit v0.8's (dockerd 20.10) and v0.24's (a standalone buildkitd).
 */
export function explainBuildFailure(error: unknown, logTail: string): ImageError | ConnectError {
  const failure = ConnectError.from(error);
  // Not a build's failure (BuildKit could not be reached, the call was cancelled): passed on as it is.
  if (failure.code !== Code.Unknown) return failure;
  const message = failure.rawMessage;
  // v0.8: "dockerfile parse error line 3: …"; v0.24: "dockerfile parse error on line 3: …".
  const parse = /dockerfile parse error (?:on )?line (\d+): (.*)$/im.exec(message);
  if (parse) return dockerfileError(Number(parse[1]), parse[2]!);
  const image = unresolvedImage(message);
  if (image) {
    const problem = image.reason.endsWith("not found") ? "was not found" : "cannot be pulled";
    return failedPrecondition(`the base image ${image.name} ${problem}: ${image.reason}`);
  }
  const llb = /failed to create LLB definition: (.*)$/m.exec(message);
  if (llb) return failedPrecondition(`the Dockerfile cannot be built: ${llb[1]}`);
  const run = failedRun(message);
  if (run) {
    const tail = logTail.trim() ? `; its last output:\n${logTail.trimEnd()}` : "";
    return failedPrecondition(`RUN ${run.command} failed (${run.status})${tail}`);
  }
  const entitlement = /granting entitlement (\S+) is not allowed by build daemon configuration/.exec(message);
  if (entitlement) {
    return failedPrecondition(
      `this BuildKit does not grant the ${entitlement[1]} entitlement the build needs: start buildkitd with --allow-insecure-entitlement ${entitlement[1]}`,
    );
  }
  const outside = missingContextPath(message);
  if (outside !== undefined) {
    return failedPrecondition(
      `a COPY or ADD source is not in the build context ("${outside}" is missing): the build context holds only repo.tar, step_context.json.zip and the Dockerfile, so ../ paths and the host's absolute paths are not there; commit the file to the repository and use it after ADD repo.tar`,
    );
  }
  const source = /failed to (?:load cache key|compute cache key)[^:]*: (.*)$/m.exec(message);
  if (source) return failedPrecondition(`the build cannot start: ${source[1]}`);
  // v0.24's Dockerfile frontend names the place of some errors (a heredoc left open, no instruction at all)
  // only in the error's details.
  const daemon = daemonError(failure);
  if (hasDetail(daemon, "errdefs.Frontend+json")) {
    const line = dockerfileLine(daemon);
    return line ? dockerfileError(line, daemon.rawMessage) : failedPrecondition(`the Dockerfile cannot be built: ${daemon.rawMessage}`);
  }
  return failedPrecondition(`the build failed: ${message}`);
}

/** An error's message without Connect's "[code] " prefix. */
export function rawMessage(error: unknown): string {
  return ConnectError.from(error).rawMessage;
}

/** Failures of the connection to BuildKit, not of the build: worth another try. */
export function isTransient(error: unknown): boolean {
  const code = ConnectError.from(error).code;
  return code === Code.Unavailable;
}

function dockerfileError(line: number, problem: string): ImageError {
  return failedPrecondition(`the Dockerfile has an error on line ${line}: ${problem}`);
}

/**
 * An image the build could not resolve, with why. v0.8: "failed to create LLB definition: IMAGE: not found";
 * both: "failed to resolve source metadata for IMAGE: WHY" (v0.24 for a missing tag: WHY is "IMAGE: not found").
 */
function unresolvedImage(message: string): { name: string; reason: string } | undefined {
  const metadata = /failed to resolve source metadata for (\S+?): (.*)$/m.exec(message);
  if (metadata) return { name: metadata[1]!, reason: metadata[2]! };
  const missing = /failed to create LLB definition: ((\S+): not found)/.exec(message);
  if (missing) return { name: missing[2]!, reason: missing[1]! };
  return undefined;
}

/** v0.8: "executor failed running [/bin/sh -c …]: exit code: N"; v0.24: "process \"/bin/sh -c …\" did not complete successfully: exit code: N". */
function failedRun(message: string): { command: string; status: string } | undefined {
  const v08 = /executor failed running \[(.*)\]: (.*)$/m.exec(message);
  if (v08) return { command: v08[1]!, status: v08[2]! };
  const v024 = /process "((?:[^"\\]|\\.)*)" did not complete successfully: (.*)$/m.exec(message);
  if (v024) return { command: unquoteGo(v024[1]!), status: v024[2]! };
  return undefined;
}

/** Undoes Go's %q quoting, in which v0.24 names the failed command. */
function unquoteGo(quoted: string): string {
  const escapes: Record<string, string> = { a: "\x07", b: "\b", f: "\f", n: "\n", r: "\r", t: "\t", v: "\v" };
  return quoted.replace(
    /\\(?:x([0-9a-fA-F]{2})|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|([0-7]{3})|(.))/g,
    (_, hex2, hex4, hex8, octal, char: string | undefined) => {
      const code = hex2 ?? hex4 ?? hex8;
      if (code) return String.fromCodePoint(parseInt(code, 16));
      if (octal) return String.fromCodePoint(parseInt(octal, 8));
      return escapes[char!] ?? char!;
    },
  );
}

/**
 * The path of a COPY or ADD source that is not in the context, without BuildKit's temporary paths.
 * v0.8: "failed to walk /var/lib/docker/tmp/buildkit-mountN/etc: lstat …: no such file or directory";
 * v0.24: "failed to calculate checksum of ref ID::ID: \"/etc/passwd\": not found".
 */
function missingContextPath(message: string): string | undefined {
  const v08 = /failed to walk \S*\/buildkit-mount\d+\/([^:]*): lstat [^:]*: no such file or directory/.exec(message);
  if (v08) return v08[1]!;
  const v024 = /failed to calculate checksum of ref \S+: "\/?([^"]*)": not found/.exec(message);
  return v024?.[1];
}

function hasDetail(failure: ConnectError, type: string): boolean {
  return failure.details.some((detail) => "type" in detail && detail.type === type);
}

/** The first Dockerfile line of v0.24's errdefs.Source detail: {"info": {"filename": …}, "ranges": [{"start": {"line": N}}]}. */
function dockerfileLine(failure: ConnectError): number | undefined {
  for (const detail of failure.details) {
    if (!("type" in detail) || detail.type !== "errdefs.Source+json") continue;
    try {
      const source = JSON.parse(Buffer.from(detail.value).toString("utf8")) as { ranges?: Array<{ start?: { line?: number } }> };
      const line = source.ranges?.[0]?.start?.line;
      if (line) return line;
    } catch {
      // A detail that is not the JSON we know only loses the line number.
    }
  }
  return undefined;
}

/** BuildKit's own error, with its details and without the daemon's address: our client keeps it as the cause. */
function daemonError(failure: ConnectError): ConnectError {
  return failure.cause instanceof ConnectError ? failure.cause : failure;
}

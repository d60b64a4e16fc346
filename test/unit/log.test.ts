import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { createLogger, parseLogLevel } from "../../services/shared/log.js";

function capture(level?: Parameters<typeof parseLogLevel>[0]) {
  const lines: Record<string, unknown>[] = [];
  const logger = createLogger(
    "test-service",
    { instance: "a" },
    { level: level ? parseLogLevel(level) : undefined, write: (line) => lines.push(JSON.parse(line)) },
  );
  return { logger, lines };
}

describe("the JSON logger", () => {
  it("writes info and above by default, and debug only when asked", () => {
    const quiet = capture();
    quiet.logger.debug("hidden");
    quiet.logger.info("shown", { n: 1 });
    assert.deepEqual(
      quiet.lines.map((line) => [line.level, line.message, line.service, line.instance, line.n]),
      [["info", "shown", "test-service", "a", 1]],
    );
    const verbose = capture("DEBUG");
    verbose.logger.child({ step: "s1" }).debug("details");
    assert.equal(verbose.lines[0]!.level, "debug");
    assert.equal(verbose.lines[0]!.step, "s1");
  });

  it("drops what is below the level, and writes nothing when silent", () => {
    const errorsOnly = capture("error");
    errorsOnly.logger.info("no");
    errorsOnly.logger.warn("no");
    errorsOnly.logger.error("yes");
    assert.deepEqual(
      errorsOnly.lines.map((line) => line.message),
      ["yes"],
    );
    const silent = capture("silent");
    silent.logger.error("no");
    assert.equal(silent.lines.length, 0);
  });

  it("keeps an error's name, code, stack and cause", () => {
    const { logger, lines } = capture();
    const cause = Object.assign(new Error("ENOSPC: no space left on device"), { code: "ENOSPC" });
    const error = new ConnectError("registry push failed", Code.Unavailable, undefined, undefined, cause);
    logger.error("push failed", { error });
    const logged = lines[0]!.error as Record<string, unknown>;
    assert.equal(logged.name, "ConnectError");
    assert.equal(logged.code, Code.Unavailable);
    assert.equal(logged.rawMessage, "registry push failed");
    assert.match(String(logged.stack), /^ConnectError: \[unavailable\] registry push failed\n\s+at /);
    assert.deepEqual(
      { ...(logged.cause as object), stack: undefined },
      { name: "Error", message: "ENOSPC: no space left on device", code: "ENOSPC", stack: undefined },
    );
  });

  it("refuses an unknown level", () => {
    assert.throws(() => parseLogLevel("verbose"), /STEPRUNNER_LOG_LEVEL must be one of debug, info, warn, error, silent, got "verbose"/);
  });
});

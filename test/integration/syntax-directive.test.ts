import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { ConnectError } from "@connectrpc/connect";
import { BuildKitClient } from "../../services/image-service/buildkit/client.js";
import { buildDockerfile } from "../../services/image-service/buildkit/dockerfile-build.js";
import { explainBuildFailure } from "../../services/image-service/core/build-errors.js";
import { isNotUnderstood } from "../../services/image-service/core/syntax-directive.js";
import { StandaloneBuildKitd, buildkitdUnavailable } from "../support/standalone-buildkitd.js";
import { needsDockerd, stack } from "../support/stack.js";

/**
 * A "# syntax=" line naming an image that cannot be pulled here, built with the directive skipped (the
 * frontend attribute cmdline), on both BuildKits: the builtin frontend builds what it understands and names
 * the flag it does not. Nothing is ever pulled: every build skips the directive.
 */
const SYNTAX = "# syntax=docker/dockerfile:1.4\n";
const STAGE = "FROM scratch AS files\nCOPY a.txt /a.txt\nFROM scratch\n";

async function build(address: string, work: string, dockerfile: string): Promise<ConnectError | undefined> {
  await writeFile(join(work, "dockerfile", "Dockerfile"), dockerfile);
  const client = new BuildKitClient(address);
  try {
    await buildDockerfile(
      client,
      {
        context: join(work, "context"),
        dockerfileDir: join(work, "dockerfile"),
        buildArgs: {},
        network: "none",
        noCache: false,
        ignoreSyntaxDirective: true,
        // dockerd's BuildKit exports to dockerd's store; a standalone one keeps the image in its own.
        exporter: address.startsWith("docker-unix://")
          ? { type: "moby", attrs: { name: "steprunner-test/syntax:latest" } }
          : { type: "image", attrs: { name: "steprunner-test/syntax:latest" } },
        sessionName: "syntax directive test",
        sharedKey: `syntax-directive-test-${address}`,
      },
      () => {},
      AbortSignal.timeout(120_000),
    );
    return undefined;
  } catch (error) {
    return ConnectError.from(explainBuildFailure(error, ""));
  } finally {
    client.close();
  }
}

describe("a # syntax= line skipped: the builtin Dockerfile frontend of each BuildKit", () => {
  let work: string;
  let buildkitd: StandaloneBuildKitd | undefined;
  before(async () => {
    work = await mkdtemp(join(tmpdir(), "steprunner-syntax-test-"));
    await mkdir(join(work, "context"));
    await mkdir(join(work, "dockerfile"));
    await writeFile(join(work, "context", "a.txt"), "a\n");
    if (!buildkitdUnavailable) buildkitd = await StandaloneBuildKitd.start({ allowNetworkHost: false });
  });
  after(async () => {
    await buildkitd?.stop();
    await rm(work, { recursive: true, force: true });
  });

  it(
    "BuildKit v0.8 (dockerd): builds a file it understands, and names COPY --link and --exclude as unknown flags",
    needsDockerd("its BuildKit v0.8"),
    async () => {
      assert.equal(await build(stack.buildkitAddr, work, `${SYNTAX}${STAGE}COPY --chown=10001:10001 --from=files / /x/\n`), undefined);
      for (const flag of ["--link", "--exclude=.git"]) {
        const failure = await build(stack.buildkitAddr, work, `${SYNTAX}${STAGE}COPY ${flag} --from=files / /x/\n`);
        assert.ok(failure, `${flag} is refused`);
        assert.match(failure.rawMessage, new RegExp(`line 5: Unknown flag: ${flag.slice(2).split("=")[0]}`, "i"));
        assert.ok(isNotUnderstood(failure.rawMessage));
      }
    },
  );

  it("BuildKit v0.24 (standalone): builds COPY --link, and names COPY --exclude as an unknown flag", { skip: buildkitdUnavailable }, async () => {
    assert.equal(await build(buildkitd!.address, work, `${SYNTAX}${STAGE}COPY --link --chown=10001:10001 --from=files / /x/\n`), undefined);
    const failure = await build(buildkitd!.address, work, `${SYNTAX}${STAGE}COPY --link --from=files --exclude=.git / /x/\n`);
    assert.ok(failure);
    assert.match(failure.rawMessage, /line 5: unknown flag: --exclude/i);
    assert.ok(isNotUnderstood(failure.rawMessage));
  });
});

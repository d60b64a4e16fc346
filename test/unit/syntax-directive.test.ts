import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import type { DockerfileBuild } from "../../services/image-service/buildkit/dockerfile-build.js";
import { ImageBuilder } from "../../services/image-service/core/image-builder.js";
import type { BuildEvent } from "../../services/image-service/core/model.js";
import { ReuseRecords } from "../../services/image-service/core/reuse-records.js";
import { findSyntaxDirective, isNotUnderstood, registryHostOf, type SyntaxPolicy } from "../../services/image-service/core/syntax-directive.js";
import { RegistryError } from "../../services/shared/registry/registry-client.js";
import { toConnectError } from "../../services/image-service/api/image-service-adapter.js";
import { fakeContext, fakeImageStore, fakeRegistry, fakeSettings } from "../support/fake-image-builder.js";

describe("the # syntax= directive", () => {
  it("is read only from the parser directives at the top of the file", () => {
    assert.deepEqual(findSyntaxDirective("# syntax=docker/dockerfile:1.4\nFROM x\n"), {
      line: 1,
      text: "# syntax=docker/dockerfile:1.4",
      image: "docker/dockerfile:1.4",
    });
    assert.deepEqual(findSyntaxDirective("#escape=`\n#  SYNTAX = 127.0.0.1:5000/df:1  \nFROM x\n")?.image, "127.0.0.1:5000/df:1");
    assert.equal(findSyntaxDirective("FROM x\n# syntax=docker/dockerfile:1.4\n"), undefined, "after an instruction it is a comment");
    assert.equal(findSyntaxDirective("# a comment\n# syntax=docker/dockerfile:1.4\n"), undefined, "after a comment it is a comment");
    assert.equal(findSyntaxDirective("\n# syntax=docker/dockerfile:1.4\n"), undefined, "after a blank line it is a comment");
    assert.equal(findSyntaxDirective("FROM x\n"), undefined);
  });

  it("names a registry host as Docker does: Docker Hub unless the first component looks like a host", () => {
    assert.equal(registryHostOf("docker/dockerfile:1.4"), "docker.io");
    assert.equal(registryHostOf("dockerfile"), "docker.io");
    assert.equal(registryHostOf("127.0.0.1:5000/df:1"), "127.0.0.1:5000");
    assert.equal(registryHostOf("localhost/df"), "localhost");
  });

  it("tells a file the frontend does not understand from a build that failed for another reason", () => {
    assert.ok(isNotUnderstood("the Dockerfile has an error on line 7: Unknown flag: link"));
    assert.ok(isNotUnderstood("dockerfile parse error line 3: unknown instruction: EOF"));
    assert.equal(isNotUnderstood("RUN make failed (exit code: 2)"), false);
  });
});

describe("a build of a Dockerfile with a # syntax= line", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "steprunner-syntax-"));
  });
  after(() => rm(dir, { recursive: true, force: true }));

  async function build(dockerfile: string, options: { policy?: SyntaxPolicy; failure?: ConnectError; inRegistry?: boolean } = {}) {
    const dockerfileDir = join(dir, String(Math.random()));
    await mkdir(dockerfileDir);
    await writeFile(join(dockerfileDir, "Dockerfile"), dockerfile);
    const context = fakeContext({ defaultDockerfile: false, dockerfileDir });
    const solves: DockerfileBuild[] = [];
    const looked: string[] = [];
    const images = new ImageBuilder({
      contexts: { describe: async () => context, materialize: async () => context },
      buildkit: {
        build: async (solve) => {
          solves.push(solve);
          if (options.failure) throw options.failure;
          return { "containerimage.digest": `sha256:${"5".repeat(64)}` };
        },
      },
      images: fakeImageStore(),
      registry: fakeRegistry({
        manifest: async (repository, reference) => {
          looked.push(`${repository}:${reference}`);
          if (repository === "runner" || options.inRegistry)
            return { digest: `sha256:${"6".repeat(64)}`, manifest: { schemaVersion: 2, config: { mediaType: "", digest: "", size: 0 }, layers: [] } };
          throw new RegistryError("not found", 404);
        },
      }),
      records: new ReuseRecords(join(dir, String(Math.random()))),
      settings: fakeSettings(options.policy ? { syntaxPolicy: options.policy } : {}),
    });
    const events: BuildEvent[] = [];
    const outcome = await images
      .build({ contextId: context.contextId, baseRunner: "", network: "none", buildWithoutCache: true, handoff: undefined }, (event) => events.push(event))
      .then(
        () => undefined,
        (error: unknown) => ConnectError.from(toConnectError(error)),
      );
    return { solves, events, failure: outcome, looked };
  }

  const warnings = (events: BuildEvent[]) => events.flatMap((event) => (event.kind === "warning" ? [event.message] : []));

  it("ignores a frontend image that cannot be pulled here, with a warning naming the line, when the builtin frontend builds the file", async () => {
    const { solves, events, failure, looked } = await build("# syntax=docker/dockerfile:1.4\nARG OPSCHAIN_BASE_RUNNER\nFROM ${OPSCHAIN_BASE_RUNNER}\n");
    assert.equal(failure, undefined);
    assert.equal(solves[0]?.ignoreSyntaxDirective, true);
    assert.deepEqual(looked, ["runner:1"], "Docker Hub is never asked");
    assert.match(
      warnings(events)[0]!,
      /^the Dockerfile's line 1 "# syntax=docker\/dockerfile:1\.4" names the frontend image docker\/dockerfile:1\.4, which is not in this service's registry \(registry\.test:5000\) and cannot be pulled from docker\.io here .*; the line is ignored and BuildKit's builtin Dockerfile frontend builds the file$/,
    );
  });

  it("refuses the file, naming the line, when the builtin frontend does not understand it", async () => {
    const { failure } = await build("# syntax=docker/dockerfile:1.4\nFROM x\nCOPY --link a b\n", {
      failure: new ConnectError("failed to solve: dockerfile parse error line 3: Unknown flag: link", Code.Unknown),
    });
    assert.ok(failure);
    assert.equal(failure.code, Code.FailedPrecondition);
    assert.match(
      failure.rawMessage,
      /^the Dockerfile's line 1 "# syntax=docker\/dockerfile:1\.4" names the frontend image docker\/dockerfile:1\.4, which .*, and BuildKit's builtin Dockerfile frontend does not understand the file \(the Dockerfile has an error on line 3: Unknown flag: link\); use only what the builtin frontend supports \(BuildKit v0\.8 in dockerd lacks COPY --link/,
    );
  });

  it("keeps other failures as they are", async () => {
    const { failure } = await build("# syntax=docker/dockerfile:1.4\nFROM x\nRUN false\n", {
      failure: new ConnectError("failed to solve: executor failed running [/bin/sh -c false]: exit code: 1", Code.Unknown),
    });
    assert.ok(failure);
    assert.doesNotMatch(failure.rawMessage, /syntax/);
  });

  it("uses a frontend image that is in the service's registry, and follows STEPRUNNER_DOCKERFILE_SYNTAX", async () => {
    const local = await build("# syntax=registry.test:5000/dockerfile:1.4\nFROM x\n", { inRegistry: true });
    assert.equal(local.solves[0]?.ignoreSyntaxDirective, undefined);
    assert.deepEqual(warnings(local.events), []);
    const missing = await build("# syntax=registry.test:5000/dockerfile:1.4\nFROM x\n");
    assert.match(warnings(missing.events)[0]!, /which is not in the registry registry\.test:5000/);
    const pulled = await build("# syntax=docker/dockerfile:1.4\nFROM x\n", { policy: "pull" });
    assert.equal(pulled.solves[0]?.ignoreSyntaxDirective, undefined);
    const builtin = await build("# syntax=registry.test:5000/dockerfile:1.4\nFROM x\n", { policy: "builtin", inRegistry: true });
    assert.equal(builtin.solves[0]?.ignoreSyntaxDirective, true);
    const none = await build("FROM x\n");
    assert.equal(none.solves[0]?.ignoreSyntaxDirective, undefined);
  });
});

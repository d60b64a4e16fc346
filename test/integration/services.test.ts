import assert from "node:assert/strict";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { createClient } from "@connectrpc/connect";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/grpc/health/v1/health_pb.js";
import { ContextService } from "../../gen/steprunner/context/v1/context_service_pb.js";
import { ImageService } from "../../gen/steprunner/image/v1/image_service_pb.js";
import { formatBytes } from "../../services/shared/build-progress.js";
import { serviceTransport } from "../../services/shared/client/transport.js";
import { CLI, ROOT, run, stack } from "../support/stack.js";
import { clientSecurityFromSettings } from "../../services/shared/config/common.js";

const services = [
  { name: "context-service", address: stack.contextAddr, service: "steprunner.context.v1.ContextService" },
  { name: "image-service", address: stack.imageAddr, service: "steprunner.image.v1.ImageService" },
  { name: "step-service", address: stack.stepAddr, service: "steprunner.step.v1.StepService" },
];
const BUF = join(ROOT, "node_modules/.bin/buf");
/** What the stack's scripts keep BuildKit's cache to (deploy/local/dockerd.sh, buildkitd.sh). */
const CACHE_KEEP_BYTES = BigInt(
  (stack.buildkit === "dockerd" ? process.env.STEPRUNNER_DOCKERD_BUILD_CACHE_KEEP_BYTES : process.env.STEPRUNNER_BUILDKITD_KEEP_BYTES) ?? 10_000_000_000,
);

describe("the running services", () => {
  const transports = services.map((service) => serviceTransport(service.address, clientSecurityFromSettings()));
  after(() => transports.forEach((transport) => transport.close()));

  services.forEach((service, index) => {
    it(`${service.name} answers the gRPC health check for itself and its service`, async () => {
      const health = createClient(Health, transports[index]!.transport);
      assert.equal((await health.check({ service: "" }, { timeoutMs: 10_000 })).status, ServingStatus.SERVING);
      assert.equal((await health.check({ service: service.service }, { timeoutMs: 10_000 })).status, ServingStatus.SERVING);
    });

    it(`${service.name} is callable through reflection by buf curl, a client that is not ours`, async () => {
      const listed = await run(BUF, ["curl", "--http2-prior-knowledge", "--protocol", "grpc", "--list-services", `http://${service.address}`]);
      assert.equal(listed.code, 0, listed.stderr);
      assert.deepEqual(listed.stdout.trim().split("\n").sort(), ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", service.service]);
      const checked = await run(BUF, ["curl", "--http2-prior-knowledge", "--protocol", "grpc", `http://${service.address}/grpc.health.v1.Health/Check`]);
      assert.equal(checked.code, 0, checked.stderr);
      assert.equal(JSON.parse(checked.stdout).status, "SERVING");
    });
  });

  it("steprunner status shows every service serving, BuildKit's workers, the registry and runc", async () => {
    const result = await run("node", [CLI, "status"], {
      env: { STEPRUNNER_CONTEXT_ADDR: stack.contextAddr, STEPRUNNER_IMAGE_ADDR: stack.imageAddr, STEPRUNNER_STEP_ADDR: stack.stepAddr },
    });
    assert.equal(result.code, 0, result.stdout + result.stderr);
    for (const service of services) assert.match(result.stdout, new RegExp(`^${service.name} +\\S+ +SERVING$`, "m"));
    assert.match(result.stdout, stack.buildkit === "dockerd" ? /^ +worker +moby: linux\/amd64/m : /^ +worker +[a-z0-9]+: linux\/amd64/m);
    assert.match(result.stdout, /^registry +\S+ +registry\/2\.0$/m);
    assert.match(result.stdout, /^runc +runc version \d+\.\d+\.\d+/m);
    assert.match(result.stdout, /^steps +\d+ running, \d+ queued, at most [1-9]\d* at once$/m);
    // The stack turns on the collection of BuildKit's cache (dockerd leaves it off unless told), whichever BuildKit.
    assert.match(result.stdout, new RegExp(`^ +cache gc +\\d+ rules, the cache kept to about ${formatBytes(CACHE_KEEP_BYTES)}$`, "m"));

    const json = await run("node", [
      CLI,
      "status",
      "--json",
      "--image-addr",
      stack.imageAddr,
      "--step-addr",
      stack.stepAddr,
      "--context-addr",
      stack.contextAddr,
    ]);
    assert.equal(json.code, 0, json.stderr);
    const status = JSON.parse(json.stdout);
    assert.equal(status.ok, true);
    assert.match(status.builder.workers[0].id, stack.buildkit === "dockerd" ? /^moby$/ : /^[a-z0-9]+$/);
  });

  it("GetBuilderInfo reports the garbage collection of BuildKit's cache as the stack configured it", async () => {
    const info = await createClient(ImageService, transports[1]!.transport).getBuilderInfo({}, { timeoutMs: 15_000 });
    assert.equal(info.buildkits.length, 1);
    const [worker] = info.buildkits[0]!.workers;
    // Its last rule, over every record, brings the whole cache down to the configured size.
    const collectsAll = worker?.cacheCollection.find((rule) => rule.all);
    assert.ok(
      collectsAll,
      `a rule over every record: ${JSON.stringify(worker?.cacheCollection, (_, value) => (typeof value === "bigint" ? `${value}` : value))}`,
    );
    assert.equal(collectsAll.reservedBytes, CACHE_KEEP_BYTES);
  });

  it("steprunner status fails, naming the service, when one does not answer", async () => {
    const result = await run("node", [CLI, "status", "--step-addr", "127.0.0.1:1"]);
    assert.equal(result.code, 1);
    assert.match(result.stdout, /^step-service +127\.0\.0\.1:1 +unreachable/m);
  });

  it("every CLI command has --help, and a wrong one says so", async () => {
    const help = await run("node", [CLI, "--help"]);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /status/);
    const statusHelp = await run("node", [CLI, "status", "--help"]);
    assert.equal(statusHelp.code, 0);
    assert.match(statusHelp.stdout, /--json/);
    const unknown = await run("node", [CLI, "no-such-command"]);
    assert.equal(unknown.code, 2);
    assert.match(unknown.stderr, /unknown command "no-such-command"/);
    const badOption = await run("node", [CLI, "status", "--no-such-option"]);
    assert.equal(badOption.code, 2);
  });

  it("GET /downloads/Dockerfile serves the default Dockerfile with an ETag, the same as the RPC", async () => {
    const response = await fetch(`http://${stack.contextAddr}/downloads/Dockerfile`);
    assert.equal(response.status, 200);
    const text = await response.text();
    assert.match(text, /^FROM \$\{OPSCHAIN_BASE_RUNNER\}$/m);
    assert.match(text, /^ARG GIT_SHA$/m);
    const etag = response.headers.get("etag");
    const rpc = await createClient(ContextService, transports[0]!.transport).getDefaultDockerfile({});
    assert.equal(rpc.dockerfile, text);
    assert.equal(etag, `"${rpc.digest}"`);
    const again = await fetch(`http://${stack.contextAddr}/downloads/Dockerfile`, { headers: { "if-none-match": etag! } });
    assert.equal(again.status, 304);
  });
});

import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { createClient } from "@connectrpc/connect";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/grpc/health/v1/health_pb.js";
import { ImageService } from "../../gen/steprunner/image/v1/image_service_pb.js";
import { LogStream } from "../../gen/steprunner/image/v1/image_service_pb.js";
import { type Step, StepService, StepState } from "../../gen/steprunner/step/v1/step_service_pb.js";
import { serviceTransport } from "../../services/shared/client/transport.js";
import { buildServiceImages } from "../../deploy/images/build-images.js";
import { needsDockerd, ROOT, run, stack } from "../support/stack.js";

// testcontainers talks to our dockerd, and must not start its Ryuk helper: nothing is pulled here.
process.env.DOCKER_HOST = `unix://${stack.runDir}/docker.sock`;
process.env.TESTCONTAINERS_RYUK_DISABLED = "true";
// Our daemon has no bridge network, which testcontainers would inspect to find the host.
process.env.TESTCONTAINERS_HOST_OVERRIDE = "127.0.0.1";
const { GenericContainer, Wait } = await import("testcontainers");
type Started = Awaited<ReturnType<InstanceType<typeof GenericContainer>["start"]>>;

const PORTS = { context: 7811, image: 7812, step: 7813 };

describe(
  "the service images, run as containers the way a deployment runs them (testcontainers)",
  needsDockerd("testcontainers runs the service images in it"),
  () => {
    let work: string;
    let repository: string;
    const containers: Started[] = [];

    before(async () => {
      await mkdir(join(stack.stateDir, "tmp"), { recursive: true });
      work = await mkdtemp(join(stack.stateDir, "tmp", "containers-test-"));
      repository = join(work, "sample");
      const made = await run(join(ROOT, "deploy/sample/make-sample-repo.sh"), [repository]);
      assert.equal(made.code, 0, made.stderr);
      const images = await buildServiceImages(() => {});
      assert.deepEqual(Object.keys(images).sort(), ["context-service", "image-service", "step-service"]);
      const environment = {
        STEPRUNNER_STATE_DIR: "/var/lib/steprunner",
        STEPRUNNER_CONTEXT_ADDR: `127.0.0.1:${PORTS.context}`,
        STEPRUNNER_IMAGE_ADDR: `127.0.0.1:${PORTS.image}`,
        STEPRUNNER_STEP_ADDR: `127.0.0.1:${PORTS.step}`,
        STEPRUNNER_REGISTRY_ADDR: stack.registry,
        STEPRUNNER_BUILDKIT_ADDR: `docker-unix://${stack.runDir}/docker.sock`,
        // Across nodes the step-service cannot read dockerd's layer store: images travel through the registry.
        STEPRUNNER_IMAGE_HANDOFF: "registry",
      };
      for (const service of ["context-service", "image-service", "step-service"] as const) {
        const mounts = [
          { source: join(work, service), target: "/var/lib/steprunner", mode: "rw" as const },
          { source: stack.runDir, target: stack.runDir, mode: "rw" as const },
          // The repository the step names, where a deployment would mount its git server's checkouts.
          { source: repository, target: repository, mode: "ro" as const },
        ];
        let container = new GenericContainer(`steprunner/${service}:0.1.0`)
          .withNetworkMode("host")
          .withEnvironment(environment)
          .withWaitStrategy(Wait.forLogMessage(/"message":"listening"/))
          .withStartupTimeout(60_000);
        if (service === "step-service") {
          // What a privileged container has, less CAP_SYS_RESOURCE, which this sandbox's bounding set lacks
          // (--privileged asks for every capability and runc then fails): runc and overlayfs inside.
          container = container
            .withAddedCapabilities("ALL")
            .withDroppedCapabilities("SYS_RESOURCE")
            .withSecurityOpt("seccomp=unconfined", "apparmor=unconfined");
          mounts.push({ source: "/sys/fs/cgroup", target: "/sys/fs/cgroup", mode: "rw" });
        }
        // One call: each withBindMounts replaces the mounts given before.
        container = container.withBindMounts(mounts);
        await mkdir(join(work, service), { recursive: true });
        containers.push(await container.start());
      }
    });

    after(async () => {
      for (const container of containers) await container.stop({ timeout: 10_000 }).catch(() => {});
      // Also those that failed to start: testcontainers labels every container it creates.
      const docker = ["--host", `unix://${stack.runDir}/docker.sock`];
      const left = await run("/usr/bin/docker", [...docker, "ps", "-aq", "--filter", "label=org.testcontainers=true"]);
      const ids = left.stdout.split("\n").filter(Boolean);
      if (ids.length) await run("/usr/bin/docker", [...docker, "rm", "-f", ...ids]);
      await rm(work, { recursive: true, force: true });
    });

    it("each answers its health check on the host's loopback", async () => {
      for (const port of Object.values(PORTS)) {
        const client = serviceTransport(`127.0.0.1:${port}`, {});
        try {
          assert.equal((await createClient(Health, client.transport).check({ service: "" }, { timeoutMs: 10_000 })).status, ServingStatus.SERVING);
        } finally {
          client.close();
        }
      }
    });

    it("reaches BuildKit, the registry and runc from inside the containers", async () => {
      const image = serviceTransport(`127.0.0.1:${PORTS.image}`, {});
      const step = serviceTransport(`127.0.0.1:${PORTS.step}`, {});
      try {
        const info = await createClient(ImageService, image.transport).getBuilderInfo({}, { timeoutMs: 15_000 });
        assert.equal(info.workers[0]?.id, "moby");
        assert.equal(info.registryApiVersion, "registry/2.0");
        const runtime = await createClient(StepService, step.transport).getRuntimeInfo({}, { timeoutMs: 15_000 });
        assert.match(runtime.runcVersion, /^runc version/);
      } finally {
        image.close();
        step.close();
      }
    });

    it("runs a real step of the sample repository through the three containers", async () => {
      const step = serviceTransport(`127.0.0.1:${PORTS.step}`, {});
      try {
        const stdout: string[] = [];
        let finished: Step | undefined;
        const request = {
          repositoryUrl: repository,
          gitRev: "main",
          action: "hello",
          properties: [{ owner: "environment", properties: { region: "containers" } }],
          contextValues: { change: { id: "change-containers", environmentCode: "containers" } },
        };
        for await (const response of createClient(StepService, step.transport).runStep(request, { timeoutMs: 300_000 })) {
          if (response.event.case === "logLine" && response.event.value.stream === LogStream.STDOUT) stdout.push(response.event.value.text);
          if (response.event.case === "finished") finished = response.event.value.step;
        }
        assert.ok(finished, "the stream ended with the finished event");
        assert.equal(finished.state, StepState.SUCCESS, finished.reason);
        assert.match(stdout.join("\n"), /^hello from containers$/m);
        assert.equal(finished.result?.properties?.last_greeting, "hello");
      } finally {
        step.close();
      }
    });
  },
);

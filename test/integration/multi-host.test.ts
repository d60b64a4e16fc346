// The multi-host topology, simulated on one machine: two standalone buildkitd (the StatefulSet's two pods) and
// two step-services (the DaemonSet on two nodes: separate state, runc roots and ports) share one registry and one
// context- and image-service. 20 steps of several repositories run over them; one buildkitd is SIGKILLed while a
// RUN of ours runs in it, and its builds finish on the other. The image-service's cache calls then reach every daemon.
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { openSync, closeSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { ImageService } from "../../gen/steprunner/image/v1/image_service_pb.js";
import { type Step, StepService, StepState } from "../../gen/steprunner/step/v1/step_service_pb.js";
import { BuildKitClient } from "../../services/image-service/buildkit/client.js";
import { type BuildKitShard, ShardedBuilder } from "../../services/image-service/buildkit/sharded-builder.js";
import { isTransient } from "../../services/image-service/core/build-errors.js";
import { serviceTransport } from "../../services/shared/client/transport.js";
import type { StepServiceConfig } from "../../services/step-service/service.js";
import { commitFiles, gitIn } from "../support/git-fixture.js";
import { ROOT, samePassOnEither, stack } from "../support/stack.js";
import { StandaloneBuildKitd, buildkitdUnavailable, mountPoints } from "../support/standalone-buildkitd.js";
import { leftovers } from "../support/step-service.js";
import { waitUntilServing } from "../support/rpc.js";

const TOKEN = randomBytes(6).toString("hex");
/** Every RUN of ours names its lineage in its command line: "multi-host-TOKEN-rN". */
const MARKER = `multi-host-${TOKEN}-`;
const RUN_SECONDS = 5;
const STEPS = 20;
/** Custom-Dockerfile lineages per BuildKit shard (by the image-service's rendezvous hashing), and default-Dockerfile repositories. */
const CUSTOM_PER_SHARD = 3;
const DEFAULT_REPOSITORIES = 2;

const ACTIONS = `task(:hello) { puts "hello from #{ENV.fetch('HOSTNAME', 'a step')}" }\n`;

/** A custom Dockerfile whose RUN takes a few seconds and names its lineage (the comment makes it differ per repository). */
const customDockerfile = (name: string) => `ARG OPSCHAIN_BASE_RUNNER
FROM scratch AS repository
ADD repo.tar /
FROM \${OPSCHAIN_BASE_RUNNER}
RUN echo ${MARKER}${name} && sleep ${RUN_SECONDS}
COPY --from=repository --chown=10001:10001 / /opt/opschain/
`;

const SERVICES = ["context-service", "image-service", "step-service-a", "step-service-b"] as const;
type ServiceName = (typeof SERVICES)[number];

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** The image-service's key for a build's lineage (its cache scope): the repository's mirror name and the Dockerfile's digest, 16 hex digits each. */
function sharedKey(repositoryUrl: string, dockerfile: string): string {
  const sha256 = (text: string) => createHash("sha256").update(text).digest("hex");
  return `steprunner-${sha256(repositoryUrl).slice(0, 16)}-${sha256(dockerfile).slice(0, 16)}`;
}

/** Where a RUN of ours is seen running: which daemon's runc started it (an ancestor's command line names the daemon's root). */
interface Sighting {
  lineage: string;
  daemon: number;
  at: number;
}

describe("the multi-host topology: two buildkitd, two step-services, one registry, one context- and image-service", {
  ...samePassOnEither("it starts buildkitd daemons and services of its own", buildkitdUnavailable),
  timeout: 300_000,
}, () => {
  let root: string;
  const daemons: StandaloneBuildKitd[] = [];
  const children = new Map<ServiceName, ChildProcess>();
  const addresses = {} as Record<ServiceName, string>;
  const stepStates = { "step-service-a": "", "step-service-b": "" };
  const repositories: Array<{ url: string; lineage: string; shard?: number }> = [];
  const transports: Array<ReturnType<typeof serviceTransport>> = [];
  /** The daemon the first test SIGKILLs. */
  let killedDaemon: number | undefined;

  before(async () => {
    await mkdir(join(stack.stateDir, "tmp"), { recursive: true });
    root = await mkdtemp(join(stack.stateDir, "tmp", "multi-host-test-"));
    await mkdir(join(root, "logs"));
    daemons.push(...(await Promise.all([StandaloneBuildKitd.start({ allowNetworkHost: true }), StandaloneBuildKitd.start({ allowNetworkHost: true })])));

    // Repositories until each shard has its custom-Dockerfile lineages, predicted the image-service's way.
    const predictor = new ShardedBuilder(
      daemons.map((daemon): BuildKitShard => ({ address: daemon.address, build: async () => ({}) })),
      { isTransient },
    );
    const perShard = [0, 0];
    for (let index = 0; perShard.some((count) => count < CUSTOM_PER_SHARD); index++) {
      assert.ok(index < 100, "rendezvous hashing put 100 repositories on one shard");
      const lineage = `r${index}`;
      const url = join(root, "repos", lineage);
      const dockerfile = customDockerfile(lineage);
      const shard = daemons.findIndex((daemon) => daemon.address === predictor.shardFor(sharedKey(url, dockerfile)).address);
      if (perShard[shard]! >= CUSTOM_PER_SHARD) continue;
      perShard[shard]!++;
      await mkdir(url, { recursive: true });
      await gitIn(url, ["init", "-q", "-b", "main"]);
      await commitFiles(
        url,
        { "actions.rb": `# ${TOKEN} ${lineage}\n${ACTIONS}`, ".mintpress/Dockerfile": dockerfile },
        "custom Dockerfile",
        "2024-01-01T00:00:00Z",
      );
      repositories.push({ url, lineage, shard });
    }
    for (let index = 0; index < DEFAULT_REPOSITORIES; index++) {
      const lineage = `default${index}`;
      const url = join(root, "repos", lineage);
      await mkdir(url, { recursive: true });
      await gitIn(url, ["init", "-q", "-b", "main"]);
      await commitFiles(url, { "actions.rb": `# ${TOKEN} ${lineage}\n${ACTIONS}` }, "default Dockerfile", "2024-01-01T00:00:00Z");
      repositories.push({ url, lineage });
    }

    for (const name of SERVICES) addresses[name] = `127.0.0.1:${await freePort()}`;
    const common = {
      ...process.env,
      STEPRUNNER_STATE_DIR: join(root, "state"),
      STEPRUNNER_CONTEXT_ADDR: addresses["context-service"],
      STEPRUNNER_IMAGE_ADDR: addresses["image-service"],
      STEPRUNNER_REGISTRY_ADDR: stack.registry,
      OPSCHAIN_BASE_RUNNER: stack.baseRunner,
      STEPRUNNER_LOG_LEVEL: "debug",
    };
    const env: Record<ServiceName, NodeJS.ProcessEnv> = {
      "context-service": common,
      "image-service": {
        ...common,
        STEPRUNNER_BUILDKIT_ADDR: daemons.map((daemon) => daemon.address).join(","),
        STEPRUNNER_IMAGE_OUTPUT: "registry",
        STEPRUNNER_IMAGE_HANDOFF: "registry",
        STEPRUNNER_STEPS_REPOSITORY: "steprunner-test/multi-host",
        // Longer than the test: the killed daemon is not tried again while the other answers.
        STEPRUNNER_BUILDKIT_SHARD_COOLDOWN_MS: "600000",
      },
      "step-service-a": {},
      "step-service-b": {},
    };
    for (const name of ["step-service-a", "step-service-b"] as const) {
      stepStates[name] = join(root, name);
      env[name] = {
        ...common,
        STEPRUNNER_STEP_STATE_DIR: stepStates[name],
        STEPRUNNER_STEP_RUNC_ROOT: join(stepStates[name], "runc"),
        STEPRUNNER_STEP_ADDR: addresses[name],
      };
    }
    for (const name of SERVICES) {
      const log = openSync(join(root, "logs", `${name}.log`), "a");
      const main = join(ROOT, `dist/services/${name.replace(/-[ab]$/, "")}/main.js`);
      children.set(name, spawn(process.execPath, [main], { env: env[name], stdio: ["ignore", log, log] }));
      closeSync(log);
    }
    for (const name of SERVICES) await waitUntilServing(addresses[name], name);
  });

  after(async () => {
    for (const transport of transports) transport.close();
    for (const child of children.values()) if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
    await Promise.all(
      [...children.values()].map(async (child) => {
        if (child.exitCode !== null || child.signalCode !== null) return;
        const exited = new Promise((resolve) => child.once("exit", resolve));
        if ((await Promise.race([exited, sleep(15_000, "timeout")])) === "timeout") child.kill("SIGKILL");
        await exited;
      }),
    );
    await Promise.all(daemons.map((daemon) => daemon.stop()));
    if (root) await rm(root, { recursive: true, force: true });
  });

  /** Scans /proc for our RUNs, and for each the daemon whose runc (an ancestor) started it. */
  async function sightings(): Promise<Sighting[]> {
    const seen: Sighting[] = [];
    const read = (pid: string, file: string) => readFile(`/proc/${pid}/${file}`, "utf8").catch(() => "");
    for (const pid of await readdir("/proc")) {
      if (!/^\d+$/.test(pid)) continue;
      const cmdline = await read(pid, "cmdline");
      const at = cmdline.indexOf(MARKER);
      if (at < 0 || !cmdline.includes("sleep")) continue;
      const lineage = cmdline.slice(at + MARKER.length).split(/[\s\0&]/)[0]!;
      let daemon = -1;
      for (let ancestor = pid, depth = 0; daemon < 0 && depth < 6; depth++) {
        ancestor = (await read(ancestor, "stat")).split(") ")[1]?.split(" ")[1] ?? "0";
        if (ancestor === "0" || ancestor === "1") break;
        const command = await read(ancestor, "cmdline");
        daemon = daemons.findIndex((candidate) => command.includes(candidate.rootDir));
      }
      if (daemon >= 0) seen.push({ lineage, daemon, at: Date.now() });
    }
    return seen;
  }

  it("runs 20 steps over both step-services and both shards; a SIGKILLed buildkitd's builds finish on the other; nothing leaks", async () => {
    const started = Date.now();
    const hostTempMountsBefore = await buildkitMountsInHostTemp();
    const clients = (["step-service-a", "step-service-b"] as const).map((name) => {
      const transport = serviceTransport(addresses[name], {});
      transports.push(transport);
      return { name, client: createClient(StepService, transport.transport) };
    });

    const seen: Sighting[] = [];
    let killed: { daemon: number; at: number; running: string[] } | undefined;
    let watching = true;
    const watcher = (async () => {
      while (watching) {
        const now = await sightings();
        seen.push(...now);
        if (!killed && now.length > 0) {
          const victim = now[0]!.daemon;
          const running = [...new Set(now.filter((sighting) => sighting.daemon === victim).map((sighting) => sighting.lineage))];
          killed = { daemon: victim, at: Date.now(), running };
          await daemons[victim]!.kill();
        }
        await sleep(100);
      }
    })();

    const runStep = async (index: number) => {
      const repository = repositories[index % repositories.length]!;
      const { name, client } = clients[index % 2]!;
      const warnings: string[] = [];
      let step: Step | undefined;
      for await (const event of client.runStep({ repositoryUrl: repository.url, gitRev: "main", action: "hello" }, { timeoutMs: 200_000 })) {
        if (event.event.case === "warning") warnings.push(event.event.value);
        if (event.event.case === "finished") step = event.event.value.step;
      }
      assert.ok(step, `step ${index} (${repository.lineage} on ${name}) ended with finished`);
      return { index, name, repository, step, warnings };
    };
    const results = await Promise.all(Array.from({ length: STEPS }, (_, index) => runStep(index)));
    watching = false;
    await watcher;
    const elapsed = Date.now() - started;

    for (const { index, name, repository, step } of results) {
      assert.equal(step.state, StepState.SUCCESS, `step ${index} (${repository.lineage} on ${name}): ${step.reason}`);
    }
    assert.deepEqual(new Set(results.map((result) => result.name)), new Set(["step-service-a", "step-service-b"]));

    assert.ok(killed, `a RUN of ours was seen in a buildkitd (${elapsed} ms)`);
    killedDaemon = killed.daemon;
    const survivor = 1 - killed.daemon;
    const before = seen.filter((sighting) => sighting.at <= killed!.at);
    const afterKill = seen.filter((sighting) => sighting.at > killed!.at);
    // Lineage affinity while both were up: every RUN ran on the shard its lineage hashes to.
    for (const sighting of before) {
      const expected = repositories.find((repository) => repository.lineage === sighting.lineage)?.shard;
      assert.equal(sighting.daemon, expected, `${sighting.lineage} ran on its own shard`);
    }
    assert.ok(
      before.some((sighting) => sighting.daemon === killed!.daemon),
      "the killed daemon had builds",
    );
    assert.ok(
      seen.some((sighting) => sighting.daemon === survivor && repositories.find((repository) => repository.lineage === sighting.lineage)?.shard === survivor),
      "the other daemon had builds of its own lineages",
    );
    assert.ok(!afterKill.some((sighting) => sighting.daemon === killed!.daemon), "nothing ran on the killed daemon after its death");
    for (const lineage of killed.running) {
      assert.ok(
        afterKill.some((sighting) => sighting.lineage === lineage && sighting.daemon === survivor),
        `${lineage}, interrupted by the kill, was built again on the other daemon`,
      );
    }
    const failedOver = results.filter((result) =>
      result.warnings.some(
        (warning) =>
          warning.includes(`BuildKit at ${daemons[killed!.daemon]!.address} failed`) && warning.includes(`building on ${daemons[survivor]!.address} instead`),
      ),
    );
    assert.ok(failedOver.length > 0, `a step was told of the failover: ${JSON.stringify(results.flatMap((result) => result.warnings))}`);

    // The services lived through it: none exited, and none met a failure that nothing awaited.
    for (const [name, child] of children) {
      assert.equal(child.exitCode ?? child.signalCode, null, `${name} is still running`);
      assert.doesNotMatch(await readFile(join(root, "logs", `${name}.log`), "utf8"), /a failure that nothing awaited|uncaught/i, `${name}'s log`);
    }

    // Nothing leaked: no containers, mounts, cgroups or work directories of either step-service, nothing of
    // either daemon besides the survivor itself, no RUN of ours, no mount under the test's folder.
    for (const name of ["step-service-a", "step-service-b"] as const) {
      const left = await leftovers({ stateDir: stepStates[name], runcRoot: join(stepStates[name], "runc") } as StepServiceConfig);
      assert.deepEqual(left, { containers: [], mounts: [], cgroups: [], dirs: [] }, `${name} left nothing`);
    }
    for (const daemon of daemons) assert.deepEqual(await daemon.leftovers(), { processes: [], containers: [], mounts: [] });
    assert.deepEqual(await sightings(), []);
    assert.deepEqual(
      (await mountPoints()).filter((mountPoint) => mountPoint.startsWith(root)),
      [],
    );
    // A daemon's temporary mounts are made in its TMPDIR, its own folder: the host's temp folder gets none.
    assert.deepEqual(
      (await buildkitMountsInHostTemp()).filter((mount) => !hostTempMountsBefore.includes(mount)),
      [],
    );
    console.log(
      `multi-host: ${STEPS} steps in ${elapsed} ms; killed buildkitd ${killed.daemon} ${killed.at - started} ms in, running ${killed.running.join(",")}; ` +
        `RUNs seen: ${[...new Set(seen.map((sighting) => `${sighting.lineage}@${sighting.daemon}`))].sort().join(" ")}; ${failedOver.length} steps told of the failover`,
    );
  });

  it("reports, measures and prunes every daemon's cache, and names the daemon that is down", async (t) => {
    if (killedDaemon === undefined) return t.skip("the first test killed no daemon");
    const killed = daemons[killedDaemon]!;
    const survivor = daemons[1 - killedDaemon]!;
    const transport = serviceTransport(addresses["image-service"], {});
    transports.push(transport);
    const images = createClient(ImageService, transport.transport);

    const info = await images.getBuilderInfo({}, { timeoutMs: 30_000 });
    assert.deepEqual(
      info.buildkits.map((daemon) => daemon.address),
      daemons.map((daemon) => daemon.address),
    );
    const [down, up] = [killed, survivor].map((daemon) => info.buildkits.find((entry) => entry.address === daemon.address)!);
    assert.match(down!.problem, /unavailable|ECONNREFUSED|ENOENT/i, "the killed daemon is reported with why it did not answer");
    assert.deepEqual([down!.version, down!.workers], ["", []]);
    assert.equal(up!.problem, "");
    assert.match(up!.version, /^v0\.24/);
    assert.ok(up!.workers.length > 0, "the survivor's workers are listed");

    // The survivor built most steps: it holds cache records no build uses now.
    const survivorClient = new BuildKitClient(survivor.address);
    try {
      const unused = async () => (await survivorClient.diskUsage()).filter((record) => !record.inUse);
      assert.ok((await unused()).length > 0, "the survivor holds cache records");
      for (const call of [() => images.getDiskUsage({}, { timeoutMs: 30_000 }), () => images.pruneCache({ all: true }, { timeoutMs: 120_000 })]) {
        const failure = await call().then(
          () => assert.fail("a call on every daemon succeeded with one of them down"),
          (error: unknown) => ConnectError.from(error),
        );
        assert.equal(failure.code, Code.Unavailable);
        assert.ok(failure.message.includes(killed.address.replace(/^unix:\/\//, "")), `the failure names the killed daemon: ${failure.message}`);
      }
      assert.deepEqual(await unused(), [], "the prune reached the survivor, whichever daemon is first in the list");
    } finally {
      survivorClient.close();
    }
  });
});

/** Mounts BuildKit made in the host's temp folder (buildkit-mount*: a snapshot it reads an image's users from). */
async function buildkitMountsInHostTemp(): Promise<string[]> {
  const prefix = join(tmpdir(), "buildkit-mount");
  return (await mountPoints()).filter((mountPoint) => mountPoint.startsWith(prefix));
}

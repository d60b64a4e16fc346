// steprunner against the stock pipeline a user would script on the same dockerd, measured in one run on one
// machine, interleaved, medians of RUNS runs. Two stock pipelines:
// - the realistic one (the headline): a persistent clone; `git fetch`, `git checkout --detach`, `tar -cf repo.tar .`
//   of the clone (its .git included), `docker build` of the seed's Dockerfile (repo.tar unpacked in a scratch
//   stage) with the same build args and step_context.json.zip, `docker run --rm` of the same action; for a
//   repository's first step, `git clone` instead of the fetch;
// - the same bytes: our own repo.tar and step_context.json.zip handed over before the timer starts, then the
//   same docker build and run.
// Public repositories with long histories are passed by path (--repo, --small-repo): the bench clones them, adds
// the sample actions.rb in a commit and makes one-line commits itself. Prints a table and writes it to
// bench-results.md. The warm path's rows (F1-F6) set steprunner against the action alone in bare runc (warm-path.ts).
// Usage: npm run bench [-- --runs N --repo PATH --small-repo PATH --big-mb M --rss-gb G --only SECTIONS
// --concurrent N --throughput-runs N --out FILE] (npm run bench brings the stack up first; docs/benchmarks.md)
import { randomBytes } from "node:crypto";
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { cpus, totalmem } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { createClient } from "@connectrpc/connect";
import type { JsonObject } from "@bufbuild/protobuf";
import { Phase, StepService, StepState } from "../../gen/steprunner/step/v1/step_service_pb.js";
import { serviceTransport } from "../../services/shared/client/transport.js";
import { configFromEnv } from "../../services/step-service/service.js";
import { ROOT, run, stack } from "../support/stack.js";
import {
  BareBundle,
  bareThroughput,
  StepSpecBundle,
  cpuPerStep,
  DOCKER,
  envOf,
  median,
  runQuiet,
  seconds,
  stepContextOf,
  stepImageLayers,
} from "./warm-path.js";

const { values: args } = parseArgs({
  options: {
    runs: { type: "string", default: "5" },
    repo: { type: "string" },
    "small-repo": { type: "string" },
    "big-mb": { type: "string", default: "30" },
    "rss-gb": { type: "string", default: "1" },
    // Comma-separated sections to run: stock (rows 1-4), warm-path (the floor rows), public (A-C), rss (D, 5),
    // buildkitd (E: rows 1, A and 4 again with the stack on a standalone buildkitd; needs STEPRUNNER_BUILDKITD_BIN).
    only: { type: "string", default: "stock,warm-path,public,rss,buildkitd" },
    concurrent: { type: "string", default: "20" },
    // Repetitions of the 20-at-once measurement (each against its own bare-runc bound).
    "throughput-runs": { type: "string", default: "3" },
    out: { type: "string" },
  },
});
const SECTIONS = new Set(args.only!.split(","));
const want = (section: string) => SECTIONS.has(section);
const RUNS = Number(args.runs);
const CLI = join(ROOT, "dist/services/cli-bundle/steprunner.cjs");
const properties = {
  project: { app: "bench", opschain: { env: { GREETING: "hello" } } },
  environment: { region: "bench", opschain: { env: { REGION: "bench-1" } } },
};

/** The seed's default Dockerfile, which the stock pipeline builds: repo.tar unpacked in a scratch stage, then copied. */
const STOCK_DOCKERFILE = `ARG OPSCHAIN_BASE_RUNNER
FROM scratch AS repository
ADD repo.tar /
FROM \${OPSCHAIN_BASE_RUNNER}
ARG OPSCHAIN_VERSION
COPY --from=repository --chown=10001:10001 / /opt/opschain/
ARG GIT_REV
ARG GIT_SHA
LABEL org.steprunner.git-rev="\${GIT_REV}" org.steprunner.git-sha="\${GIT_SHA}" org.steprunner.version="\${OPSCHAIN_VERSION}"
`;
const GIT_IDENTITY = { GIT_AUTHOR_NAME: "bench", GIT_AUTHOR_EMAIL: "b@x", GIT_COMMITTER_NAME: "bench", GIT_COMMITTER_EMAIL: "b@x" };

async function must(file: string, argv: string[], options: Parameters<typeof run>[2] = {}): Promise<string> {
  const result = await run(file, argv, { timeoutMs: 1_800_000, ...options });
  if (result.code !== 0) throw new Error(`${file} ${argv.slice(0, 4).join(" ")} failed: ${result.stderr.slice(-2000)}`);
  return result.stdout;
}

let steps = serviceTransport(stack.stepAddr, {});
let stepClient = createClient(StepService, steps.transport);

/** A new connection to the step-service, after the stack was brought up again. */
function reconnect(): void {
  steps.close();
  steps = serviceTransport(stack.stepAddr, {});
  stepClient = createClient(StepService, steps.transport);
}

/**
 * Runs `work` with the stack on a standalone buildkitd (STEPRUNNER_BUILDKIT=buildkitd), then brings it back up on
 * dockerd, as it was: the same services, registry and state, only the BuildKit and where images go differ.
 */
async function onBuildKitd(work: () => Promise<void>): Promise<void> {
  const restart = async (buildkit: "dockerd" | "buildkitd") => {
    await must(join(ROOT, "deploy/local/down.sh"), []);
    await must(join(ROOT, "deploy/local/up.sh"), [], { env: { STEPRUNNER_BUILDKIT: buildkit, STEPRUNNER_BUILDKIT_ADDR: "" } });
    reconnect();
  };
  await restart("buildkitd");
  try {
    await work();
  } finally {
    await restart("dockerd");
  }
}

/** Phase durations (seconds) of the steps run so far, by phase name, for the "where the time goes" table. */
const phaseTimes = new Map<string, Map<string, number[]>>();
let currentScenario = "";

/** Durations (seconds) of the parts of phases ("run/runc", "context/rpc" …) by scenario, for the breakdown table. */
const partTimes = new Map<string, Map<string, number[]>>();
const durationSeconds = (duration?: { seconds: bigint; nanos: number }) => Number(duration?.seconds ?? 0n) + (duration?.nanos ?? 0) / 1e9;

/** One step through steprunner (RunStep over gRPC, to its finished event). */
async function steprunnerStep(repository: string, gitRev: string, props: JsonObject): Promise<{ reused: boolean; imageId: string }> {
  for await (const response of stepClient.runStep({
    repositoryUrl: repository,
    gitRev,
    action: "hello",
    properties: Object.entries(props).map(([owner, values]) => ({ owner, properties: values as JsonObject })),
  })) {
    if (response.event.case === "finished") {
      const step = response.event.value.step!;
      if (step.state !== StepState.SUCCESS) throw new Error(`step failed: ${step.reason}`);
      const byPhase = phaseTimes.get(currentScenario) ?? new Map<string, number[]>();
      phaseTimes.set(currentScenario, byPhase);
      for (const phase of step.phases) {
        const name = Phase[phase.phase].toLowerCase();
        byPhase.set(name, [...(byPhase.get(name) ?? []), durationSeconds(phase.duration)]);
      }
      const byPart = partTimes.get(currentScenario) ?? new Map<string, number[]>();
      partTimes.set(currentScenario, byPart);
      for (const part of step.phaseParts ?? []) {
        const name = `${Phase[part.phase].toLowerCase()}/${part.name}`;
        byPart.set(name, [...(byPart.get(name) ?? []), durationSeconds(part.duration)]);
      }
      return { reused: step.imageReused, imageId: step.imageId };
    }
  }
  throw new Error("no finished event");
}

/** The bytes the stock pipeline builds from: the same repo.tar, step_context.json.zip and Dockerfile. Not timed. */
async function stockContext(work: string, repository: string, gitRev: string, props: JsonObject): Promise<string> {
  const context = join(work, `stock-source-${randomBytes(4).toString("hex")}`);
  await must("node", [CLI, "context", "--repo", repository, "--rev", gitRev, "--out", context, "--properties", await propertiesFile(work, props)]);
  for (const extra of ["history", "base", "changes", "Dockerfile"]) await rm(join(context, extra), { recursive: true, force: true });
  await writeFile(join(context, "Dockerfile"), STOCK_DOCKERFILE);
  return context;
}

/** One step through the stock pipeline: write the bytes, docker build on a warm cache, docker run. Timed. */
async function stockStep(work: string, source: string, gitRev: string): Promise<void> {
  const context = join(work, `stock-${randomBytes(4).toString("hex")}`);
  await cp(source, context, { recursive: true });
  await dockerBuildAndRun(context, gitRev);
}

/**
 * The realistic stock pipeline a user would script: fetch (or clone) into a persistent clone, check the
 * commit out, tar the clone with its .git, then build and run. Timed whole.
 */
async function gitStockStep(work: string, clone: string, repository: string, gitRev: string, zip: string, firstStep: boolean): Promise<void> {
  if (firstStep) await must("git", ["clone", "-q", repository, clone]);
  else await must("git", ["-C", clone, "fetch", "-q", "origin"]);
  await must("git", ["-C", clone, "checkout", "-q", "--detach", `origin/${gitRev}`]);
  const context = join(work, `stock-git-${randomBytes(4).toString("hex")}`);
  await mkdir(context);
  await must("tar", ["-cf", join(context, "repo.tar"), "-C", clone, "."]);
  await cp(zip, join(context, "step_context.json.zip"));
  await writeFile(join(context, "Dockerfile"), STOCK_DOCKERFILE);
  await dockerBuildAndRun(context, gitRev);
}

async function dockerBuildAndRun(context: string, gitRev: string): Promise<void> {
  const tag = "steprunner-bench/stock:latest";
  const buildArgs = { GIT_REV: gitRev, GIT_SHA: gitRev, OPSCHAIN_BASE_RUNNER: stack.baseRunner, OPSCHAIN_VERSION: "0.1.0" };
  const argv = [...DOCKER.slice(1), "build", "--network=none", "-q", "-t", tag];
  for (const [name, value] of Object.entries(buildArgs)) argv.push("--build-arg", `${name}=${value}`);
  await must(DOCKER[0]!, [...argv, "--secret", `id=env_context_zip,src=${join(context, "step_context.json.zip")}`, context], { env: { DOCKER_BUILDKIT: "1" } });
  await must(DOCKER[0]!, [
    ...DOCKER.slice(1),
    "run",
    "--rm",
    "--network=none",
    "-v",
    `${join(context, "step_context.json.zip")}:/tmp/step_context.json.zip:ro`,
    tag,
    "sh",
    "-c",
    "mkdir -p /opt/opschain/.mintpress && cd /opt/opschain/.mintpress && unzip -qo /tmp/step_context.json.zip && opschain-action hello",
  ]);
  await rm(context, { recursive: true, force: true });
}

async function propertiesFile(work: string, props: JsonObject): Promise<string> {
  const path = join(work, `properties-${randomBytes(4).toString("hex")}.json`);
  await writeFile(path, JSON.stringify(props));
  return path;
}

/** A repository of about `files` files and `megabytes` MB of incompressible content, with the sample actions. */
async function bigRepository(dir: string, files: number, megabytes: number): Promise<void> {
  await must(join(ROOT, "deploy/sample/make-sample-repo.sh"), [dir]);
  const perFile = Math.floor((megabytes * 1024 * 1024) / files);
  for (let i = 0; i < files; i++) {
    const sub = join(dir, "data", String(i % 50).padStart(2, "0"));
    await mkdir(sub, { recursive: true });
    await writeFile(join(sub, `file-${i}.bin`), randomBytes(perFile));
  }
  await must("git", ["-C", dir, "add", "-A"]);
  await must("git", ["-C", dir, "-c", "commit.gpgsign=false", "commit", "-q", "-m", "data"], {
    env: { GIT_AUTHOR_NAME: "bench", GIT_AUTHOR_EMAIL: "b@x", GIT_COMMITTER_NAME: "bench", GIT_COMMITTER_EMAIL: "b@x" },
  });
}

/** A public repository cloned for the bench with the sample actions.rb committed on top; returns what it holds. */
async function publicRepository(source: string, dir: string): Promise<string> {
  await must("git", ["clone", "-q", source, dir]);
  // Steps name the branch main, whatever the project's default branch is called.
  await must("git", ["-C", dir, "checkout", "-q", "-B", "main"]);
  await cp(join(ROOT, "deploy/sample/actions.rb"), join(dir, "actions.rb"));
  await must("git", ["-C", dir, "add", "actions.rb"]);
  // The project's own Gemfile names gems the runner image lacks, which opschain-action refuses (there is no network
  // at run time), in both pipelines alike: the bench measures the repository's history, not the project's gems.
  await must("git", ["-C", dir, "rm", "-q", "--ignore-unmatch", "Gemfile", "Gemfile.lock", "gems.rb", "gems.locked"]);
  await must("git", ["-C", dir, "-c", "commit.gpgsign=false", "commit", "-q", "-m", "steprunner bench actions"], { env: GIT_IDENTITY });
  const commits = (await must("git", ["-C", source, "rev-list", "--all", "--count"])).trim();
  const objects = /in-pack: (\d+)/.exec(await must("git", ["-C", source, "count-objects", "-v"]))?.[1] ?? "?";
  const packKiB = /size-pack: (\d+)/.exec(await must("git", ["-C", source, "count-objects", "-v"]))?.[1] ?? "0";
  const files = (await must("git", ["-C", dir, "ls-files"])).split("\n").length;
  return `${source
    .split("/")
    .filter((part) => part && part !== "repo")
    .pop()}: ${Number(commits).toLocaleString("en")} commits, ${Number(objects).toLocaleString("en")} objects, ${(Number(packKiB) / 1024).toFixed(0)} MB of packs, ${files.toLocaleString("en")} files`;
}

/** One line appended to actions.rb and committed: a new commit that changes one file. */
async function oneLineCommit(dir: string): Promise<void> {
  await writeFile(join(dir, "actions.rb"), `${await readFile(join(dir, "actions.rb"), "utf8")}# ${randomBytes(8).toString("hex")}\n`);
  await must("git", ["-C", dir, "-c", "commit.gpgsign=false", "commit", "-q", "-am", "one line"], { env: GIT_IDENTITY });
}

async function newCommit(dir: string): Promise<void> {
  await writeFile(join(dir, "data", "changed.txt"), randomBytes(16).toString("hex"));
  await must("git", ["-C", dir, "add", "-A"]);
  await must("git", ["-C", dir, "-c", "commit.gpgsign=false", "commit", "-q", "-m", "change"], {
    env: { GIT_AUTHOR_NAME: "bench", GIT_AUTHOR_EMAIL: "b@x", GIT_COMMITTER_NAME: "bench", GIT_COMMITTER_EMAIL: "b@x" },
  });
}

/** The local stack's service processes by name. */
async function servicePids(): Promise<Record<string, number>> {
  const pids: Record<string, number> = {};
  for (const service of ["context-service", "image-service", "step-service"]) {
    pids[service] = Number((await readFile(join(stack.runDir, `${service}.pid`), "utf8")).trim());
  }
  return pids;
}

/** CPU per step (ms) of each process during F6: steprunner's runs and the bare runc pairs', run by run. */
const cpuOfSteps: Record<string, number>[] = [];
const cpuOfBound: Record<string, number>[] = [];

/** Peak resident memory of each service while work runs, sampled every 20 ms from /proc. */
async function peakRss<T>(work: () => Promise<T>): Promise<Record<string, number>> {
  const pids = await servicePids();
  const peaks: Record<string, number> = Object.fromEntries(Object.keys(pids).map((name) => [name, 0]));
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      for (const [name, pid] of Object.entries(pids)) {
        const status = await readFile(`/proc/${pid}/status`, "utf8").catch(() => "");
        const kb = Number(/^VmRSS:\s+(\d+)/m.exec(status)?.[1] ?? 0);
        peaks[name] = Math.max(peaks[name]!, kb * 1024);
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  })();
  try {
    await work();
  } finally {
    sampling = false;
    await sampler;
  }
  return peaks;
}

/** A row of the warm path's table: steprunner against a bound measured in the same run. */
interface FloorRow {
  name: string;
  ours: number;
  bound: number;
  unit: "s" | "steps/s";
  /** difference: ours − bound must be at most `limit` seconds; ratio: ours / bound within `limit` (at most, or at least with atLeast). */
  kind: "difference" | "ratio";
  limit: number;
  atLeast?: boolean;
  boundName: string;
  note?: string;
}

function floorRowMet(row: FloorRow): boolean {
  if (row.kind === "difference") return row.ours - row.bound <= row.limit;
  return row.atLeast ? row.ours / row.bound >= row.limit : row.ours / row.bound <= row.limit;
}

const formatFloorRow = (row: FloorRow) => {
  const value = (v: number) => (row.unit === "s" ? `${(v * 1000).toFixed(0)} ms` : `${v.toFixed(2)} steps/s`);
  const compared =
    row.kind === "difference"
      ? `${row.ours >= row.bound ? "+" : "−"}${Math.abs((row.ours - row.bound) * 1000).toFixed(0)} ms`
      : `${(row.ours / row.bound).toFixed(2)}×`;
  const target =
    row.kind === "difference" ? `≤ ${row.boundName} + ${(row.limit * 1000).toFixed(0)} ms` : `${row.atLeast ? "≥" : "≤"} ${row.limit}× ${row.boundName}`;
  return `| ${row.name} | ${value(row.ours)} | ${row.boundName}: ${value(row.bound)} | ${compared} | ${target} | ${floorRowMet(row) ? "met" : "**not met**"}${row.note ? ` (${row.note})` : ""} |`;
};

const ACTION_ARGS = ["opschain-action", "hello"];
/** A step's limits when its request sets none, as the step-service's settings give them. */
const STEP_LIMITS = configFromEnv().defaultLimits;

/**
 * The warm path against its floor, interleaved run by run: the action alone in a bare runc container (and, to
 * explain that floor, `true`, `ruby -e 0` and `ruby --disable-gems -e 0` in the same container), a warm step and
 * a properties-only step over gRPC from this long-lived client, a warm step through the CLI, `steprunner --help`
 * against `node -e 0`; then 20 steps at once against the same action in bare runc two at a time.
 */
async function warmPath(work: string, sample: string, record: (row: FloorRow) => void): Promise<void> {
  currentScenario = "";
  const { imageId } = await steprunnerStep(sample, "main", properties);
  const image = await stepImageLayers(DOCKER, imageId);
  const prepared = await stockContext(work, sample, "main", properties);
  const stepContext = await stepContextOf(join(prepared, "step_context.json.zip"));
  const env = envOf(properties);
  const bundles: (BareBundle | StepSpecBundle)[] = [];
  try {
    for (const name of ["bare-0", "bare-1"]) bundles.push(await BareBundle.create(work, name, image, stepContext, env));
    const [floorBundle, probeBundle] = bundles as [BareBundle, BareBundle];
    const stepSpec = (withSeccomp: boolean) =>
      StepSpecBundle.create(work, `spec-${withSeccomp}`, image, floorBundle.rootfs, stepContext, env, STEP_LIMITS, withSeccomp);
    const [specBundle, noSeccompBundle] = [await stepSpec(true), await stepSpec(false)];
    bundles.push(specBundle, noSeccompBundle);
    const propsFile = await propertiesFile(work, properties);
    let n = 0;
    const changed = () => ({ ...properties, environment: { ...properties.environment, run: ++n } });
    const times: Record<"floor" | "fresh" | "spec" | "noSeccomp" | "warm" | "props" | "cli" | "runcTrue" | "ruby" | "rubyNoGems" | "help" | "node", number[]> =
      {
        floor: [],
        spec: [],
        noSeccomp: [],
        fresh: [],
        warm: [],
        props: [],
        cli: [],
        runcTrue: [],
        ruby: [],
        rubyNoGems: [],
        help: [],
        node: [],
      };
    await runQuiet(CLI, ["run", "--repo", sample, "--rev", "main", "--action", "hello", "--properties", propsFile]);
    for (let i = 0; i < RUNS; i++) {
      times.floor.push(await seconds(() => floorBundle.run(`bench-floor-${i}`)));
      currentScenario = "warm";
      times.warm.push(await seconds(() => steprunnerStep(sample, "main", properties)));
      const props = changed();
      currentScenario = "properties only";
      times.props.push(await seconds(() => steprunnerStep(sample, "main", props)));
      currentScenario = "";
      times.cli.push(await seconds(() => runQuiet(CLI, ["run", "--repo", sample, "--rev", "main", "--action", "hello", "--properties", propsFile])));
      await probeBundle.setArgs(ACTION_ARGS);
      await probeBundle.fresh();
      times.fresh.push(await seconds(() => probeBundle.run(`bench-fresh-${i}`)));
      await probeBundle.setArgs(["true"]);
      times.runcTrue.push(await seconds(() => probeBundle.run(`bench-true-${i}`)));
      await probeBundle.setArgs(["ruby", "-e", "0"]);
      times.ruby.push(await seconds(() => probeBundle.run(`bench-ruby-${i}`)));
      await probeBundle.setArgs(["ruby", "--disable-gems", "-e", "0"]);
      times.rubyNoGems.push(await seconds(() => probeBundle.run(`bench-ruby-no-gems-${i}`)));
      for (const [label, bundle, into] of [
        ["spec", specBundle, times.spec],
        ["no-seccomp", noSeccompBundle, times.noSeccomp],
      ] as const) {
        const id = `bench-${label}-${i}`;
        await bundle.prepare(id);
        try {
          into.push(await seconds(() => bundle.run(id)));
        } finally {
          await bundle.cleanup(id);
        }
      }
      times.help.push(await seconds(() => runQuiet(CLI, ["--help"])));
      times.node.push(await seconds(() => runQuiet(process.execPath, ["-e", "0"])));
    }
    await probeBundle.setArgs(ACTION_ARGS);
    const floor = median(times.floor);
    const ms = (seconds: number) => `${(seconds * 1000).toFixed(0)} ms`;
    const why = `runc alone (\`true\`): ${ms(median(times.runcTrue))}, \`ruby -e 0\`: ${ms(median(times.ruby))}, \`ruby --disable-gems -e 0\` (how the runner's commands start Ruby, RubyGems loaded only if needed): ${ms(median(times.rubyNoGems))}, so Rake, actions.rb and the OpsChain library add ${ms(floor - median(times.rubyNoGems))}; the floor's overlay is kept from run to run, and with a new one each run, as every step has, the action takes ${ms(median(times.fresh))}`;
    record({
      name: "F1. floor: the action alone in a bare runc container",
      ours: floor,
      bound: floor,
      unit: "s",
      kind: "difference",
      limit: 0,
      boundName: "floor",
      note: why,
    });
    record({
      name: "F2. warm step over gRPC (same commit and properties, image reused)",
      ours: median(times.warm),
      bound: floor,
      unit: "s",
      kind: "difference",
      limit: 0.03,
      boundName: "floor",
      note: `the step's own container spec in bare runc, no service (its seccomp profile, limits and cgroups, the overlay mounted by runc with a new upper directory): ${ms(median(times.spec))}, ${ms(median(times.noSeccomp))} without the seccomp profile`,
    });
    record({
      name: "F3. only the properties changed, over gRPC",
      ours: median(times.props),
      bound: floor,
      unit: "s",
      kind: "difference",
      limit: 0.03,
      boundName: "floor",
    });
    record({
      name: "F4. warm step through the CLI (`steprunner run`)",
      ours: median(times.cli),
      bound: floor,
      unit: "s",
      kind: "difference",
      limit: 0.15,
      boundName: "floor",
    });
    record({
      name: "F5. `steprunner --help`",
      ours: median(times.help),
      bound: median(times.node),
      unit: "s",
      kind: "ratio",
      limit: 1.5,
      boundName: "`node -e 0`",
    });

    const concurrent = Number(args.concurrent);
    const ours: number[] = [];
    const bound: number[] = [];
    const pids = await servicePids();
    currentScenario = "";
    for (let i = 0; i < Number(args["throughput-runs"]); i++) {
      let pairRate = 0;
      cpuOfBound.push(
        await cpuPerStep(pids, concurrent, async () => (pairRate = await bareThroughput([floorBundle, probeBundle], concurrent, `bench-pair-${i}`))),
      );
      bound.push(pairRate);
      currentScenario = `${concurrent} at once`;
      cpuOfSteps.push(
        await cpuPerStep(pids, concurrent, async () =>
          ours.push(concurrent / (await seconds(() => Promise.all(Array.from({ length: concurrent }, () => steprunnerStep(sample, "main", properties)))))),
        ),
      );
      currentScenario = "";
    }
    record({
      name: `F6. ${concurrent} steps at once: steps per second`,
      ours: median(ours),
      bound: median(bound),
      unit: "steps/s",
      kind: "ratio",
      limit: 0.85,
      atLeast: true,
      boundName: "bare runc 2 at a time",
      note: `${ours.length} runs: ${ours.map((v) => v.toFixed(2)).join(", ")} against ${bound.map((v) => v.toFixed(2)).join(", ")}`,
    });
  } finally {
    for (const bundle of bundles) await bundle.close();
    await rm(prepared, { recursive: true, force: true });
  }
}

/** Where the time of the warm path's steps goes, in milliseconds: each phase's median and its parts' medians. */
function breakdownLines(): string[] {
  const lines: string[] = [];
  for (const scenario of ["warm", "properties only", `${args.concurrent} at once`]) {
    const byPhase = phaseTimes.get(scenario);
    if (!byPhase) continue;
    const byPart = partTimes.get(scenario) ?? new Map<string, number[]>();
    lines.push(
      `| ${scenario} | ${[...byPhase]
        .map(([phase, values]) => {
          const parts = [...byPart]
            .filter(([name]) => name.startsWith(`${phase}/`))
            .map(([name, times]) => `${name.slice(phase.length + 1)} ${(median(times) * 1000).toFixed(1)}`);
          return `${phase} ${(median(values) * 1000).toFixed(1)}${parts.length ? ` (${parts.join(", ")})` : ""}`;
        })
        .join("; ")} |`,
    );
  }
  return lines;
}

interface Row {
  name: string;
  steprunner: number;
  stock: number;
  stockBytes?: number;
  unit: string;
  target: string;
  note?: string;
}

const formatRow = (row: Row) =>
  `| ${row.name} | ${row.steprunner.toFixed(3)} ${row.unit} | ${row.stock.toFixed(3)} ${row.unit} | ${(row.steprunner / row.stock).toFixed(2)}× | ` +
  `${row.stockBytes === undefined ? "–" : `${row.stockBytes.toFixed(3)} ${row.unit} (${(row.steprunner / row.stockBytes).toFixed(2)}×)`} | ${row.target}${row.note ? ` (${row.note})` : ""} |`;

async function main(): Promise<void> {
  await mkdir(join(stack.stateDir, "tmp"), { recursive: true });
  const work = await mkdtemp(join(stack.stateDir, "tmp", "bench-"));
  const rows: Row[] = [];
  const floorRowsMeasured: FloorRow[] = [];
  const floorRows = (row: FloorRow) => {
    console.error(formatFloorRow(row));
    floorRowsMeasured.push(row);
  };
  // Each row is printed as soon as it is measured, so that a failure later keeps what was measured.
  const record = (row: Row) => {
    console.error(formatRow(row));
    rows.push(row);
  };
  const rss: Array<{ service: string; small: number; huge: number }> = [];
  const publicRss: Array<{ service: string; small: number; big: number }> = [];
  const publicRepositories: string[] = [];
  try {
    const sample = join(work, "sample");
    await must(join(ROOT, "deploy/sample/make-sample-repo.sh"), [sample]);
    const stock = async (repository: string, props: JsonObject) => {
      const source = await stockContext(work, repository, "main", props);
      return () => stockStep(work, source, "main");
    };
    // Warm both: the image exists, BuildKit's cache is warm.
    await steprunnerStep(sample, "main", properties);
    const big = join(work, "big");
    let bigMade = false;
    const ensureBig = async () => {
      if (!bigMade) await bigRepository(big, 2000, Number(args["big-mb"]));
      bigMade = true;
    };

    /** The stock pipeline's figures (on dockerd) that the buildkitd rows are compared with. */
    const stockFigures: { warm?: number; newCommitBig?: number; concurrent?: number } = {};
    let publicBig: string | undefined;
    if (want("stock")) {
      await (await stock(sample, properties))();

      const interleave = async (steprunnerRun: () => Promise<unknown>, stockRun: () => Promise<() => Promise<void>>, before?: () => Promise<void>) => {
        const ours: number[] = [];
        const theirs: number[] = [];
        for (let i = 0; i < RUNS; i++) {
          if (before) await before();
          ours.push(await seconds(steprunnerRun));
          const prepared = await stockRun();
          theirs.push(await seconds(prepared));
        }
        return { steprunner: median(ours), stock: median(theirs) };
      };

      currentScenario = "1. warm";
      const warm = await interleave(
        () => steprunnerStep(sample, "main", properties),
        () => stock(sample, properties),
      );
      record({ name: "1. warm step (same commit and properties; stock: same bytes)", ...warm, unit: "s", target: "no worse than 0.60×" });
      stockFigures.warm = warm.stock;

      await ensureBig();
      // Warm-up steps are no scenario's: their phases are not counted.
      currentScenario = "";
      await steprunnerStep(big, "main", properties);
      await (await stock(big, properties))();
      currentScenario = "2. new commit";
      const commit = await interleave(
        () => steprunnerStep(big, "main", properties),
        () => stock(big, properties),
        () => newCommit(big),
      );
      record({
        name: `2. new commit, 2,000 files / ${args["big-mb"]} MB, one commit of history (stock: same bytes)`,
        ...commit,
        unit: "s",
        target: "information (was ≤ 0.7×)",
      });

      let n = 0;
      const changed = () => ({ ...properties, environment: { ...properties.environment, run: ++n } });
      currentScenario = "3. properties only";
      const propsOnly = await interleave(
        () => steprunnerStep(sample, "main", changed()),
        () => stock(sample, changed()),
      );
      record({
        name: "3. only the properties changed (stock: same bytes)",
        ...propsOnly,
        unit: "s",
        target: "no worse than 0.66×, as fast as warm",
        note: `warm: ${warm.steprunner.toFixed(3)} s`,
      });

      currentScenario = "";
      const concurrent = 20;
      const ours = await seconds(() => Promise.all(Array.from({ length: concurrent }, () => steprunnerStep(sample, "main", properties))));
      const source = await stockContext(work, sample, "main", properties);
      const theirs = await seconds(async () => {
        for (let i = 0; i < concurrent; i++) await stockStep(work, source, "main");
      });
      record({
        name: `4. ${concurrent} steps: steps per second (steprunner at once, stock one after another)`,
        steprunner: concurrent / ours,
        stock: concurrent / theirs,
        unit: "steps/s",
        target: "≥ 3×, no worse than 3.06×",
      });
      stockFigures.concurrent = concurrent / theirs;
    }

    if (want("warm-path")) await warmPath(work, sample, floorRows);

    // Public repositories with real history: a one-line commit, then one step, against both stock pipelines.
    const newCommitTimes: Record<string, number> = {};
    const newCommitRss: Record<string, Record<string, number>> = {};
    for (const [label, source, target] of [
      ["small", args["small-repo"], "≤ 1.0×"],
      ["big", args.repo, "≤ 0.3×"],
    ] as const) {
      if (!want("public")) break;
      if (!source) {
        console.error(`no --${label === "big" ? "repo" : "small-repo"} given: the ${label} public repository's rows are skipped`);
        continue;
      }
      const dir = join(work, `public-${label}`);
      const description = await publicRepository(source, dir);
      publicRepositories.push(`${label}: ${description}`);
      const clone = join(work, `public-${label}-clone`);
      await must("git", ["clone", "-q", dir, clone]);
      const bytes = await stockContext(work, dir, "main", properties);
      const zip = join(bytes, "step_context.json.zip");
      currentScenario = "";
      await steprunnerStep(dir, "main", properties);
      await gitStockStep(work, clone, dir, "main", zip, false);
      currentScenario = `A. new commit, ${label} repository`;
      const ours: number[] = [];
      const theirs: number[] = [];
      const theirBytes: number[] = [];
      newCommitRss[label] = await peakRss(async () => {
        for (let i = 0; i < RUNS; i++) {
          await oneLineCommit(dir);
          ours.push(await seconds(() => steprunnerStep(dir, "main", properties)));
          theirs.push(await seconds(() => gitStockStep(work, clone, dir, "main", zip, false)));
          const source = await stockContext(work, dir, "main", properties);
          theirBytes.push(await seconds(() => stockStep(work, source, "main")));
          await rm(source, { recursive: true, force: true });
        }
      });
      newCommitTimes[label] = median(ours);
      if (label === "big") {
        stockFigures.newCommitBig = median(theirs);
        publicBig = dir;
      }
      record({
        name: `A. new commit (one line), ${label} public repository`,
        steprunner: median(ours),
        stock: median(theirs),
        stockBytes: median(theirBytes),
        unit: "s",
        target,
      });

      if (label === "big") {
        // A repository's first step: a copy of it at a new path (a new mirror, a new BuildKit transfer) at a commit
        // no image was built for; the stock pipeline clones the same copy.
        currentScenario = "B. first step, big repository";
        const oursFirst: number[] = [];
        const theirsFirst: number[] = [];
        for (let i = 0; i < RUNS; i++) {
          await oneLineCommit(dir);
          const fresh = join(work, `public-first-${i}.git`);
          await must("git", ["clone", "-q", "--bare", dir, fresh]);
          oursFirst.push(await seconds(() => steprunnerStep(fresh, "main", properties)));
          theirsFirst.push(await seconds(() => gitStockStep(work, join(work, `public-first-${i}-clone`), fresh, "main", zip, true)));
          await rm(join(work, `public-first-${i}-clone`), { recursive: true, force: true });
        }
        record({
          name: "B. first step of the big public repository (empty mirror; stock: git clone)",
          steprunner: median(oursFirst),
          stock: median(theirsFirst),
          unit: "s",
          target: "≤ 1.0×",
        });
      }
    }
    if (newCommitTimes.small && newCommitTimes.big) {
      record({
        name: "C. new commit: big repository against small (steprunner both)",
        steprunner: newCommitTimes.big,
        stock: newCommitTimes.small,
        unit: "s",
        target: "≤ 2× (flat in history)",
      });
      for (const service of Object.keys(newCommitRss.big!)) publicRss.push({ service, small: newCommitRss.small![service]!, big: newCommitRss.big![service]! });
    }

    if (want("buildkitd") && !process.env.STEPRUNNER_BUILDKITD_BIN) console.error("no STEPRUNNER_BUILDKITD_BIN: the buildkitd rows are skipped");
    else if (want("buildkitd")) {
      await onBuildKitd(async () => {
        currentScenario = "";
        await steprunnerStep(sample, "main", properties);
        currentScenario = "E1. warm, buildkitd";
        const warmTimes: number[] = [];
        for (let i = 0; i < RUNS; i++) warmTimes.push(await seconds(() => steprunnerStep(sample, "main", properties)));
        record({
          name: "E1. warm step, stack on buildkitd v0.24 (stock: dockerd, same bytes, as row 1)",
          steprunner: median(warmTimes),
          stock: stockFigures.warm ?? Number.NaN,
          unit: "s",
          target: "as on dockerd",
        });
        if (publicBig) {
          currentScenario = "";
          await steprunnerStep(publicBig, "main", properties);
          currentScenario = "E2. new commit, big repository, buildkitd";
          const commitTimes: number[] = [];
          for (let i = 0; i < RUNS; i++) {
            await oneLineCommit(publicBig);
            commitTimes.push(await seconds(() => steprunnerStep(publicBig!, "main", properties)));
          }
          record({
            name: "E2. new commit (one line), big public repository, stack on buildkitd v0.24 (stock: dockerd, as row A)",
            steprunner: median(commitTimes),
            stock: stockFigures.newCommitBig ?? Number.NaN,
            unit: "s",
            target: "≤ 0.3× (was 14.6× with the registry hand-off)",
          });
        }
        currentScenario = "";
        const concurrent = 20;
        const ours = await seconds(() => Promise.all(Array.from({ length: concurrent }, () => steprunnerStep(sample, "main", properties))));
        record({
          name: `E3. ${concurrent} steps at once, stack on buildkitd v0.24: steps per second (stock: dockerd, as row 4)`,
          steprunner: concurrent / ours,
          stock: stockFigures.concurrent ?? Number.NaN,
          unit: "steps/s",
          target: "as on dockerd (was 0.15×)",
        });
      });
    }

    if (want("rss") && Number(args["rss-gb"]) > 0) {
      await ensureBig();
      const rssSmall = await peakRss(() =>
        steprunnerStep(big, "main", properties)
          .then(() => newCommit(big))
          .then(() => steprunnerStep(big, "main", properties)),
      );
      const huge = join(work, "huge");
      await bigRepository(huge, 2000, Number(args["rss-gb"]) * 1024);
      const rssHuge = await peakRss(() => steprunnerStep(huge, "main", properties));
      for (const service of Object.keys(rssSmall)) rss.push({ service, small: rssSmall[service]!, huge: rssHuge[service]! });
    }
  } finally {
    steps.close();
    await rm(work, { recursive: true, force: true });
  }

  const machine = `${cpus().length} × ${cpus()[0]?.model ?? "cpu"}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, ${process.version}, ${new Date().toISOString().slice(0, 10)}`;
  const lines = [
    `Machine: ${machine}. Medians of ${RUNS} interleaved runs.`,
    "",
    ...publicRepositories.map((line) => `- public repository ${line}`),
    "",
    "| measure | steprunner | stock pipeline | ratio | stock, same bytes (ratio) | target |",
    "|---|---|---|---|---|---|",
    ...rows.map(formatRow),
    "",
    "Where steprunner's time goes: the median of each phase, in seconds (the step-service's own records).",
    "",
    "| scenario | queue | context | build | pull | run | teardown |",
    "|---|---|---|---|---|---|---|",
    ...[...phaseTimes]
      .filter(([scenario]) => scenario)
      .map(
        ([scenario, byPhase]) =>
          `| ${scenario} | ${["queue", "context", "build", "pull", "run", "teardown"].map((phase) => (byPhase.get(phase) ? median(byPhase.get(phase)!).toFixed(3) : "–")).join(" | ")} |`,
      ),
    "",
    "The warm path (issue 16): each figure against a bound measured in the same run, interleaved (docs/benchmarks.md says what each row means).",
    "",
    "| measure | steprunner | bound | difference or ratio | target | |",
    "|---|---|---|---|---|---|",
    ...floorRowsMeasured.map(formatFloorRow),
    "",
    "Where the warm path's milliseconds go (medians; each phase, then its parts as the step-service measures them):",
    "",
    "| scenario | phases (parts) in ms |",
    "|---|---|",
    ...breakdownLines(),
    "",
    ...cpuLines(),
    "",
    "D. Peak RSS of each service during the new-commit steps of the public repositories (target: within 20%):",
    "",
    "| service | small repository | big repository | ratio |",
    "|---|---|---|---|",
    ...publicRss.map(
      (row) => `| ${row.service} | ${(row.small / 1e6).toFixed(0)} MB | ${(row.big / 1e6).toFixed(0)} MB | ${(row.big / row.small).toFixed(2)}× |`,
    ),
    "",
    `5. Peak RSS of each service during a step (target: flat within 20%):`,
    "",
    `| service | ${args["big-mb"]} MB repository | ${args["rss-gb"]} GB repository | ratio |`,
    "|---|---|---|---|",
    ...rss.map((row) => `| ${row.service} | ${(row.small / 1e6).toFixed(0)} MB | ${(row.huge / 1e6).toFixed(0)} MB | ${(row.huge / row.small).toFixed(2)}× |`),
  ];
  console.log(lines.join("\n"));
  await writeFile(args.out ?? join(ROOT, "bench-results.md"), `${lines.join("\n")}\n`);
}

/**
 * F6's CPU per step, by process (medians over its runs): what each step costs the 2 cores beyond the action in
 * bare runc, whose runc and container are this process's children.
 */
function cpuLines(): string[] {
  if (cpuOfSteps.length === 0) return [];
  const of = (runs: Record<string, number>[], name: string) => median(runs.map((run) => run[name] ?? 0));
  const containers = of(cpuOfSteps, "step-service children");
  const parts = [
    ["runc and the container (the step-service's children)", containers],
    ["step-service", of(cpuOfSteps, "step-service")],
    ["context-service", of(cpuOfSteps, "context-service")],
    ["image-service", of(cpuOfSteps, "image-service")],
    ["the benchmark's gRPC client", of(cpuOfSteps, "bench")],
  ] as const;
  const bare = of(cpuOfBound, "bench children");
  const total = parts.reduce((sum, [, ms]) => sum + ms, 0);
  return [
    "F6's CPU per step (medians over its runs, from /proc: user + system ms). The bound's container, bare runc, is the",
    "yardstick: everything above it is what a step costs besides its action.",
    "",
    "| process | steprunner, ms a step | bare runc, ms a step |",
    "|---|---|---|",
    ...parts.map(([name, ms]) => `| ${name} | ${ms.toFixed(1)} | ${name.startsWith("runc") ? bare.toFixed(1) : "–"} |`),
    `| total | ${total.toFixed(1)} | ${bare.toFixed(1)} (${(bare / total).toFixed(2)}× of ours) |`,
  ];
}

await main();

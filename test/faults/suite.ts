import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { Socket } from "node:net";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { ConnectError } from "@connectrpc/connect";
import { Phase, type RunStepRequestSchema, type RunStepResponse, type Step, StepState } from "../../gen/steprunner/step/v1/step_service_pb.js";
import { BRANCHES, FaultFixture } from "./fixture.js";
import { checkRecords, findLeaks, FINAL_STATES, mountsUnder } from "./leaks.js";
import { type FaultStack, waitUntil } from "./stack.js";

const exec = promisify(execFile);
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export const FAULT_KINDS = [
  "cancel mid-context",
  "cancel mid-build",
  "cancel mid-run",
  "timeout in context",
  "timeout in build",
  "timeout in run",
  "SIGKILL context-service",
  "SIGKILL image-service",
  "SIGKILL step-service",
  "BuildKit daemon restarted mid-build",
  "registry stopped mid-push",
  "registry stopped mid-pull",
  "disk full",
  "client disconnects mid-stream",
  "20 concurrent steps with random cancels",
] as const;
/** The kinds that hurt BuildKit or a build in it: what CI runs again on the stack's other BuildKit. */
export const BUILDKIT_FAULT_KINDS: readonly FaultKind[] = [
  "cancel mid-build",
  "timeout in build",
  "SIGKILL image-service",
  "BuildKit daemon restarted mid-build",
  "registry stopped mid-push",
  "client disconnects mid-stream",
];
type StepInit = MessageInitShape<typeof RunStepRequestSchema>;
export type FaultKind = (typeof FAULT_KINDS)[number];
/** Kinds that need the image-service to hand images over through the registry. */
const REGISTRY_KINDS: ReadonlySet<FaultKind> = new Set(["registry stopped mid-push", "registry stopped mid-pull"]);
const SLOW_KINDS: ReadonlySet<FaultKind> = new Set([...REGISTRY_KINDS, "BuildKit daemon restarted mid-build"]);

export interface KindResult {
  kind: FaultKind;
  injected: number;
  steps: number;
  leaks: string[];
  lost: string[];
  /** Records not final or half-written, and steps whose final state is not the one the fault must give. */
  bad: string[];
  seconds: number;
}

/** A RunStep call in flight, its events collected. */
class StepCall {
  readonly events: RunStepResponse[] = [];
  readonly controller = new AbortController();
  readonly done: Promise<Step | undefined>;
  error: ConnectError | undefined;
  private waiters: (() => void)[] = [];

  constructor(
    readonly id: string,
    stack: FaultStack,
    request: StepInit,
  ) {
    this.done = (async () => {
      try {
        for await (const event of stack.steps.runStep({ ...request, stepId: id }, { signal: this.controller.signal })) {
          this.events.push(event);
          this.wake();
          if (event.event.case === "finished") return event.event.value.step;
        }
      } catch (error) {
        this.error = ConnectError.from(error);
      } finally {
        this.wake();
      }
      return undefined;
    })();
  }

  get accepted(): boolean {
    return this.events.some((event) => event.event.case === "accepted");
  }

  reachedPhase(phase: Phase): boolean {
    return this.events.some((event) => event.event.case === "phaseChanged" && event.event.value.phase === phase);
  }

  logged(text: string): boolean {
    return this.events.some((event) => event.event.case === "logLine" && event.event.value.text.includes(text));
  }

  /** Waits for an event the predicate accepts; fails when the call ends first or the time runs out. */
  async until(what: string, predicate: () => boolean | Promise<boolean>, timeoutMs = 60_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      if (await predicate()) return;
      if (this.events.some((event) => event.event.case === "finished") || this.error) {
        throw new Error(`step ${this.id} ended before ${what}: ${this.error?.message ?? this.finishedReason()}`);
      }
      if (Date.now() > end) throw new Error(`step ${this.id}: no ${what} within ${timeoutMs} ms`);
      await Promise.race([new Promise<void>((resolve) => this.waiters.push(resolve)), sleep(50)]);
    }
  }

  private finishedReason(): string {
    const finished = this.events.find((event) => event.event.case === "finished");
    return finished?.event.case === "finished" ? `${StepState[finished.event.value.step!.state]}: ${finished.event.value.step!.reason}` : "";
  }

  private wake(): void {
    for (const waiter of this.waiters.splice(0)) waiter();
  }
}

/** An HTTP server that takes git's requests and never answers them: a context that stays mid-fetch. */
class StallingGitServer {
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();

  constructor() {
    this.server = createServer(() => undefined);
    this.server.on("connection", (socket) => {
      this.sockets.add(socket);
      socket.once("close", () => this.sockets.delete(socket));
    });
  }

  async listen(): Promise<void> {
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
  }

  /** A repository URL nobody else uses, so that every step starts a fetch of its own. */
  url(): string {
    const address = this.server.address() as { port: number };
    return `http://127.0.0.1:${address.port}/stall-${randomBytes(4).toString("hex")}.git`;
  }

  get connections(): number {
    return this.sockets.size;
  }

  /** Ends every stalled request, as a server that gives up would. */
  release(): void {
    for (const socket of this.sockets) socket.destroy();
  }

  async close(): Promise<void> {
    this.release();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

export interface SuiteOptions {
  perKind: number;
  /** Faults of the slow kinds (BuildKit daemon and registry restarts), when fewer than perKind. */
  slowPerKind?: number;
  kinds?: readonly FaultKind[];
  log?: (message: string) => void;
}

/**
 * Injects faults into a running stack through its public API and scripts, and after each one checks that
 * nothing of ours is left and that every record is whole and final.
 */
export class FaultSuite {
  private fixture = new FaultFixture("");
  private readonly stall = new StallingGitServer();
  private workDir = "";
  private baselineMounts = new Set<string>();
  private counter = 0;
  private readonly reportedLeaks = new Set<string>();
  private readonly log: (message: string) => void;

  constructor(
    private readonly stack: FaultStack,
    private readonly options: SuiteOptions,
  ) {
    this.log = options.log ?? (() => undefined);
  }

  async run(): Promise<KindResult[]> {
    this.workDir = await mkdtemp(join(tmpdir(), "steprunner-faults-"));
    this.fixture = new FaultFixture(join(this.workDir, "repo"));
    await this.fixture.create();
    await this.stall.listen();
    this.baselineMounts = await mountsUnder(this.stack.stateDir);
    const kinds = this.options.kinds ?? FAULT_KINDS;
    const results: KindResult[] = [];
    try {
      // The first steps build the main branch's image: not a fault, only a warm start.
      await this.expectFinal(this.call({ action: "quick" }), [StepState.SUCCESS], []);
      const ordinary = kinds.filter((kind) => !REGISTRY_KINDS.has(kind));
      const registry = kinds.filter((kind) => REGISTRY_KINDS.has(kind));
      for (const kind of ordinary) results.push(await this.runKind(kind));
      if (registry.length > 0) {
        await this.stack.restartService("image-service", { STEPRUNNER_IMAGE_HANDOFF: "registry" });
        try {
          for (const kind of registry) results.push(await this.runKind(kind));
        } finally {
          await this.stack.restartService("image-service", {});
        }
      }
    } finally {
      await this.stall.close();
      await rm(this.workDir, { recursive: true, force: true });
    }
    return results;
  }

  private async runKind(kind: FaultKind): Promise<KindResult> {
    const result: KindResult = { kind, injected: 0, steps: 0, leaks: [], lost: [], bad: [], seconds: 0 };
    const began = Date.now();
    let attempts = 0;
    const wanted = SLOW_KINDS.has(kind) ? (this.options.slowPerKind ?? this.options.perKind) : this.options.perKind;
    while (result.injected < wanted) {
      if (++attempts > wanted * 3) throw new Error(`${kind}: too many faults did not land (${result.injected} of ${attempts - 1})`);
      const ids: string[] = [];
      const problems: string[] = [];
      let landed = true;
      try {
        landed = await this.inject(kind, ids, problems);
      } catch (error) {
        problems.push(`${kind}: ${(error as Error).message}`);
      }
      await this.reviveExited(kind, problems);
      await this.settle(ids, problems);
      await this.reviveExited(kind, problems);
      // A leak that stays is reported once, by the fault that left it.
      const leaks = (await this.leaksAfterCleanUp()).filter((leak) => !this.reportedLeaks.has(leak));
      for (const leak of leaks) this.reportedLeaks.add(leak);
      const records = await checkRecords(this.stack, ids);
      result.steps += ids.length;
      result.leaks.push(...leaks.map((leak) => `${kind}: ${leak}`));
      result.lost.push(...records.lost.map((id) => `${kind}: ${id}`));
      result.bad.push(...records.bad.map((text) => `${kind}: ${text}`), ...problems);
      if (landed) result.injected++;
      this.log(
        `${kind} #${result.injected}${landed ? "" : " (did not land, again)"}: ${ids.length} steps, ${leaks.length} leaks, ${records.lost.length} lost, ${records.bad.length + problems.length} bad${leaks.length + records.bad.length + problems.length > 0 ? `\n  ${[...leaks, ...records.bad, ...problems].join("\n  ")}` : ""}`,
      );
    }
    result.seconds = (Date.now() - began) / 1000;
    return result;
  }

  /** A service that crashed is a finding of the fault; it is started again so that the suite can go on. */
  private async reviveExited(kind: FaultKind, problems: string[]): Promise<void> {
    const exited = await this.stack.exitedServices();
    if (exited.length === 0) return;
    problems.push(...exited.map(({ report }) => `${kind}: ${report}`));
    if (exited.some(({ service }) => service === "step-service")) this.stack.resetClients();
    await this.stack.startServices();
  }

  /** Polls for leaks for a while: a BuildKit job or a git process may take a moment to notice its cancel. */
  private async leaksAfterCleanUp(): Promise<string[]> {
    let leaks: string[] = [];
    const end = Date.now() + 20_000;
    do {
      leaks = await findLeaks(this.stack, this.baselineMounts);
      if (leaks.length === 0) return leaks;
      await sleep(500);
    } while (Date.now() < end);
    return leaks;
  }

  /** Waits until the step-service runs nothing and every step of the fault is final. */
  private async settle(ids: string[], problems: string[]): Promise<void> {
    try {
      await waitUntil(
        "the fault's steps to end",
        120_000,
        async () => {
          const info = await this.stack.steps.getRuntimeInfo({}).catch(() => undefined);
          if (!info || info.runningSteps > 0 || info.queuedSteps > 0) return false;
          for (const id of ids) {
            const step = await this.stack.steps.getStep({ stepId: id }).catch(() => undefined);
            if (step?.step && !FINAL_STATES.has(step.step.state)) return false;
          }
          return true;
        },
        250,
      );
    } catch (error) {
      problems.push((error as Error).message);
    }
  }

  private call(request: StepInit, ids?: string[]): StepCall {
    const id = `fault-${process.pid}-${++this.counter}-${randomBytes(3).toString("hex")}`;
    ids?.push(id);
    return new StepCall(id, this.stack, { repositoryUrl: this.fixture.dir, gitRev: BRANCHES.main, action: "quick", ...request });
  }

  /** Waits for the call's end and checks that its final state is one the fault allows. */
  private async expectFinal(call: StepCall, allowed: StepState[], problems: string[], reason?: RegExp): Promise<Step | undefined> {
    const end = Date.now() + 120_000;
    let step: Step | undefined;
    while (Date.now() < end) {
      step = (await this.stack.steps.getStep({ stepId: call.id }).catch(() => undefined))?.step;
      if (step && FINAL_STATES.has(step.state)) break;
      await sleep(200);
    }
    if (!step) {
      problems.push(`step ${call.id}: the service does not know it`);
    } else if (!allowed.includes(step.state)) {
      problems.push(`step ${call.id}: ${StepState[step.state]} (${step.reason}), expected ${allowed.map((state) => StepState[state]).join(" or ")}`);
    } else if (reason && !reason.test(step.reason)) {
      problems.push(`step ${call.id}: reason "${step.reason}" does not match ${reason}`);
    }
    return step;
  }

  /** A BuildKit RUN of ours is running in the BuildKit daemon. */
  private async buildRunning(): Promise<boolean> {
    const executor = this.stack.buildkitExecutor;
    for (const name of await readdir("/proc").catch(() => [] as string[])) {
      if (!/^\d+$/.test(name)) continue;
      const cmdline = await readFile(`/proc/${name}/cmdline`, "utf8").catch(() => "");
      if (cmdline.includes(executor) && cmdline.includes("\0run\0")) return true;
    }
    return false;
  }

  /** Injects one fault of a kind; false when it did not land (the step ended before the fault could hit). */
  private async inject(kind: FaultKind, ids: string[], problems: string[]): Promise<boolean> {
    const { stack } = this;
    switch (kind) {
      case "cancel mid-context": {
        const call = this.call({ repositoryUrl: this.stall.url() }, ids);
        await call.until("a stalled fetch", () => call.reachedPhase(Phase.CONTEXT) && this.stall.connections > 0);
        await stack.steps.cancelStep({ stepId: call.id });
        await this.expectFinal(call, [StepState.CANCELLED], problems);
        await this.fetchEnded(problems);
        return true;
      }
      case "cancel mid-build": {
        const call = this.call({ gitRev: BRANCHES.slowBuild }, ids);
        await call.until("the long RUN", () => this.buildRunning());
        await stack.steps.cancelStep({ stepId: call.id });
        await this.expectFinal(call, [StepState.CANCELLED], problems);
        return true;
      }
      case "cancel mid-run": {
        const call = this.call({ action: "sleep" }, ids);
        await call.until("the action's output", () => call.logged("sleeping"));
        await stack.steps.cancelStep({ stepId: call.id });
        await this.expectFinal(call, [StepState.CANCELLED], problems);
        return true;
      }
      case "timeout in context": {
        const call = this.call({ repositoryUrl: this.stall.url(), timeout: { seconds: 2n, nanos: 0 } }, ids);
        const step = await this.expectFinal(call, [StepState.TIMED_OUT], problems);
        await this.fetchEnded(problems);
        return !!step && step.phases.every((phase) => phase.phase !== Phase.BUILD);
      }
      case "timeout in build": {
        const call = this.call({ gitRev: BRANCHES.slowBuild, timeout: { seconds: 8n, nanos: 0 } }, ids);
        const step = await this.expectFinal(call, [StepState.TIMED_OUT], problems);
        return !!step && call.reachedPhase(Phase.BUILD) && !call.reachedPhase(Phase.PULL);
      }
      case "timeout in run": {
        const call = this.call({ action: "sleep", timeout: { seconds: 4n, nanos: 0 } }, ids);
        await this.expectFinal(call, [StepState.TIMED_OUT], problems);
        return call.logged("sleeping");
      }
      case "SIGKILL context-service": {
        const call = this.call({ repositoryUrl: this.stall.url() }, ids);
        await call.until("a stalled fetch", () => call.reachedPhase(Phase.CONTEXT) && this.stall.connections > 0);
        await stack.kill("context-service");
        await this.expectFinal(call, [StepState.SYSTEM_ERROR], problems);
        await stack.startServices();
        await this.fetchEnded(problems);
        return true;
      }
      case "SIGKILL image-service": {
        const call = this.call({ gitRev: BRANCHES.slowBuild }, ids);
        await call.until("the long RUN", () => this.buildRunning());
        await stack.kill("image-service");
        await this.expectFinal(call, [StepState.SYSTEM_ERROR], problems);
        await stack.startServices();
        return true;
      }
      case "SIGKILL step-service": {
        const call = this.call({ action: "sleep" }, ids);
        await call.until("the action's output", () => call.logged("sleeping"));
        await stack.kill("step-service");
        await stack.startServices();
        await this.expectFinal(call, [StepState.SYSTEM_ERROR], problems, /step-service stopped/);
        return true;
      }
      case "BuildKit daemon restarted mid-build": {
        await this.fixture.newCommit(BRANCHES.shortBuild);
        const call = this.call({ gitRev: BRANCHES.shortBuild }, ids);
        await call.until("the RUN", () => this.buildRunning());
        await stack.restartBuildKit();
        // The image-service may retry the build on the restarted daemon (a BuildKit transport failure).
        await this.expectFinal(call, [StepState.SYSTEM_ERROR, StepState.SUCCESS], problems);
        return true;
      }
      case "registry stopped mid-push": {
        await this.fixture.newCommit(BRANCHES.bigLayer);
        const call = this.call({ gitRev: BRANCHES.bigLayer }, ids);
        await call.until("an upload to the registry", () => this.uploading());
        const landed = !call.reachedPhase(Phase.PULL);
        await stack.script("registry.sh", ["stop"]);
        await sleep(1000);
        await stack.script("registry.sh", ["start"]);
        // dockerd retries a push; with the registry back in time it may finish, and the step with it.
        await this.expectFinal(call, [StepState.SYSTEM_ERROR, StepState.SUCCESS], problems);
        return landed;
      }
      case "registry stopped mid-pull": {
        await this.fixture.newCommit(BRANCHES.bigLayer);
        const call = this.call({ gitRev: BRANCHES.bigLayer }, ids);
        await call.until("the pull", () => call.reachedPhase(Phase.PULL));
        await stack.script("registry.sh", ["stop"]);
        const stoppedAt = Date.now();
        const step = await this.expectFinal(call, [StepState.SYSTEM_ERROR, StepState.SUCCESS], problems);
        await stack.script("registry.sh", ["start"]);
        const pull = step?.phases.find((phase) => phase.phase === Phase.PULL);
        const pullEnded = pull
          ? Number(pull.startedAt!.seconds) * 1000 + pull.startedAt!.nanos / 1e6 + Number(pull.duration!.seconds) * 1000 + pull.duration!.nanos / 1e6
          : Infinity;
        return step?.state === StepState.SYSTEM_ERROR || pullEnded > stoppedAt;
      }
      case "disk full": {
        const targets = [join(stack.stepStateDir, "work"), join(stack.stepStateDir, "contexts")];
        const target = targets[this.counter % targets.length]!;
        await exec("mount", ["-t", "tmpfs", "-o", "size=256k,mode=0700", "steprunner-faults-full", target]);
        try {
          await writeFile(join(target, "filler"), Buffer.alloc(1024 * 1024)).catch((error: NodeJS.ErrnoException) => {
            if (error.code !== "ENOSPC") throw error;
          });
          const call = this.call({ action: "quick" }, ids);
          await this.expectFinal(call, [StepState.SYSTEM_ERROR], problems, /disk is full: free space under \//);
        } finally {
          await exec("umount", [target]);
        }
        return true;
      }
      case "client disconnects mid-stream": {
        const midBuild = this.counter % 2 === 0;
        const call = this.call(midBuild ? { gitRev: BRANCHES.slowBuild } : { action: "sleep" }, ids);
        if (midBuild) await call.until("the long RUN", () => this.buildRunning());
        else await call.until("the action's output", () => call.logged("sleeping"));
        call.controller.abort();
        await this.expectFinal(call, [StepState.CANCELLED], problems, /went away/);
        return true;
      }
      case "20 concurrent steps with random cancels": {
        const calls = Array.from({ length: 20 }, () => this.call({ action: "quick" }, ids));
        const cancelled = new Set<string>();
        await Promise.all(
          calls.map(async (call) => {
            if (Math.random() < 0.4) {
              await sleep(Math.random() * 2000);
              cancelled.add(call.id);
              await stack.steps.cancelStep({ stepId: call.id }).catch(() => undefined);
            }
          }),
        );
        for (const call of calls) {
          await this.expectFinal(call, cancelled.has(call.id) ? [StepState.CANCELLED, StepState.SUCCESS] : [StepState.SUCCESS], problems);
        }
        return true;
      }
    }
  }

  /** The git fetch of a stalled context has ended (its connection closed); then the stalled server lets go. */
  private async fetchEnded(problems: string[]): Promise<void> {
    await waitUntil("the stalled git fetch to end", 10_000, async () => this.stall.connections === 0).catch(() =>
      problems.push(`a git fetch still holds ${this.stall.connections} connection(s) to the stalled server 10 s after its step ended`),
    );
    this.stall.release();
  }

  /** An upload to the registry is in progress (distribution keeps it under _uploads until it is committed). */
  private async uploading(): Promise<boolean> {
    const repositories = join(this.stack.stateDir, "registry", "docker", "registry", "v2", "repositories");
    const stack = [repositories];
    while (stack.length > 0) {
      const dir = stack.pop()!;
      for (const entry of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
        if (!entry.isDirectory()) continue;
        if (entry.name === "_uploads") {
          if ((await readdir(join(dir, entry.name)).catch(() => [])).length > 0) return true;
        } else if (!entry.name.startsWith("_")) stack.push(join(dir, entry.name));
      }
    }
    return false;
  }
}

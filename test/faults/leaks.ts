import { execFile } from "node:child_process";
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import Database from "better-sqlite3";
import { ConnectError } from "@connectrpc/connect";
import { type Step, StepState } from "../../gen/steprunner/step/v1/step_service_pb.js";
import { instanceTagOf } from "../../services/step-service/runtime/container.js";
import type { FaultStack } from "./stack.js";

const exec = promisify(execFile);
const CGROUP_ROOT = "/sys/fs/cgroup";
export const FINAL_STATES: ReadonlySet<StepState> = new Set([
  StepState.SUCCESS,
  StepState.ERROR,
  StepState.TIMED_OUT,
  StepState.CANCELLED,
  StepState.SYSTEM_ERROR,
]);

/**
 * Everything of ours a step may leave behind, as it looks when no step runs: step containers (runc state,
 * processes, bundle/upper/work directories, overlay mounts, cgroups), BuildKit jobs (in dockerd or buildkitd), and the
 * services' temporary and half-written files. Returns one line per leak; empty when clean.
 * `baselineMounts` are the mounts under the state directory that were there before the faults (the BuildKit daemon's own).
 */
export async function findLeaks(stack: FaultStack, baselineMounts: ReadonlySet<string>): Promise<string[]> {
  const leaks: string[] = [];
  const tag = instanceTagOf(stack.stepStateDir);
  const prefix = `steprunner-${tag}-`;

  const listed = await exec("runc", ["--root", stack.runcRoot, "list", "-q"]).catch(() => ({ stdout: "" }));
  for (const id of listed.stdout.split("\n").filter(Boolean)) leaks.push(`runc container ${id} in ${stack.runcRoot}`);
  for (const name of await entries(stack.runcRoot)) if (!listed.stdout.includes(name)) leaks.push(`runc state ${join(stack.runcRoot, name)}`);
  for (const dir of ["work", "contexts", "layers/tmp"]) {
    for (const name of await entries(join(stack.stepStateDir, dir))) leaks.push(`step-service directory ${join(stack.stepStateDir, dir, name)}`);
  }

  for (const line of (await readFile("/proc/mounts", "utf8")).split("\n")) {
    const [, target, type] = line.split(" ");
    if (!target || !type) continue;
    const path = target.replace(/\\040/g, " ");
    if ((path === stack.stateDir || path.startsWith(`${stack.stateDir}/`)) && !baselineMounts.has(path)) leaks.push(`${type} mount ${path}`);
  }

  for (const controller of await entries(CGROUP_ROOT)) {
    for (const name of await entries(join(CGROUP_ROOT, controller))) {
      if (name.startsWith(prefix)) leaks.push(`cgroup ${join(CGROUP_ROOT, controller, name)}`);
    }
  }

  const executor = stack.buildkitExecutor;
  for (const name of await entries(executor)) {
    if (name !== "resolv.conf" && name !== "runc-log.json" && name !== "hosts") leaks.push(`BuildKit job bundle ${join(executor, name)}`);
  }
  const daemons = new Set(await stack.daemonPids());
  for (const pid of (await entries("/proc")).filter((name) => /^\d+$/.test(name)).map(Number)) {
    if (pid === process.pid) continue;
    const cmdline = (await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "")).split("\0").join(" ").trim();
    if (!cmdline) continue;
    if (cmdline.includes(executor)) leaks.push(`BuildKit job process ${pid}: ${cmdline.slice(0, 160)}`);
    else if (cmdline.includes(prefix)) leaks.push(`step container process ${pid}: ${cmdline.slice(0, 160)}`);
    else if (cmdline.includes(`${stack.stateDir}/`) && !daemons.has(pid) && !(await descendsFrom(pid, daemons))) {
      leaks.push(`process ${pid} outside the stack's daemons: ${cmdline.slice(0, 160)}`);
    }
  }

  for (const path of await walk(stack.contextStateDir, 3)) {
    if (/\.partial/.test(path) || path.startsWith(`${join(stack.contextStateDir, "cache", "tmp")}/`)) leaks.push(`context-service temporary ${path}`);
  }
  for (const path of await walk(stack.imageStateDir, 3)) if (/\.tmp$/.test(path)) leaks.push(`image-service temporary ${path}`);
  for (const name of await entries(join(stack.stepStateDir, "logs"))) {
    if (!name.endsWith(".log")) leaks.push(`step-service temporary ${join(stack.stepStateDir, "logs", name)}`);
  }
  return leaks;
}

/** The mounts under the state directory now (the BuildKit daemon's own, before any fault). */
export async function mountsUnder(stateDir: string): Promise<Set<string>> {
  const mounts = new Set<string>();
  for (const line of (await readFile("/proc/mounts", "utf8")).split("\n")) {
    const target = line.split(" ")[1]?.replace(/\\040/g, " ");
    if (target && (target === stateDir || target.startsWith(`${stateDir}/`))) mounts.add(target);
  }
  return mounts;
}

export interface RecordCheck {
  /** Steps the suite started that the service does not know. */
  lost: string[];
  /** Records that are not final, half-written, or whose log does not end with their final line. */
  bad: string[];
}

/**
 * Every step record is in a final state and whole: the suite's steps all exist, each record's log holds
 * exactly its log_lines lines and ends with the final state's line, and the database passes integrity_check.
 */
export async function checkRecords(stack: FaultStack, expectedIds: Iterable<string>): Promise<RecordCheck> {
  const lost: string[] = [];
  const bad: string[] = [];
  const known = new Map<string, Step>();
  let pageToken = "";
  do {
    const page = await stack.steps.listSteps({ pageSize: 1000, pageToken });
    for (const step of page.steps) known.set(step.id, step);
    pageToken = page.nextPageToken;
  } while (pageToken);
  for (const step of known.values()) if (!FINAL_STATES.has(step.state)) bad.push(`step ${step.id} is ${StepState[step.state]} (${step.reason})`);
  for (const id of expectedIds) {
    const step = known.get(id);
    if (!step) {
      lost.push(id);
      continue;
    }
    if (!FINAL_STATES.has(step.state)) continue;
    const lines: string[] = [];
    try {
      for await (const { line } of stack.steps.followLogs({ stepId: id, fromOffset: 0n, follow: false })) lines.push(line?.text ?? "");
    } catch (error) {
      bad.push(`step ${id}: its log cannot be read: ${ConnectError.from(error).message}`);
      continue;
    }
    if (BigInt(lines.length) !== step.logLines) bad.push(`step ${id}: ${lines.length} log lines, its record says ${step.logLines}`);
    const finalLine = `[steprunner] ${StepState[step.state]!.toLowerCase()}: `;
    if (!lines[lines.length - 1]?.startsWith(finalLine)) bad.push(`step ${id}: its log ends with "${lines[lines.length - 1]}", not its final state`);
    if (!step.finishedAt) bad.push(`step ${id}: final without finished_at`);
  }
  const db = new Database(join(stack.stepStateDir, "steps.db"), { readonly: true, fileMustExist: true });
  try {
    const result = db.pragma("integrity_check", { simple: true });
    if (result !== "ok") bad.push(`steps.db integrity_check: ${String(result)}`);
  } finally {
    db.close();
  }
  return { lost, bad };
}

async function entries(dir: string): Promise<string[]> {
  return readdir(dir).catch(() => []);
}

async function walk(dir: string, depth: number): Promise<string[]> {
  const found: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const path = join(dir, entry.name);
    found.push(path);
    if (entry.isDirectory() && depth > 1 && !entry.name.endsWith(".git")) found.push(...(await walk(path, depth - 1)));
  }
  return found;
}

async function descendsFrom(pid: number, ancestors: ReadonlySet<number>): Promise<boolean> {
  let current = pid;
  for (let hops = 0; hops < 32 && current > 1; hops++) {
    const text = await readFile(`/proc/${current}/stat`, "utf8").catch(() => "");
    const parent = Number(text.slice(text.lastIndexOf(")") + 2).split(" ")[1]);
    if (!parent) return false;
    if (ancestors.has(parent)) return true;
    current = parent;
  }
  return false;
}

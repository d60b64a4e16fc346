import { join } from "node:path";
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

/** The repository root (tests run from dist/test/…). */
export const ROOT = fileURLToPath(new URL("../../../", import.meta.url));
/** The CLI as the build ships it (bundled; the quick start links it as `steprunner`). */
export const CLI = join(ROOT, "dist/services/cli-bundle/steprunner.cjs");

const env = (name: string, fallback: string) => process.env[name] || fallback;

/** The local stack's settings, with the same defaults as deploy/local/env.sh. */
export const stack = {
  /** Which BuildKit the stack runs: the one inside dockerd, or a standalone buildkitd (STEPRUNNER_BUILDKIT). */
  buildkit: env("STEPRUNNER_BUILDKIT", "dockerd") as "dockerd" | "buildkitd",
  stateDir: env("STEPRUNNER_STATE_DIR", "/var/lib/steprunner"),
  registry: env("STEPRUNNER_REGISTRY_ADDR", "127.0.0.1:5000"),
  contextAddr: env("STEPRUNNER_CONTEXT_ADDR", "127.0.0.1:7701"),
  imageAddr: env("STEPRUNNER_IMAGE_ADDR", "127.0.0.1:7702"),
  stepAddr: env("STEPRUNNER_STEP_ADDR", "127.0.0.1:7703"),
  get runDir() {
    return env("STEPRUNNER_RUN_DIR", `${this.stateDir}/run`);
  },
  get buildkitAddr() {
    return env("STEPRUNNER_BUILDKIT_ADDR", this.buildkit === "buildkitd" ? `unix://${this.runDir}/buildkitd.sock` : `docker-unix://${this.runDir}/docker.sock`);
  },
  get baseRunner() {
    return env("OPSCHAIN_BASE_RUNNER", `${this.registry}/steprunner/runner:${packageVersion()}`);
  },
};

function packageVersion(): string {
  return JSON.parse(readFileSync(`${ROOT}/package.json`, "utf8")).version;
}

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command to its end; never throws for a non-zero exit. */
export async function run(file: string, args: string[], options: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<Run> {
  try {
    const { stdout, stderr } = await promisify(execFile)(file, args, {
      cwd: options.cwd ?? ROOT,
      env: { ...process.env, ...options.env },
      timeout: options.timeoutMs ?? 120_000,
      maxBuffer: 64 * 1024 * 1024,
    });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const failure = error as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof failure.code === "number" ? failure.code : -1, stdout: failure.stdout ?? "", stderr: failure.stderr ?? String(error) };
  }
}

/** The skip option of a test that needs dockerd itself (its image store or Docker API), on a stack without it. */
export function needsDockerd(why: string): { skip: string | false } {
  return { skip: stack.buildkit === "dockerd" ? false : `needs dockerd (${why}); this stack runs a standalone buildkitd` };
}

/**
 * The skip option of a test that does not depend on the stack's BuildKit (it uses none, or starts a daemon of its
 * own): CI runs the integration suite once per BuildKit, and such a test only in the first, dockerd's, pass.
 */
export function samePassOnEither(why: string, otherSkip?: string): { skip: string | false } {
  if (otherSkip) return { skip: otherSkip };
  return { skip: stack.buildkit === "dockerd" ? false : `the same whichever BuildKit the stack runs (${why}): run in the dockerd pass` };
}

let baseRunnerPulled: Promise<void> | undefined;

/**
 * The base runner in the stack's dockerd image store, for the tests that tag or inspect it there. The stack puts
 * base images in the registry only (deploy/local/debian-image.sh), and dockerd's BuildKit keeps what it pulls for
 * builds out of the image store, so on a new machine dockerd has no base runner until it is pulled.
 */
export function baseRunnerInDockerd(): Promise<void> {
  baseRunnerPulled ??= run("/usr/bin/docker", ["--host", `unix://${stack.runDir}/docker.sock`, "pull", "--quiet", stack.baseRunner], {
    timeoutMs: 300_000,
  }).then((result) => {
    if (result.code !== 0) throw new Error(`docker pull ${stack.baseRunner} into the stack's dockerd failed: ${result.stderr}`);
  });
  return baseRunnerPulled;
}

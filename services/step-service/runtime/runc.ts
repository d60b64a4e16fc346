import { execFile } from "node:child_process";
import { access } from "node:fs/promises";
import { promisify } from "node:util";

const run = promisify(execFile);

export interface RuncInfo {
  /** e.g. "runc version 1.1.5+ds1" */
  version: string;
  /** The OCI runtime spec version runc implements, e.g. "1.0.2-dev". */
  specVersion: string;
}

/** Asks the runc binary for its version. */
export async function runcInfo(runcPath: string, signal?: AbortSignal): Promise<RuncInfo> {
  const { stdout } = await run(runcPath, ["--version"], { signal, timeout: 10_000 });
  const lines = stdout.split("\n");
  return {
    version: lines[0]?.trim() ?? "",
    specVersion: /^spec: (.*)$/m.exec(stdout)?.[1]?.trim() ?? "",
  };
}

/** 2 on a unified cgroup hierarchy, 1 otherwise. */
export async function cgroupVersion(): Promise<1 | 2> {
  try {
    await access("/sys/fs/cgroup/cgroup.controllers");
    return 2;
  } catch {
    return 1;
  }
}

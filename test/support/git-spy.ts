import { existsSync } from "node:fs";
import { appendFile, chmod, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";

export interface GitSpy {
  /** How many times git has been run with this subcommand (e.g. "fetch") and an argument containing text. */
  count(subcommand: string, text: string): Promise<number>;
  /** How many times git has been run at all. */
  total(): Promise<number>;
  /** Takes the spy off PATH and removes it. */
  remove(): Promise<void>;
}

/**
 * Puts a `git` first on PATH that notes its arguments and runs the real git: the services in this process
 * start git by name with this PATH, so the spy sees every git they run (and every git the test runs).
 */
export async function spyOnGit(): Promise<GitSpy> {
  const realGit = (process.env.PATH ?? "")
    .split(delimiter)
    .map((dir) => join(dir, "git"))
    .find((path) => existsSync(path));
  if (!realGit) throw new Error("git is not on PATH");
  const dir = await mkdtemp(join(tmpdir(), "git-spy-"));
  const log = join(dir, "calls.log");
  await appendFile(log, "");
  const quote = (text: string) => `'${text.replace(/'/g, `'\\''`)}'`;
  await writeFile(join(dir, "git"), `#!/bin/sh\nprintf '%s\\n' "$*" >> ${quote(log)}\nexec ${quote(realGit)} "$@"\n`);
  await chmod(join(dir, "git"), 0o755);
  const originalPath = process.env.PATH;
  process.env.PATH = `${dir}${delimiter}${originalPath ?? ""}`;
  return {
    count: async (subcommand, text) =>
      (await readFile(log, "utf8")).split("\n").filter((line) => line.split(" ")[0] === subcommand && line.includes(text)).length,
    total: async () => (await readFile(log, "utf8")).split("\n").filter(Boolean).length,
    remove: async () => {
      process.env.PATH = originalPath;
      await rm(dir, { recursive: true, force: true });
    },
  };
}

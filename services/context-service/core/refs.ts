import { readFile, stat } from "node:fs/promises";
import { join } from "node:path";

const SHA = /^[0-9a-f]{40}$/;
/** The refs read here: branches, HEAD, and the mirror's copy of the remote's HEAD. Tags may need peeling: git's. */
const READABLE = /^(HEAD|refs\/heads\/[A-Za-z0-9._/-]+|refs\/steprunner\/HEAD)$/;

/**
 * Where a branch (or HEAD) of a repository on this machine points, read from git's files (the loose ref, else
 * packed-refs) without starting git: a warm step's look at its ref costs a file read instead of a process.
 * Undefined whenever the files do not say it plainly (a worktree's .git file, the reftable format, a symbolic
 * ref other than HEAD, a ref that is in neither place or is being repacked): the caller then asks git, which
 * stays the authority. The commit itself is not checked: git keeps branches on commits.
 */
export async function readRef(gitDir: string, ref: string, depth = 0): Promise<string | undefined> {
  if (!READABLE.test(ref) || ref.split("/").some((part) => part === "" || part === "." || part === "..") || depth > 1) return undefined;
  const [worktree, reftable, looseText] = await Promise.all([
    exists(join(gitDir, "commondir")),
    exists(join(gitDir, "reftable")),
    readFile(join(gitDir, ref), "utf8").catch(() => undefined),
  ]);
  if (worktree || reftable) return undefined;
  const loose = looseText?.trim();
  if (loose !== undefined) {
    if (SHA.test(loose)) return loose;
    const target = /^ref: (refs\/heads\/[^\s]+)$/.exec(loose)?.[1];
    return ref === "HEAD" && target ? readRef(gitDir, target, depth + 1) : undefined;
  }
  if (ref === "HEAD") return undefined;
  return packedRef(gitDir, ref);
}

/** Whether a ref exists as a loose file or in packed-refs (for telling a branch from a tag of the same name). */
export async function refExists(gitDir: string, ref: string): Promise<boolean> {
  if (await exists(join(gitDir, ref))) return true;
  const packed = await readFile(join(gitDir, "packed-refs"), "utf8").catch(() => "");
  return packed.split("\n").some((line) => line.slice(41) === ref && SHA.test(line.slice(0, 40)));
}

async function packedRef(gitDir: string, ref: string): Promise<string | undefined> {
  const packed = await readFile(join(gitDir, "packed-refs"), "utf8").catch(() => "");
  for (const line of packed.split("\n")) {
    if (line.slice(41) === ref && line[40] === " " && SHA.test(line.slice(0, 40))) return line.slice(0, 40);
  }
  return undefined;
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

import { statSync } from "node:fs";
import { join } from "node:path";
import { readSmallFile } from "../../shared/files/small-files.js";

const SHA = /^[0-9a-f]{40}$/;
/** The refs read here: branches, HEAD, and the mirror's copy of the remote's HEAD. Tags may need peeling: git's. */
const READABLE = /^(HEAD|refs\/heads\/[A-Za-z0-9._/-]+|refs\/steprunner\/HEAD)$/;

/**
 * Where a branch (or HEAD) of a repository on this machine points, read from git's files (the loose ref, else
 * packed-refs) without starting git: a warm step's look at its ref costs a file read instead of a process.
 * Undefined whenever the files do not say it plainly (a worktree's .git file, the reftable format, a symbolic
 * ref other than HEAD, a ref that is in neither place or is being repacked): the caller then asks git, which
 * stays the authority. The commit itself is not checked: git keeps branches on commits.
 * The reads are synchronous (readSmallFile says why).
 */
export function readRef(gitDir: string, ref: string, depth = 0): string | undefined {
  if (!READABLE.test(ref) || ref.split("/").some((part) => part === "" || part === "." || part === "..") || depth > 1) return undefined;
  if (exists(join(gitDir, "commondir")) || exists(join(gitDir, "reftable"))) return undefined;
  const looseText = readSmallFile(join(gitDir, ref));
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
export function refExists(gitDir: string, ref: string): boolean {
  if (exists(join(gitDir, ref))) return true;
  const packed = readSmallFile(join(gitDir, "packed-refs")) ?? "";
  return packed.split("\n").some((line) => line.slice(41) === ref && SHA.test(line.slice(0, 40)));
}

function packedRef(gitDir: string, ref: string): string | undefined {
  const packed = readSmallFile(join(gitDir, "packed-refs")) ?? "";
  for (const line of packed.split("\n")) {
    if (line.slice(41) === ref && line[40] === " " && SHA.test(line.slice(0, 40))) return line.slice(0, 40);
  }
  return undefined;
}

function exists(path: string): boolean {
  return statSync(path, { throwIfNoEntry: false }) !== undefined;
}

/** Whether a path is a directory (git's directories, a mirror). */
export function isDirectory(path: string): boolean {
  return statSync(path, { throwIfNoEntry: false })?.isDirectory() ?? false;
}

import { posix } from "node:path";
import { failedPrecondition, invalidField } from "./errors.js";
import { dockerfileInstructions } from "../../shared/dockerfile-instructions.js";

export const DEFAULT_REPO_FOLDER = ".mintpress";
const MAX_SYMLINK_HOPS = 8;

/** Checks OPSCHAIN_REPO_FOLDER: a relative path inside the repository, e.g. ".mintpress" or "ops/.opschain". */
export function checkRepoFolder(folder: string): string {
  const allowed = 'must be a relative folder inside the repository, e.g. ".mintpress"';
  const trimmed = folder.replace(/\/+$/, "");
  if (trimmed === "") throw invalidField("repo_folder", allowed, folder);
  if (trimmed.length > 255) throw invalidField("repo_folder", "must be at most 255 characters", folder);
  if (trimmed.startsWith("/")) throw invalidField("repo_folder", `${allowed}, not an absolute path`, folder);
  const parts = trimmed.split("/");
  if (parts.some((part) => part === ".." || part === "." || part === "" || part === ".git")) {
    throw invalidField("repo_folder", `${allowed}, without '..', '.', '//' or '.git' (which would leave the repository or name .git)`, folder);
  }
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what it refuses
  if (/[\u0000-\u001f\\]/.test(trimmed)) throw invalidField("repo_folder", `${allowed}, without control characters or '\\'`, folder);
  return trimmed;
}

/** The repo folders both brands use: OpsChain's and MintPress's. */
export const KNOWN_REPO_FOLDERS = [".opschain", ".mintpress"] as const;

/**
 * The repo folder a commit uses: the configured one when the commit has it; otherwise the other of .opschain
 * and .mintpress when the commit has that one as a directory (with a warning saying so), so that a repository
 * written for either brand runs unchanged; otherwise the configured one (the default Dockerfile is used).
 */
export async function chooseRepoFolder(lookup: TreeLookup, configured: string, commit: string): Promise<{ folder: string; warning?: string }> {
  if (await lookup(configured)) return { folder: configured };
  for (const other of KNOWN_REPO_FOLDERS) {
    if (other === configured) continue;
    const entry = await lookup(other);
    if (entry?.kind !== "directory") continue;
    return {
      folder: other,
      warning:
        `the repo folder ${configured} (OPSCHAIN_REPO_FOLDER) is not in commit ${commit.slice(0, 12)}, but ${other} is: ${other} is used instead ` +
        `(${other}/Dockerfile when there is one, and the step context and step_result.json under /opt/opschain/${other}); ` +
        `set the repo folder to ${other} (repo_folder, --repo-folder or OPSCHAIN_REPO_FOLDER) to say so and silence this warning`,
    };
  }
  return { folder: configured };
}

/** One entry of a commit's tree, as the repository's Dockerfile lookup needs it. */
export interface TreeFile {
  /** "file", "executable", "symlink", "directory" or "submodule". */
  kind: "file" | "executable" | "symlink" | "directory" | "submodule";
  size: number;
  read(): Promise<Buffer>;
}

/** Looks an exact path up in a commit, without following symlinks; undefined when there is nothing there. */
export type TreeLookup = (path: string) => Promise<TreeFile | undefined>;

/**
 * Finds <repo folder>/Dockerfile in a commit. A symlink is followed while it stays inside the repository; one
 * that leaves it, a Dockerfile above the size limit or something that is not a file is refused.
 */
export async function findRepositoryDockerfile(lookup: TreeLookup, repoFolder: string, maxBytes: number): Promise<Buffer | undefined> {
  const parts = repoFolder.split("/");
  for (let i = 1; i <= parts.length; i++) {
    const prefix = parts.slice(0, i).join("/");
    const entry = await lookup(prefix);
    if (!entry) return undefined;
    if (entry.kind !== "directory") throw failedPrecondition(`the repo folder ${prefix} is a ${entry.kind}, not a directory; the repository is refused`);
  }
  let path = `${repoFolder}/Dockerfile`;
  for (let hop = 0; hop <= MAX_SYMLINK_HOPS; hop++) {
    const entry = await lookup(path);
    if (!entry) {
      if (hop === 0) return undefined;
      throw failedPrecondition(`${repoFolder}/Dockerfile is a symlink to ${path}, which is not in the commit`);
    }
    if (entry.kind === "symlink") {
      const target = (await entry.read()).toString();
      const resolved = posix.normalize(posix.join(posix.dirname(path), target));
      if (target.startsWith("/") || resolved === ".." || resolved.startsWith("../")) {
        throw failedPrecondition(`${repoFolder}/Dockerfile is a symlink out of the repository (to "${target}"); the repository is refused`);
      }
      path = resolved;
      continue;
    }
    if (entry.kind !== "file" && entry.kind !== "executable") throw failedPrecondition(`${path} is a ${entry.kind}, not a file; the repository is refused`);
    if (entry.size > maxBytes) throw failedPrecondition(`${path} is ${entry.size} bytes; a Dockerfile may have at most ${maxBytes}`);
    return entry.read();
  }
  throw failedPrecondition(`${repoFolder}/Dockerfile is a chain of more than ${MAX_SYMLINK_HOPS} symlinks`);
}

/**
 * The seed's rules for a custom Dockerfile, as warnings: the image must come from OPSCHAIN_BASE_RUNNER and keep
 * its ENTRYPOINT. Only the final stage and the stages it builds on count; other stages may use anything.
 */
export function checkCustomDockerfile(text: string, path: string): string[] {
  interface Stage {
    base: string;
    name: string | undefined;
    entrypointLine: number | undefined;
  }
  const stages: Stage[] = [];
  for (const { line, keyword, body } of dockerfileInstructions(text)) {
    if (keyword === "FROM") {
      const operands = body.split(/\s+/).filter((arg) => !arg.startsWith("--"));
      const asAt = operands.findIndex((arg) => arg.toUpperCase() === "AS");
      stages.push({ base: operands[0] ?? "", name: asAt >= 0 ? operands[asAt + 1]?.toLowerCase() : undefined, entrypointLine: undefined });
    } else if (keyword === "ENTRYPOINT" && stages.length > 0) {
      stages[stages.length - 1]!.entrypointLine = line;
    }
  }
  const warnings: string[] = [];
  const chain: Stage[] = [];
  let stage: Stage | undefined = stages[stages.length - 1];
  while (stage && !chain.includes(stage)) {
    chain.push(stage);
    const base = stage.base.toLowerCase();
    stage = stages
      .slice(0, stages.indexOf(stage))
      .reverse()
      .find((earlier) => earlier.name === base);
  }
  const root = chain[chain.length - 1];
  if (!root || !/^\$(\{OPSCHAIN_BASE_RUNNER\}|OPSCHAIN_BASE_RUNNER)$/.test(root.base)) {
    warnings.push(
      `${path}: the image does not start FROM \${OPSCHAIN_BASE_RUNNER} (it starts from "${root?.base ?? "nothing"}"); steps may lack opschain-exec and opschain-action`,
    );
  }
  for (const withEntrypoint of chain.filter((candidate) => candidate.entrypointLine !== undefined)) {
    warnings.push(`${path}: line ${withEntrypoint.entrypointLine} sets ENTRYPOINT; the step runner's entry point must not change`);
  }
  return warnings;
}

/**
 * Whether a Dockerfile may read repo.tar from the build context: it names it, or copies from the context with
 * a wildcard or the whole context. repo.tar is made (O(repository)) only for such Dockerfiles.
 */
export function refersToRepoTar(text: string): boolean {
  return dockerfileInstructions(text).some(({ keyword, body }) => {
    if (body.includes("repo.tar")) return true;
    if (keyword !== "COPY" && keyword !== "ADD") return false;
    const operands = body.split(/\s+/).filter((arg) => arg !== "");
    if (operands.some((arg) => /^--from=/i.test(arg))) return false;
    const sources = operands.filter((arg) => !arg.startsWith("--")).slice(0, -1);
    return sources.some((source) => /[*?[]/.test(source) || /^(\.|\.\/|\/|\.\/\.|)$/.test(source.replace(/^\[?"?|"?,?\]?$/g, "")));
  });
}

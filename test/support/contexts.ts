import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdir, mkdtemp, readFile, utimes, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { zipSync } from "fflate";
import { refersToRepoTar } from "../../services/context-service/core/dockerfile.js";
import type { ContextFileKind, ContextProvider, RemoteContext } from "../../services/image-service/core/context-cache.js";
import { stableTime } from "../../services/shared/stable-time.js";
import { run } from "./stack.js";

export interface ContextInput {
  files: Record<string, string>;
  properties: Record<string, unknown>;
  /** Values replaced by "<redacted>" in the build context's copy of the zip. */
  secrets?: string[];
  dockerfile: string;
  defaultDockerfile: boolean;
  gitSha?: string;
  /** A CA certificate's text: opschain-trust-store.tar holding it (as ca.pem) is listed, as for a Dockerfile that copies it. */
  trustStore?: string;
}

/**
 * Prepared contexts made on local disk, standing in for the context-service: the given files as the "base"
 * directory (with empty "history" and "changes" beside it, each with its identity file, as the context-service
 * writes them), repo.tar of the same files (owned by the runner user) listed when the Dockerfile names it,
 * the step context zip (redacted and full), a Dockerfile, and opschain-trust-store.tar when given a trust store.
 */
export class LocalContextProvider implements ContextProvider {
  private readonly contexts = new Map<string, { remote: RemoteContext; paths: Partial<Record<ContextFileKind, string>> }>();

  constructor(private readonly dir: string) {}

  async add(input: ContextInput): Promise<string> {
    const dir = await mkdtemp(join(this.dir, "context-"));
    const tree = join(dir, "tree");
    for (const [path, content] of Object.entries(input.files)) {
      await mkdir(join(tree, path, ".."), { recursive: true });
      await writeFile(join(tree, path), content);
      const time = stableTime(createHash("sha256").update(content).digest("hex"));
      await utimes(join(tree, path), time, time);
    }
    await mkdir(join(dir, "empty"));
    const paths: Partial<Record<ContextFileKind, string>> & Record<"repo-tar" | "step-context-zip" | "dockerfile" | "secret-step-context-zip", string> = {
      "repo-tar": join(dir, "repo.tar"),
      "step-context-zip": join(dir, "step_context.json.zip"),
      dockerfile: join(dir, "Dockerfile"),
      "secret-step-context-zip": join(dir, "secret.zip"),
    };
    if (input.trustStore !== undefined) {
      await mkdir(join(dir, "trust"));
      await writeFile(join(dir, "trust", "ca.pem"), input.trustStore);
      paths["trust-store-tar"] = join(dir, "opschain-trust-store.tar");
      const trustTar = await run("tar", [
        "--sort=name",
        "--mtime=@0",
        "--owner=0",
        "--group=0",
        "--numeric-owner",
        "-C",
        join(dir, "trust"),
        "-cf",
        paths["trust-store-tar"],
        "ca.pem",
      ]);
      if (trustTar.code !== 0) throw new Error(trustTar.stderr);
    }
    const tar = await run("tar", ["--sort=name", "--mtime=@0", "--owner=10001", "--group=10001", "--numeric-owner", "-C", tree, "-cf", paths["repo-tar"], "."]);
    if (tar.code !== 0) throw new Error(tar.stderr);
    const json = JSON.stringify({ context: {}, properties: input.properties });
    let redacted = json;
    for (const secret of input.secrets ?? []) redacted = redacted.split(secret).join("<redacted>");
    await writeFile(paths["secret-step-context-zip"], zipSync({ "step_context.json": Buffer.from(json) }, { mtime: new Date("1980-01-01T00:00:00Z") }));
    await writeFile(paths["step-context-zip"], zipSync({ "step_context.json": Buffer.from(redacted) }, { mtime: new Date("1980-01-01T00:00:00Z") }));
    await writeFile(paths.dockerfile, input.dockerfile);
    const infos = {} as Record<ContextFileKind, RemoteContext["files"]["dockerfile"]>;
    for (const [kind, path] of Object.entries(paths) as Array<[ContextFileKind, string]>) {
      const bytes = await readFile(path);
      infos[kind] = { digest: `sha256:${createHash("sha256").update(bytes).digest("hex")}`, size: BigInt(bytes.length) };
    }
    const contextId = `sha256:${createHash("sha256")
      .update(infos["repo-tar"].digest + infos["step-context-zip"].digest + infos.dockerfile.digest + (infos["trust-store-tar"]?.digest ?? ""))
      .digest("hex")}`;
    const gitSha = input.gitSha ?? createHash("sha1").update(infos["repo-tar"].digest).digest("hex");
    await writeFile(`${tree}.identity`, `tree:${gitSha}`);
    const { "repo-tar": repoTar, ...others } = infos;
    const remote: RemoteContext = {
      contextId,
      gitRev: "main",
      gitSha,
      defaultDockerfile: input.defaultDockerfile,
      repositoryId: "local-test-repository",
      repositoryOptions: { excludeGitHistory: false, honorExportIgnore: false },
      files: refersToRepoTar(input.dockerfile) ? { ...others, "repo-tar": { ...repoTar, hostPath: paths["repo-tar"] } } : others,
      directories: [
        { name: "history", identity: "empty", hostPath: join(dir, "empty") },
        { name: "base", identity: `tree:${gitSha}`, hostPath: tree },
        { name: "changes", identity: "empty", hostPath: join(dir, "empty") },
      ],
    };
    this.contexts.set(contextId, { remote, paths });
    return contextId;
  }

  async describe(contextId: string): Promise<RemoteContext> {
    const context = this.contexts.get(contextId);
    if (!context) throw new Error(`no context ${contextId}`);
    return context.remote;
  }

  async *read(contextId: string, kind: ContextFileKind): AsyncIterable<Uint8Array> {
    yield* createReadStream(this.contexts.get(contextId)!.paths[kind]!);
  }
}

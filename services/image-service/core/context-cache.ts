import { createHash } from "node:crypto";
import { createWriteStream } from "node:fs";
import { mkdir, rename, rm, stat, utimes } from "node:fs/promises";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import { Code, ConnectError } from "@connectrpc/connect";
import { invalidField } from "../../shared/validation.js";
import type { ContextFileInfo, ContextSource, LocalContext } from "./model.js";

export type ContextFileKind = "repo-tar" | "step-context-zip" | "dockerfile" | "secret-step-context-zip";

export interface RemoteContext {
  contextId: string;
  gitRev: string;
  gitSha: string;
  defaultDockerfile: boolean;
  files: Record<ContextFileKind, ContextFileInfo>;
}

/** Where contexts are prepared (the context-service over gRPC in production). */
export interface ContextProvider {
  describe(contextId: string, signal?: AbortSignal): Promise<RemoteContext>;
  read(contextId: string, kind: ContextFileKind, signal?: AbortSignal): AsyncIterable<Uint8Array>;
}

const CONTEXT_ID = /^sha256:[0-9a-f]{64}$/;

/**
 * Copies prepared contexts from the context-service to local disk once, verified against their digests.
 * Each file's mtime is derived from its digest: BuildKit re-sends a file only when size, mtime or mode
 * change, so equal bytes are never sent twice and different bytes always are.
 */
export class ContextCache implements ContextSource {
  private readonly pending = new Map<string, Promise<LocalContext>>();

  constructor(
    private readonly provider: ContextProvider,
    private readonly dir: string,
  ) {}

  materialize(contextId: string, signal?: AbortSignal): Promise<LocalContext> {
    if (!CONTEXT_ID.test(contextId)) {
      return Promise.reject(invalidField("context_id", 'must be a prepared context\'s id: "sha256:" and 64 hex digits', contextId));
    }
    let materializing = this.pending.get(contextId);
    if (!materializing) {
      materializing = this.fetch(contextId, signal).finally(() => this.pending.delete(contextId));
      this.pending.set(contextId, materializing);
    }
    return materializing;
  }

  private async fetch(contextId: string, signal?: AbortSignal): Promise<LocalContext> {
    const remote = await this.provider.describe(contextId, signal);
    const root = join(this.dir, contextId.slice(7));
    const local = layout(root, remote);
    if (await exists(join(root, "complete"))) return local;
    const staging = `${root}.${process.pid}.${Date.now()}.tmp`;
    try {
      const staged = layout(staging, remote);
      const targets: Array<[ContextFileKind, string]> = [
        ["repo-tar", join(staged.contextDir, "repo.tar")],
        ["step-context-zip", join(staged.contextDir, "step_context.json.zip")],
        ["dockerfile", join(staged.dockerfileDir, "Dockerfile")],
        ["secret-step-context-zip", staged.secretZipPath],
      ];
      for (const [kind, path] of targets) {
        await mkdir(join(path, ".."), { recursive: true, mode: kind === "secret-step-context-zip" ? 0o700 : 0o755 });
        await this.download(contextId, kind, remote.files[kind], path, signal);
      }
      await mkdir(join(staging, "complete"));
      await rm(root, { recursive: true, force: true });
      await rename(staging, root);
      return local;
    } finally {
      await rm(staging, { recursive: true, force: true });
    }
  }

  private async download(contextId: string, kind: ContextFileKind, expected: ContextFileInfo, path: string, signal?: AbortSignal): Promise<void> {
    const hash = createHash("sha256");
    let size = 0n;
    const provider = this.provider;
    await pipeline(
      async function* () {
        for await (const chunk of provider.read(contextId, kind, signal)) {
          hash.update(chunk);
          size += BigInt(chunk.length);
          yield chunk;
        }
      },
      createWriteStream(path, { mode: kind === "secret-step-context-zip" ? 0o600 : 0o644 }),
      { signal },
    );
    const digest = `sha256:${hash.digest("hex")}`;
    if (digest !== expected.digest || size !== expected.size) {
      throw new ConnectError(`context ${contextId}: ${kind} arrived as ${digest} (${size} bytes), expected ${expected.digest} (${expected.size} bytes)`, Code.DataLoss);
    }
    const mtime = mtimeOf(digest);
    await utimes(path, mtime, mtime);
  }
}

function layout(root: string, remote: RemoteContext): LocalContext {
  return {
    contextId: remote.contextId,
    gitRev: remote.gitRev,
    gitSha: remote.gitSha,
    defaultDockerfile: remote.defaultDockerfile,
    repoTar: remote.files["repo-tar"],
    stepContextZip: remote.files["step-context-zip"],
    dockerfile: remote.files.dockerfile,
    contextDir: join(root, "context"),
    dockerfileDir: join(root, "dockerfile"),
    secretZipPath: join(root, "secret", "step_context.json.zip"),
  };
}

/** A stable time from a digest (seconds within 2001–2033), so equal content always has equal metadata. */
function mtimeOf(digest: string): Date {
  const seconds = 1_000_000_000 + (parseInt(digest.slice(7, 15), 16) % 1_000_000_000);
  return new Date(seconds * 1000);
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(() => true, () => false);
}

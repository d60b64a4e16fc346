import { createClient, type Client, type Transport } from "@connectrpc/connect";
import { ContextFileKind as ApiFileKind, ContextService, DockerfileSource } from "../../../gen/steprunner/context/v1/context_service_pb.js";
import { releasedChunks } from "../../shared/client/chunks.js";
import type { ContextFileKind, ContextProvider, RemoteContext } from "../core/context-cache.js";

const KINDS: Record<ContextFileKind, ApiFileKind> = {
  "repo-tar": ApiFileKind.REPO_TAR,
  "step-context-zip": ApiFileKind.STEP_CONTEXT_ZIP,
  dockerfile: ApiFileKind.DOCKERFILE,
  "secret-step-context-zip": ApiFileKind.SECRET_STEP_CONTEXT_ZIP,
  "trust-store-tar": ApiFileKind.TRUST_STORE_TAR,
};

/** Prepared contexts read from the context-service over gRPC. */
export class ContextServiceProvider implements ContextProvider {
  private readonly client: Client<typeof ContextService>;

  constructor(transport: Transport) {
    this.client = createClient(ContextService, transport);
  }

  async describe(contextId: string, signal?: AbortSignal): Promise<RemoteContext> {
    const { context } = await this.client.getContext({ contextId }, { signal });
    if (!context) throw new Error(`the context-service described ${contextId} as nothing`);
    const files = {} as RemoteContext["files"];
    const listed = context.secretStepContext ? [...context.files, context.secretStepContext] : context.files;
    for (const [kind, apiKind] of Object.entries(KINDS) as Array<[ContextFileKind, ApiFileKind]>) {
      const file = listed.find((candidate) => candidate.kind === apiKind);
      if (file) files[kind] = { digest: file.digest, size: file.sizeBytes, hostPath: file.hostPath };
      else if (kind !== "repo-tar" && kind !== "trust-store-tar") throw new Error(`the context-service described ${contextId} without its ${kind}`);
    }
    return {
      contextId: context.contextId,
      gitRev: context.gitRev,
      gitSha: context.gitSha,
      defaultDockerfile: context.dockerfileSource === DockerfileSource.DEFAULT,
      repositoryId: context.repositoryId,
      repositoryOptions: {
        excludeGitHistory: context.repositoryOptions?.excludeGitHistory ?? false,
        honorExportIgnore: context.repositoryOptions?.honorExportIgnore ?? false,
      },
      files,
      directories: context.directories.map((directory) => ({ name: directory.name, identity: directory.identity, hostPath: directory.hostPath })),
    };
  }

  async *read(contextId: string, kind: ContextFileKind, signal?: AbortSignal): AsyncIterable<Uint8Array> {
    yield* releasedChunks(this.client.readContextFile({ contextId, kind: KINDS[kind] }, { signal }));
  }
}

import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { create } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import {
  ChildExecutionStrategy,
  ContextDirectorySchema,
  ContextFileKind,
  ContextFileSchema,
  type ContextService,
  DockerfileSource,
  type ParentsValues,
  type PrepareContextRequest,
  PreparedContextSchema,
  RepositoryOptionsSchema,
} from "../../../gen/steprunner/context/v1/context_service_pb.js";
import type { Logger } from "../../shared/log.js";
import { invalidField, invalidFieldMessage } from "../../shared/validation.js";
import type { HttpHandler } from "../../shared/server/serve.js";
import type { ContextFileKind as CoreFileKind, ContextFileRecord, ContextPreparer, PrepareInput, PreparedContextRecord } from "../core/context-preparer.js";
import type { DefaultDockerfile } from "../core/default-dockerfile.js";
import { ContextError, type ContextErrorKind } from "../core/errors.js";
import type { JsonObject } from "../core/step-context.js";

/** ReadContextFile's chunk size: small enough for any gRPC message limit, big enough to stream fast. */
export const READ_CHUNK_BYTES = 64 * 1024;

const CODES: Record<ContextErrorKind, Code> = {
  "not-found": Code.NotFound,
  unavailable: Code.Unavailable,
  "invalid-argument": Code.InvalidArgument,
  "failed-precondition": Code.FailedPrecondition,
  "out-of-range": Code.OutOfRange,
};

const TO_CORE_KIND: Partial<Record<ContextFileKind, CoreFileKind>> = {
  [ContextFileKind.REPO_TAR]: "repo-tar",
  [ContextFileKind.STEP_CONTEXT_ZIP]: "step-context-zip",
  [ContextFileKind.DOCKERFILE]: "dockerfile",
  [ContextFileKind.SECRET_STEP_CONTEXT_ZIP]: "secret-step-context-zip",
  [ContextFileKind.TRUST_STORE_TAR]: "trust-store-tar",
};
const FILE_KIND_NAMES = Object.keys(TO_CORE_KIND)
  .map((kind) => `CONTEXT_FILE_KIND_${ContextFileKind[Number(kind)]}`)
  .join(", ");
const FROM_CORE_KIND = Object.fromEntries(Object.entries(TO_CORE_KIND).map(([api, core]) => [core, Number(api)])) as Record<CoreFileKind, ContextFileKind>;

const STRATEGIES: Record<ChildExecutionStrategy, string | null> = {
  [ChildExecutionStrategy.UNSPECIFIED]: null,
  [ChildExecutionStrategy.SEQUENTIAL]: "sequential",
  [ChildExecutionStrategy.PARALLEL]: "parallel",
};

/** The range of google.protobuf.Timestamp, which toISOString can also write. */
const EARLIEST_TIME = new Date("0001-01-01T00:00:00Z").getTime();
const LATEST_TIME = new Date("9999-12-31T23:59:59.999Z").getTime();

/** The Connect adapter of ContextService: it checks requests' shape, calls the core and maps its errors to codes. */
export function contextServiceAdapter(dockerfile: DefaultDockerfile, preparer: ContextPreparer, logger: Logger): ServiceImpl<typeof ContextService> {
  return {
    getDefaultDockerfile() {
      return { dockerfile: dockerfile.text, version: dockerfile.version, digest: dockerfile.digest };
    },

    async resolveRevision(request, context) {
      return mapErrors(logger, "ResolveRevision", async () => {
        const revision = await preparer.resolve(request.repositoryUrl, request.gitRev, context.signal);
        return { gitSha: revision.gitSha, movingRef: revision.movingRef };
      });
    },

    async prepareContext(request, context) {
      return mapErrors(logger, "PrepareContext", async () => {
        const record = await preparer.prepare(prepareInput(request), context.signal);
        logger.info("context prepared", { contextId: record.contextId, gitSha: record.gitSha, warnings: record.warnings.length });
        return { context: preparedContext(record) };
      });
    },

    async getContext(request) {
      return mapErrors(logger, "GetContext", async () => ({ context: preparedContext(await preparer.describe(request.contextId)) }));
    },

    async *readContextFile(request, context: HandlerContext) {
      const kind = TO_CORE_KIND[request.kind];
      if (!kind) throw invalidField("kind", `must name a context file: one of ${FILE_KIND_NAMES}`, request.kind);
      const stream = await mapErrors(logger, "ReadContextFile", () => preparer.read(request.contextId, kind, Number(request.offset), READ_CHUNK_BYTES));
      const destroy = () => (stream as unknown as { destroy(): void }).destroy();
      context.signal.addEventListener("abort", destroy, { once: true });
      try {
        for await (const chunk of stream) yield { chunk: chunk as Buffer };
      } finally {
        context.signal.removeEventListener("abort", destroy);
        destroy();
      }
    },
  };
}

function prepareInput(request: PrepareContextRequest): PrepareInput {
  const values = request.contextValues;
  const change = values?.change;
  const step = values?.step;
  const strategy = step?.childExecutionStrategy ?? ChildExecutionStrategy.UNSPECIFIED;
  if (!(strategy in STRATEGIES)) {
    throw invalidField(
      "context_values.step.child_execution_strategy",
      "must be CHILD_EXECUTION_STRATEGY_SEQUENTIAL, CHILD_EXECUTION_STRATEGY_PARALLEL or unset",
      strategy,
    );
  }
  const createdAt = change?.createdAt ? timestampDate(change.createdAt) : undefined;
  if (createdAt && !(createdAt.getTime() >= EARLIEST_TIME && createdAt.getTime() <= LATEST_TIME)) {
    throw invalidField("context_values.change.created_at", "must be a time between 0001-01-01 and 9999-12-31", `${change!.createdAt!.seconds}s`);
  }
  return {
    repositoryUrl: request.repositoryUrl,
    gitRev: request.gitRev,
    repoFolder: request.repoFolder,
    excludeGitHistory: request.excludeGitHistory,
    honorExportIgnore: request.honorExportIgnore,
    properties: request.properties.map((set) => ({ owner: set.owner, properties: (set.properties ?? {}) as JsonObject })),
    secretPointers: request.secretPointers,
    values: {
      change: {
        id: change?.id ?? "",
        action: change?.action ?? "",
        project_code: change?.projectCode ?? "",
        project_name: change?.projectName ?? "",
        environment_code: change?.environmentCode ?? "",
        environment_name: change?.environmentName ?? "",
        created_by: change?.createdBy ?? "",
        created_at: createdAt ? createdAt.toISOString() : null,
        metadata: (change?.metadata ?? {}) as JsonObject,
        git_remote_name: change?.gitRemoteName ?? "",
      },
      step: {
        id: step?.id ?? "",
        action: step?.action ?? "",
        // The docs' sample names the step by its action.
        name: step?.action ?? "",
        change_id: change?.id ?? "",
        parent_step_id: step?.parentStepId ?? "",
        full_path: step?.fullPath ?? "",
        child_execution_strategy: STRATEGIES[strategy],
        arguments: (step?.arguments ?? {}) as JsonObject,
        input_arguments: (step?.arguments ?? {}) as JsonObject,
      },
      user: { name: values?.user?.name ?? "", groups: [...(values?.user?.groups ?? [])] },
      parents: parentsOf(values?.parents),
    },
  };
}

/** context.parents: only the nodes given, each with the fields given. */
function parentsOf(parents: ParentsValues | undefined): JsonObject {
  const result: JsonObject = {};
  for (const kind of ["project", "environment", "asset"] as const) {
    const node = parents?.[kind];
    if (!node) continue;
    const fields: JsonObject = {};
    for (const field of ["id", "code", "name", "description"] as const) if (node[field]) fields[field] = node[field];
    result[kind] = fields;
  }
  return result;
}

function contextFile(file: ContextFileRecord) {
  return create(ContextFileSchema, {
    kind: FROM_CORE_KIND[file.kind],
    name: file.name,
    digest: file.digest,
    sizeBytes: BigInt(file.size),
    hostPath: file.hostPath ?? "",
  });
}

function preparedContext(record: PreparedContextRecord) {
  return create(PreparedContextSchema, {
    contextId: record.contextId,
    gitRev: record.gitRev,
    gitSha: record.gitSha,
    repoFolder: record.repoFolder,
    files: record.files.map(contextFile),
    secretStepContext: contextFile(record.secretStepContext),
    dockerfileSource: record.dockerfileSource === "repository" ? DockerfileSource.REPOSITORY : DockerfileSource.DEFAULT,
    warnings: record.warnings,
    directories: (record.directories ?? []).map((directory) =>
      create(ContextDirectorySchema, { name: directory.name, identity: directory.identity, hostPath: directory.path }),
    ),
    repositoryOptions: create(RepositoryOptionsSchema, record.repositoryOptions ?? {}),
    repositoryId: record.repositoryId ?? "",
  });
}

/** Core errors become their gRPC codes; anything else is an INTERNAL error, logged with its detail. */
async function mapErrors<T>(logger: Logger, rpc: string, call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (error) {
    if (error instanceof ContextError) throw error.field ? invalidFieldMessage(error.field, error.message) : new ConnectError(error.message, CODES[error.kind]);
    if (error instanceof ConnectError) throw error;
    // Node's own writes say ENOSPC; git's say it in their words.
    if ((error as NodeJS.ErrnoException).code === "ENOSPC" || /No space left on device/i.test((error as Error).message)) {
      throw new ConnectError(
        `${rpc}: the context-service's disk is full (${(error as Error).message}); free space under its state directory or lower STEPRUNNER_CONTEXT_CACHE_MAX_BYTES`,
        Code.ResourceExhausted,
      );
    }
    logger.error("call failed", { rpc, error });
    throw new ConnectError(`${rpc} failed: ${(error as Error).message}`, Code.Internal);
  }
}

/** GET /downloads/Dockerfile: the default Dockerfile as text, as the seed's API server serves it. */
export function downloadDockerfileHandler(dockerfile: DefaultDockerfile): HttpHandler {
  const etag = `"${dockerfile.digest}"`;
  return (req, res) => {
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD", "content-type": "text/plain" });
      res.end("only GET and HEAD are allowed\n");
      return;
    }
    if (req.headers["if-none-match"] === etag) {
      res.writeHead(304, { etag });
      res.end();
      return;
    }
    res.writeHead(200, {
      "content-type": "text/plain; charset=utf-8",
      "content-disposition": 'attachment; filename="Dockerfile"',
      etag,
      "content-length": Buffer.byteLength(dockerfile.text),
    });
    if (req.method === "HEAD") res.end();
    else res.end(dockerfile.text);
  };
}

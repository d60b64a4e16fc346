import { createClient, type Client, type Transport } from "@connectrpc/connect";
import { fromJson, type JsonObject } from "@bufbuild/protobuf";
import { createHash } from "node:crypto";
import { unzipSync } from "fflate";
import {
  ContextFileKind,
  ContextService,
  DockerfileSource,
  type PreparedContext,
  StepContextValuesSchema,
} from "../../../gen/steprunner/context/v1/context_service_pb.js";
import type { ContextPreparer, PartTimer, PreparedStepContext, StepRequest } from "../steps/ports.js";
import { callService } from "./service-calls.js";
import { keepRecent } from "../../shared/recent-entries.js";
import { readBytes } from "../../shared/files/small-files.js";
import { type ImageInputs, imageInputs } from "../../shared/image-inputs.js";

/** The largest step context read back (the context-service limits properties far below this). */
const MAX_STEP_CONTEXT_ZIP_BYTES = 64 * 1024 * 1024;

/** Step contexts kept by their zip's digest: a warm step's is the same as the last one's. */
const STEP_CONTEXTS_KEPT = 64;
/** …unless larger than this (a context of big properties is read each time). */
const MAX_KEPT_STEP_CONTEXT_BYTES = 256 * 1024;

/**
 * Prepares a step's context with the context-service: the revision resolved, the build context made, and
 * the full step_context.json (secrets included) read back for the run-time mount: from where the context-service
 * keeps it when both share a filesystem, else over ReadContextFile. The file is named by its
 * content's digest, so the last few read are kept in memory by digest and a step whose properties and
 * commit were seen just before needs no second round trip.
 */
export class ContextServicePreparer implements ContextPreparer {
  private readonly client: Client<typeof ContextService>;
  private readonly stepContexts = new Map<string, Record<string, unknown>>();

  constructor(transport: Transport) {
    this.client = createClient(ContextService, transport);
  }

  prepare(request: StepRequest, signal: AbortSignal, onPart?: PartTimer): Promise<PreparedStepContext> {
    return callService("context-service", signal, () => this.prepareContext(request, signal, onPart));
  }

  private async prepareContext(request: StepRequest, signal: AbortSignal, onPart: PartTimer = () => {}): Promise<PreparedStepContext> {
    let started = performance.now();
    const { context } = await this.client.prepareContext(
      {
        repositoryUrl: request.repositoryUrl,
        gitRev: request.gitRev,
        repoFolder: request.repoFolder,
        excludeGitHistory: request.excludeGitHistory,
        properties: request.properties.map((set) => ({ owner: set.owner, properties: set.properties as JsonObject })),
        secretPointers: request.secretPointers,
        contextValues: fromJson(StepContextValuesSchema, request.contextValues as JsonObject),
      },
      { signal },
    );
    if (!context) throw new Error("the context-service prepared no context");
    onPart("prepare-context-rpc", performance.now() - started);
    started = performance.now();
    const digest = context.secretStepContext?.digest ?? "";
    let stepContext = digest ? this.stepContexts.get(digest) : undefined;
    if (stepContext) {
      // Most recently used last: the first entry is the one dropped.
      this.stepContexts.delete(digest);
      this.stepContexts.set(digest, stepContext);
      onPart("step-context-kept", performance.now() - started);
    } else {
      const local = await readSharedFile(context.secretStepContext);
      stepContext = local ? unzipStepContext(local, context.contextId) : await this.readStepContext(context.contextId, signal);
      if (digest && (context.secretStepContext?.sizeBytes ?? 0n) <= BigInt(MAX_KEPT_STEP_CONTEXT_BYTES)) {
        keepRecent(this.stepContexts, digest, stepContext, STEP_CONTEXTS_KEPT);
      }
      onPart(local ? "step-context-shared-file" : "read-step-context-rpc", performance.now() - started);
    }
    return {
      contextId: context.contextId,
      gitRev: context.gitRev,
      gitSha: context.gitSha,
      repoFolder: context.repoFolder,
      stepContext,
      warnings: context.warnings,
      imageInputs: imageInputsOf(context),
    };
  }

  /** step_context.json of a context, unzipped; it is never changed afterwards (it may be kept and shared). */
  private async readStepContext(contextId: string, signal: AbortSignal): Promise<Record<string, unknown>> {
    const chunks: Uint8Array[] = [];
    let size = 0;
    for await (const { chunk } of this.client.readContextFile({ contextId, kind: ContextFileKind.SECRET_STEP_CONTEXT_ZIP }, { signal })) {
      size += chunk.length;
      if (size > MAX_STEP_CONTEXT_ZIP_BYTES) throw new Error(`step_context.json.zip of ${contextId} is larger than ${MAX_STEP_CONTEXT_ZIP_BYTES} bytes`);
      chunks.push(chunk);
    }
    return unzipStepContext(Buffer.concat(chunks), contextId);
  }
}

/** What the context's image depends on (see ImageInputs); undefined when the context lists no Dockerfile. */
function imageInputsOf(context: PreparedContext): ImageInputs | undefined {
  const file = (kind: ContextFileKind) => context.files.find((candidate) => candidate.kind === kind);
  const dockerfile = file(ContextFileKind.DOCKERFILE);
  const stepContextZip = file(ContextFileKind.STEP_CONTEXT_ZIP);
  const trustStore = file(ContextFileKind.TRUST_STORE_TAR);
  if (!dockerfile || !stepContextZip) return undefined;
  return imageInputs({
    gitRev: context.gitRev,
    gitSha: context.gitSha,
    repositoryOptions: {
      excludeGitHistory: context.repositoryOptions?.excludeGitHistory ?? false,
      honorExportIgnore: context.repositoryOptions?.honorExportIgnore ?? false,
    },
    defaultDockerfile: context.dockerfileSource === DockerfileSource.DEFAULT,
    dockerfileDigest: dockerfile.digest,
    stepContextZipDigest: stepContextZip.digest,
    ...(trustStore ? { trustStoreDigest: trustStore.digest } : {}),
  });
}

function unzipStepContext(zip: Uint8Array, contextId: string): Record<string, unknown> {
  const json = unzipSync(zip)["step_context.json"];
  if (!json) throw new Error(`step_context.json.zip of ${contextId} holds no step_context.json`);
  return JSON.parse(Buffer.from(json).toString("utf8")) as Record<string, unknown>;
}

/**
 * The file where the context-service keeps it, when this service shares its filesystem and the bytes there
 * have the digest the context names; undefined otherwise (then it is read over ReadContextFile).
 */
async function readSharedFile(file: { hostPath: string; digest: string; sizeBytes: bigint } | undefined): Promise<Buffer | undefined> {
  if (!file?.hostPath || file.sizeBytes > BigInt(MAX_STEP_CONTEXT_ZIP_BYTES)) return undefined;
  const bytes = await readBytes(file.hostPath, Number(file.sizeBytes));
  if (!bytes || BigInt(bytes.length) !== file.sizeBytes) return undefined;
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}` === file.digest ? bytes : undefined;
}

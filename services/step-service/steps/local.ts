import { stat } from "node:fs/promises";
import { join, resolve } from "node:path";
import type { BuiltStepImage, ContextPreparer, ImageBuilder, PreparedStepContext, StepRequest } from "./ports.js";

/**
 * Takes the repository from a local directory as it is (no git) and writes step_context.json from the
 * request: for running a real step against an already-built image until the context-service is wired in.
 */
export class LocalDirectoryContextPreparer implements ContextPreparer {
  async prepare(request: StepRequest): Promise<PreparedStepContext> {
    const dir = resolve(request.repositoryUrl.replace(/^file:\/\//, ""));
    const info = await stat(dir).catch(() => undefined);
    if (!info?.isDirectory()) throw new Error(`repository ${request.repositoryUrl} is not a local directory`);
    const warnings = ["the repository directory was used as it is: no git revision was resolved and no image was built"];
    // As the context-service does: the other of .opschain and .mintpress when only that one is there.
    let repoFolder = request.repoFolder;
    if (!(await stat(join(dir, repoFolder)).catch(() => undefined))) {
      for (const other of [".opschain", ".mintpress"].filter((folder) => folder !== repoFolder)) {
        if (!(await stat(join(dir, other)).catch(() => undefined))?.isDirectory()) continue;
        warnings.push(`the repo folder ${repoFolder} is not in the repository directory, but ${other} is: ${other} is used instead`);
        repoFolder = other;
        break;
      }
    }
    return {
      contextId: "",
      gitRev: request.gitRev,
      gitSha: "",
      repoFolder,
      stepContext: stepContextDocument(request),
      repositoryDir: dir,
      warnings,
    };
  }
}

/** step_context.json's shape (compatibility.md): context values, parent_order, properties per owner. */
export function stepContextDocument(request: StepRequest): Record<string, unknown> {
  return {
    context: { ...request.contextValues, parent_order: request.properties.map((set) => set.owner) },
    properties: Object.fromEntries(request.properties.map((set) => [set.owner, set.properties])),
  };
}

/** Uses one image from the registry, already built, for every step. */
export class PrebuiltImageBuilder implements ImageBuilder {
  constructor(private readonly reference: string) {}

  async build(): Promise<BuiltStepImage> {
    return { image: { kind: "registry", reference: this.reference }, imageId: this.reference, reused: true };
  }
}

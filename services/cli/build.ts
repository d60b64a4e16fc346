import { readFile } from "node:fs/promises";
import { ConnectError, createClient } from "@connectrpc/connect";
import { type JsonObject, toJson } from "@bufbuild/protobuf";
import { ContextService } from "../../gen/steprunner/context/v1/context_service_pb.js";
import { BuiltImageSchema, ImageHandoff, ImageService, NetworkMode } from "../../gen/steprunner/image/v1/image_service_pb.js";
import { serviceTransport } from "../shared/client/transport.js";
import { BuildProgressPrinter, type ProgressMode } from "./build-progress.js";
import { type Command, clientSecurity, serviceAddressOptions } from "./command.js";

export const buildCommand: Command = {
  usage: "--repo R --rev V [--repo-folder DIR] [--properties F] [--progress plain|json] [--handoff layer-store|registry] [--no-cache] [--network]",
  options: {
    repo: { type: "string", description: "the git repository: a path, file://, http(s):// or ssh:// URL" },
    rev: { type: "string", description: "GIT_REV: a branch, tag, commit SHA or HEAD", default: "HEAD" },
    properties: { type: "string", description: 'a JSON file {"<owner>": {...}, ...}, owners in merge order' },
    "repo-folder": {
      type: "string",
      description:
        "OPSCHAIN_REPO_FOLDER: the folder holding the custom Dockerfile, e.g. .opschain (default: the service's, .mintpress; when it is absent and the other of .opschain/.mintpress exists, that one is used)",
    },
    progress: { type: "string", description: "plain or json", default: "plain" },
    handoff: { type: "string", description: "how the image reaches the step-service: layer-store or registry (default: the service's)" },
    "no-cache": { type: "boolean", description: "build without reuse and without BuildKit's cache" },
    network: { type: "boolean", description: "give RUN lines the host's network instead of none" },
    ...serviceAddressOptions,
  },
  async run(values) {
    if (typeof values.repo !== "string") {
      console.error("steprunner build: --repo is required");
      return 2;
    }
    const mode = values.progress as ProgressMode;
    if (mode !== "plain" && mode !== "json") {
      console.error(`steprunner build: --progress must be plain or json, got "${values.progress}"`);
      return 2;
    }
    const handoffs: Record<string, ImageHandoff> = { "layer-store": ImageHandoff.LAYER_STORE, registry: ImageHandoff.REGISTRY };
    const handoff = values.handoff === undefined ? ImageHandoff.UNSPECIFIED : handoffs[String(values.handoff)];
    if (handoff === undefined) {
      console.error(`steprunner build: --handoff must be layer-store or registry, got "${values.handoff}"`);
      return 2;
    }
    const contexts = serviceTransport(String(values["context-addr"]), clientSecurity());
    const imagesTransport = serviceTransport(String(values["image-addr"]), clientSecurity());
    try {
      const properties = values.properties ? await readProperties(String(values.properties)) : [];
      const { context } = await createClient(ContextService, contexts.transport).prepareContext({
        repositoryUrl: values.repo,
        gitRev: String(values.rev),
        repoFolder: typeof values["repo-folder"] === "string" ? values["repo-folder"] : "",
        properties,
      });
      if (!context) throw new Error("the context-service returned no context");
      process.stderr.write(`GIT_SHA ${context.gitSha}\ncontext ${context.contextId}\n`);
      for (const warning of context.warnings) process.stderr.write(`warning: ${warning}\n`);
      const printer = new BuildProgressPrinter(mode, (text) => process.stderr.write(text));
      const stream = createClient(ImageService, imagesTransport.transport).buildImage({
        contextId: context.contextId,
        networkMode: values.network ? NetworkMode.HOST : NetworkMode.NONE,
        buildWithoutCache: values["no-cache"] === true,
        handoff,
      });
      for await (const response of stream) {
        switch (response.event.case) {
          case "queued":
            process.stderr.write(`queued: ${response.event.value.position} build(s) ahead\n`);
            break;
          case "warning":
            process.stderr.write(`warning: ${response.event.value.message}\n`);
            break;
          case "progress":
            printer.print(response.event.value);
            break;
          case "image": {
            const image = response.event.value;
            if (mode === "json") console.log(JSON.stringify({ image: toJson(BuiltImageSchema, image) }));
            else console.log(`${image.reused ? "reused" : "built"} ${image.imageId}${image.reference ? ` (${image.reference})` : ""}`);
            break;
          }
        }
      }
      return 0;
    } catch (error) {
      console.error(`steprunner build: ${ConnectError.from(error).message}`);
      return 1;
    } finally {
      contexts.close();
      imagesTransport.close();
    }
  },
};

/** A JSON file of {"owner": {...}} objects, kept in the file's order (the merge order). */
async function readProperties(path: string): Promise<Array<{ owner: string; properties: JsonObject }>> {
  const parsed: unknown = JSON.parse(await readFile(path, "utf8"));
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) throw new Error(`${path} must hold a JSON object of owners`);
  return Object.entries(parsed).map(([owner, properties]) => {
    if (typeof properties !== "object" || properties === null || Array.isArray(properties))
      throw new Error(`${path}: the properties of "${owner}" must be a JSON object`);
    return { owner, properties: properties as JsonObject };
  });
}

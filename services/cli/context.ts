import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { createWriteStream } from "node:fs";
import { mkdir, readFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { pipeline } from "node:stream/promises";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import type { JsonObject } from "@bufbuild/protobuf";
import { ContextFileKind, ContextService, DockerfileSource } from "../../gen/steprunner/context/v1/context_service_pb.js";
import { releasedChunks } from "../shared/client/chunks.js";
import { serviceTransport } from "../shared/client/transport.js";
import { type Command, clientSecurity, serviceAddressOptions } from "./command.js";
import { writeAtomically } from "../shared/files/atomic-write.js";

const LOCAL_PATH = /^(?![a-z][a-z0-9+.-]*:\/\/)(?![^/]+@[^/]+:)/i;

export const contextCommand: Command = {
  usage:
    "--repo REPO --rev REV --out DIR [--properties FILE] [--secrets POINTERS] [--repo-folder DIR] [--exclude-git-history] [--honor-export-ignore] [--json]",
  options: {
    repo: { type: "string", description: "repository: a path, file://, http(s)://, git:// or ssh:// URL, as the context-service sees it" },
    rev: { type: "string", description: "GIT_REV: branch, tag, short or full SHA, or HEAD" },
    out: { type: "string", description: "directory to write repo.tar, step_context.json.zip and Dockerfile into" },
    properties: { type: "string", description: 'JSON file {"<owner>": {...}, ...}, owners in merge order (e.g. project, environment)' },
    secrets: { type: "string", description: "comma-separated JSON pointers into the properties whose values are secret" },
    "repo-folder": { type: "string", description: "OPSCHAIN_REPO_FOLDER inside the repository (default: the service's, .mintpress)" },
    "exclude-git-history": { type: "boolean", description: "leave .git out of repo.tar" },
    "honor-export-ignore": { type: "boolean", description: "leave out paths .gitattributes marks export-ignore" },
    json: { type: "boolean", description: "print one JSON object instead of text" },
    "context-addr": serviceAddressOptions["context-addr"],
  },
  async run(values) {
    const [repo, rev, out] = [values.repo, values.rev, values.out].map((value) => (typeof value === "string" ? value : undefined));
    if (!repo || !rev || !out) {
      console.error("steprunner context: --repo, --rev and --out are required (see --help)");
      return 2;
    }
    let properties: Array<{ owner: string; properties: JsonObject }> = [];
    if (typeof values.properties === "string") {
      try {
        properties = parseProperties(await readFile(values.properties, "utf8"));
      } catch (error) {
        console.error(`steprunner context: --properties ${values.properties}: ${(error as Error).message}`);
        return 2;
      }
    }
    const connection = serviceTransport(String(values["context-addr"]), clientSecurity());
    const client = createClient(ContextService, connection.transport);
    try {
      const { context } = await client.prepareContext({
        repositoryUrl: LOCAL_PATH.test(repo) ? resolve(repo) : repo,
        gitRev: rev,
        repoFolder: typeof values["repo-folder"] === "string" ? values["repo-folder"] : "",
        excludeGitHistory: values["exclude-git-history"] === true,
        honorExportIgnore: values["honor-export-ignore"] === true,
        properties,
        secretPointers: typeof values.secrets === "string" ? values.secrets.split(",").filter(Boolean) : [],
      });
      if (!context) throw new Error("the context-service answered without a context");
      await mkdir(out, { recursive: true });
      // repo.tar is listed only when the Dockerfile names it; the build context written here always has it.
      const repoTarListed = context.files.some((file) => file.kind === ContextFileKind.REPO_TAR);
      const toWrite = [
        ...context.files.map((file) => ({ name: file.name, kind: file.kind, digest: file.digest })),
        ...(repoTarListed ? [] : [{ name: "repo.tar", kind: ContextFileKind.REPO_TAR, digest: "" }]),
      ];
      const written: Array<{ name: string; digest: string; size: number }> = [];
      for (const file of toWrite) {
        const path = join(out, file.name);
        const hash = createHash("sha256");
        const { digest, size } = await writeAtomically(path, async (partial) => {
          const sink = createWriteStream(partial);
          await pipeline(
            releasedChunks(client.readContextFile({ contextId: context.contextId, kind: file.kind })),
            async function* (chunks: AsyncIterable<Uint8Array>) {
              for await (const chunk of chunks) {
                hash.update(chunk);
                yield chunk;
              }
            },
            sink,
          );
          const digest = `sha256:${hash.digest("hex")}`;
          if (file.digest && digest !== file.digest) throw new Error(`${file.name} arrived as ${digest}, not ${file.digest}`);
          return { digest, size: sink.bytesWritten };
        });
        written.push({ name: file.name, digest, size });
      }
      // The default Dockerfile copies the repository from these directories: all of it unpacked in the last.
      for (const directory of context.directories) await mkdir(join(out, directory.name), { recursive: true });
      const last = context.directories[context.directories.length - 1];
      if (last) {
        const unpacked = spawnSync("tar", ["-x", "-C", join(out, last.name), "-f", join(out, "repo.tar")], { encoding: "utf8" });
        if (unpacked.status !== 0) throw new Error(`unpacking repo.tar failed: ${unpacked.stderr}`);
      }
      const summary = {
        gitSha: context.gitSha,
        contextId: context.contextId,
        dockerfile: context.dockerfileSource === DockerfileSource.REPOSITORY ? `${context.repoFolder}/Dockerfile` : "default",
        files: written,
        warnings: context.warnings,
      };
      if (values.json) {
        console.log(JSON.stringify(summary, null, 2));
      } else {
        console.log(`GIT_SHA     ${summary.gitSha}`);
        console.log(`context     ${summary.contextId}`);
        console.log(`Dockerfile  ${summary.dockerfile}`);
        for (const file of summary.files) console.log(`${file.name.padEnd(22)} ${file.digest} ${file.size} bytes`);
        for (const warning of summary.warnings) console.log(`warning: ${warning}`);
      }
      return 0;
    } catch (error) {
      const failure = ConnectError.from(error);
      console.error(`steprunner context: ${Code[failure.code] ?? failure.code}: ${failure.rawMessage}`);
      return 1;
    } finally {
      connection.close();
    }
  },
};

/** The --properties file: a JSON object of owner → properties object, in merge order. */
function parseProperties(text: string): Array<{ owner: string; properties: JsonObject }> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new Error(`not JSON: ${(error as Error).message}`);
  }
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) throw new Error('must be a JSON object {"<owner>": {...}}');
  return Object.entries(parsed).map(([owner, properties]) => {
    if (properties === null || typeof properties !== "object" || Array.isArray(properties))
      throw new Error(`the properties of "${owner}" must be a JSON object`);
    return { owner, properties: properties as JsonObject };
  });
}

import { createHash } from "node:crypto";
import { statSync } from "node:fs";
import { mkdir, readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { inSpan } from "../../shared/tracing.js";
import type { BlobInfo, BlobStore } from "./blob-store.js";
import type { DefaultDockerfile } from "./default-dockerfile.js";
import { checkCustomDockerfile, checkRepoFolder, chooseRepoFolder, findRepositoryDockerfile, refersToRepoTar } from "./dockerfile.js";
import { ContextError, invalidField, notFound } from "./errors.js";
import { writeRepoTar } from "./repo-tar.js";
import { refersToTrustStore, TRUST_STORE_TAR, trustStoreTar } from "./trust-store.js";
import type { Repositories, Revision } from "./repositories.js";
import type { LayerDirectory, RepositoryOptions } from "./repository-layers.js";
import { SingleFlight } from "../../shared/single-flight.js";
import { type PropertySetInput, type StepContextValues, checkStepContextInput, redactSecrets, stepContextDocument, zipStepContext } from "./step-context.js";
import { writeSmallFileAtomic } from "../../shared/files/atomic-write.js";
import { keepRecent } from "../../shared/recent-entries.js";

export type ContextFileKind = "repo-tar" | "step-context-zip" | "dockerfile" | "secret-step-context-zip" | "trust-store-tar";

export interface ContextFileRecord extends BlobInfo {
  kind: ContextFileKind;
  /** The name in the build context. */
  name: string;
  /** Where the blob lies on this host, for a reader that shares the filesystem. */
  hostPath: string;
}

export interface PreparedContextRecord {
  contextId: string;
  gitRev: string;
  gitSha: string;
  repoFolder: string;
  /** The build context's files: the redacted step_context.json.zip, the Dockerfile, and repo.tar when the Dockerfile refers to it. */
  files: ContextFileRecord[];
  /** The repository as the build context's directories, in the order they are copied. */
  directories: LayerDirectory[];
  repositoryOptions: RepositoryOptions;
  repositoryId: string;
  /** The full zip, never part of the build context. */
  secretStepContext: ContextFileRecord;
  dockerfileSource: "default" | "repository";
  warnings: string[];
}

export interface PrepareInput extends RepositoryOptions {
  repositoryUrl: string;
  gitRev: string;
  /** Empty: the service's OPSCHAIN_REPO_FOLDER. */
  repoFolder: string;
  properties: PropertySetInput[];
  secretPointers: string[];
  values: StepContextValues;
}

export interface PreparerSettings {
  repoFolder: string;
  maxDockerfileBytes: number;
  maxPropertiesBytes: number;
  /** The CA certificates put into opschain-trust-store.tar for a Dockerfile that names it; empty: none. */
  trustStoreDir?: string;
}

interface CommitParts {
  gitSha: string;
  /** The repo folder used: the configured one, or the other one when only that is in the commit. */
  repoFolder: string;
  repositoryId: string;
  warnings: string[];
  options: RepositoryOptions;
  directories: LayerDirectory[];
  /** The repository's own Dockerfile; undefined for the default one. */
  custom?: Buffer;
  repoTar?: BlobInfo;
}

const CONTEXT_ID = /^sha256:[0-9a-f]{64}$/;
/** Part of every repo.tar cache key: bump it when repo.tar's layout changes, so old entries are not reused. */
const REPO_TAR_FORMAT = "repo.tar/3";

/** What a ContextPreparer works with. */
export interface ContextPreparerOptions {
  repositories: Repositories;
  blobs: BlobStore;
  /** Where prepared contexts' manifests are kept (0700: they name secret zips). */
  contextsDir: string;
  defaultDockerfile: DefaultDockerfile;
  settings: PreparerSettings;
}

/** Turns (repository, revision, properties, values) into a prepared context, and serves its files. */
export class ContextPreparer {
  /** The contexts prepared last, by request and commit (recentKey), least recently used first. */
  private readonly recent = new Map<string, PreparedContextRecord>();
  /** What the commits seen last give their contexts (commitParts), least recently used first. */
  private readonly commits = new Map<string, CommitParts>();
  private readonly repoTars = new SingleFlight<BlobInfo>();
  private readonly repositories: Repositories;
  private readonly blobs: BlobStore;
  private readonly contextsDir: string;
  private readonly defaultDockerfile: DefaultDockerfile;
  private readonly settings: PreparerSettings;

  constructor(options: ContextPreparerOptions) {
    ({
      repositories: this.repositories,
      blobs: this.blobs,
      contextsDir: this.contextsDir,
      defaultDockerfile: this.defaultDockerfile,
      settings: this.settings,
    } = options);
  }

  async init(): Promise<void> {
    await mkdir(this.contextsDir, { recursive: true, mode: 0o700 });
  }

  resolve(repositoryUrl: string, gitRev: string, signal?: AbortSignal): Promise<Revision> {
    return this.repositories.resolve(repositoryUrl, gitRev, signal);
  }

  prepare(input: PrepareInput, signal?: AbortSignal): Promise<PreparedContextRecord> {
    return inSpan("context.prepare", { "git.rev": input.gitRev }, async (span) => {
      const record = await this.assemble(input, signal);
      span.setAttributes({ "git.sha": record.gitSha, "context.id": record.contextId, "context.dockerfile": record.dockerfileSource });
      return record;
    });
  }

  private async assemble(input: PrepareInput, signal?: AbortSignal): Promise<PreparedContextRecord> {
    // Everything the request says is checked before git is asked anything: bad input changes nothing.
    const configuredFolder = checkRepoFolder(input.repoFolder || this.settings.repoFolder);
    checkStepContextInput({ ...input, gitSha: "" }, input.secretPointers, this.settings);
    const revision = await inSpan("context.fetch", {}, () => this.repositories.resolve(input.repositoryUrl, input.gitRev, signal));
    // The same request at the same commit prepares the same context: the one made last time, while it is all here.
    const key = recentKey(input, configuredFolder, revision.gitSha);
    const recent = this.recent.get(key);
    if (recent && this.stillHere(recent)) {
      this.recent.delete(key);
      this.recent.set(key, recent);
      return recent;
    }
    const record = await this.assembleAt(input, configuredFolder, revision, signal);
    keepRecent(this.recent, recentKey(input, configuredFolder, record.gitSha), record, RECENT_CONTEXTS);
    return record;
  }

  /**
   * Whether a context made before still has its manifest, files and directories (eviction may have taken them);
   * marks its files used. Synchronous stats: microseconds each, where the thread pool's round trips cost a tenth
   * of a millisecond or more on a busy host, and this is a warm step's whole context phase.
   */
  private stillHere(record: PreparedContextRecord): boolean {
    const files = [...record.files, record.secretStepContext];
    return (
      statSync(this.manifestPath(record.contextId), { throwIfNoEntry: false }) !== undefined &&
      files.map((file) => this.blobs.has(file.digest)).every(Boolean) &&
      this.directoriesHere(record.directories)
    );
  }

  /** A context for a request whose revision resolved to `revision`: what the commit gives, then the step context's files. */
  private async assembleAt(input: PrepareInput, configuredFolder: string, revision: Revision, signal?: AbortSignal): Promise<PreparedContextRecord> {
    const commit = await this.commitParts(input, configuredFolder, revision, signal);
    const { repoFolder } = commit;
    const warnings = [...commit.warnings];
    const document = stepContextDocument({ ...input, gitSha: commit.gitSha });
    const { redacted, unmatched } = redactSecrets(document, input.secretPointers);
    for (const pointer of unmatched) warnings.push(`secret pointer ${pointer} names no property; nothing was redacted for it`);

    const { options, directories, custom, repoTar } = commit;
    const dockerfile = custom ?? Buffer.from(this.defaultDockerfile.text);
    const unpin = this.blobs.pin(repoTar ? [repoTar.digest] : []);
    try {
      const file = async (kind: ContextFileKind, name: string, bytes: Buffer): Promise<ContextFileRecord> =>
        this.fileRecord(kind, name, await this.blobs.putBuffer(bytes));
      const redactedZip = zipStepContext(redacted);
      const secretZip = zipStepContext(document);
      const stepContextZip = await file("step-context-zip", "step_context.json.zip", redactedZip);
      const files = [
        ...(repoTar ? [this.fileRecord("repo-tar", "repo.tar", repoTar)] : []),
        stepContextZip,
        await file("dockerfile", "Dockerfile", dockerfile),
        ...(custom && refersToTrustStore(custom.toString("utf8"))
          ? [await file("trust-store-tar", TRUST_STORE_TAR, await trustStoreTar(this.settings.trustStoreDir ?? ""))]
          : []),
      ];
      // With nothing secret both zips are the same bytes, one blob: written once.
      const secretStepContext = secretZip.equals(redactedZip)
        ? { ...stepContextZip, kind: "secret-step-context-zip" as const }
        : await file("secret-step-context-zip", "step_context.json.zip", secretZip);
      const record: PreparedContextRecord = {
        contextId: contextId(files, secretStepContext, directories, options, repoFolder),
        gitRev: input.gitRev,
        gitSha: commit.gitSha,
        repoFolder,
        files,
        directories,
        repositoryOptions: options,
        repositoryId: commit.repositoryId,
        secretStepContext,
        dockerfileSource: custom ? "repository" : "default",
        warnings,
      };
      this.saveManifest(record);
      const unpinFiles = this.blobs.pin([...files, secretStepContext].map((candidate) => candidate.digest));
      try {
        await this.blobs.evict();
      } finally {
        unpinFiles();
      }
      return record;
    } finally {
      unpin();
    }
  }

  /**
   * What a commit gives every context made from it (its warnings, the repository's Dockerfile if any, the
   * repository's directories, repo.tar when the Dockerfile names it), remembered by repository, commit, folder
   * and options while its directories are kept: a step at a commit seen before asks git nothing.
   */
  private async commitParts(input: PrepareInput, configuredFolder: string, revision: Revision, signal?: AbortSignal): Promise<CommitParts> {
    const options: RepositoryOptions = { excludeGitHistory: input.excludeGitHistory, honorExportIgnore: input.honorExportIgnore };
    const key = JSON.stringify([input.repositoryUrl, revision.gitSha, configuredFolder, options]);
    const kept = this.commits.get(key);
    if (kept && this.directoriesHere(kept.directories) && (!kept.repoTar || this.blobs.has(kept.repoTar.digest))) {
      this.commits.delete(key);
      this.commits.set(key, kept);
      return kept;
    }
    const commit = await inSpan("context.open", {}, () => this.repositories.open(input.repositoryUrl, input.gitRev, signal, revision));
    const warnings = [...commit.warnings];
    const chosen = await chooseRepoFolder(commit.lookup, configuredFolder, commit.gitSha);
    const repoFolder = chosen.folder;
    if (chosen.warning) warnings.push(chosen.warning);
    const custom = await findRepositoryDockerfile(commit.lookup, repoFolder, this.settings.maxDockerfileBytes);
    if (custom) warnings.push(...checkCustomDockerfile(custom.toString("utf8"), `${repoFolder}/Dockerfile`));
    const directories = await inSpan("context.layers", {}, () => commit.layers(options, signal));
    const repoTar =
      custom && refersToRepoTar(custom.toString("utf8")) ? await inSpan("context.repo_tar", {}, () => this.repoTar(directories, signal)) : undefined;
    const parts: CommitParts = { gitSha: commit.gitSha, repoFolder, repositoryId: commit.repositoryId, warnings, options, directories, custom, repoTar };
    // Keyed by the commit git named: a moving ref may have moved since `revision` was read.
    keepRecent(this.commits, JSON.stringify([input.repositoryUrl, commit.gitSha, configuredFolder, options]), parts, RECENT_CONTEXTS);
    return parts;
  }

  private directoriesHere(directories: LayerDirectory[]): boolean {
    return directories.every((directory) => statSync(directory.path, { throwIfNoEntry: false }) !== undefined);
  }

  private fileRecord(kind: ContextFileKind, name: string, info: BlobInfo): ContextFileRecord {
    return { kind, name, ...info, hostPath: this.blobs.path(info.digest) };
  }

  async describe(id: string): Promise<PreparedContextRecord> {
    if (!CONTEXT_ID.test(id)) throw invalidField("context_id", 'must be "sha256:" and 64 hex digits, as PrepareContext returns it', id);
    const text = await readFile(this.manifestPath(id), "utf8").catch(() => undefined);
    if (text === undefined) throw notFound(`context ${id} is not known here; call PrepareContext first`);
    return JSON.parse(text) as PreparedContextRecord;
  }

  /** A file of a prepared context from an offset, read in chunks. */
  async read(id: string, kind: ContextFileKind, offset: number, chunkBytes: number): Promise<NodeJS.ReadableStream> {
    if (offset < 0) throw invalidField("offset", "must not be negative", offset);
    const record = await this.describe(id);
    const listed = kind === "secret-step-context-zip" ? record.secretStepContext : record.files.find((candidate) => candidate.kind === kind);
    // repo.tar of a context whose Dockerfile does not refer to it is made on first read (a reader that cannot
    // see the directories on this host unpacks it instead).
    const file = listed ?? (kind === "repo-tar" ? this.fileRecord("repo-tar", "repo.tar", await this.repoTar(record.directories)) : undefined);
    if (!file) throw notFound(`context ${id} has no ${kind}`);
    if (offset > file.size) throw new ContextError("out-of-range", `offset: must be at most the size of ${file.name} (${file.size} bytes), got ${offset}`);
    return this.blobs.open(file.digest, offset, chunkBytes);
  }

  /** repo.tar from the cache, or written once from the directories however many requests ask for it at the same time. */
  private async repoTar(directories: LayerDirectory[], signal?: AbortSignal): Promise<BlobInfo> {
    const key = `${REPO_TAR_FORMAT} ${directories.map((directory) => directory.identity).join(" ")}`;
    const cached = await this.blobs.lookup(key);
    if (cached) return cached;
    for (const directory of directories) {
      if (!(await stat(directory.path).catch(() => undefined)))
        throw notFound(`the repository's ${directory.name} directory of this context is no longer kept; call PrepareContext again`);
    }
    return this.repoTars.run(
      key,
      async (workSignal) => {
        const info = await this.blobs.put((destination) => writeRepoTar(directories, destination, workSignal));
        await this.blobs.remember(key, info);
        return info;
      },
      signal,
    );
  }

  private manifestPath(id: string): string {
    return join(this.contextsDir, `${id.replace(":", "-")}.json`);
  }

  private saveManifest(record: PreparedContextRecord): void {
    const path = this.manifestPath(record.contextId);
    writeSmallFileAtomic(path, JSON.stringify(record), { mode: 0o600 });
  }
}

/** How many prepared contexts are remembered for requests that come again unchanged. */
const RECENT_CONTEXTS = 256;

/** What makes a prepared context: the whole request, with the folder resolved, at the commit its revision names. */
function recentKey(input: PrepareInput, repoFolder: string, gitSha: string): string {
  const { repositoryUrl, gitRev, excludeGitHistory, honorExportIgnore, properties, secretPointers, values } = input;
  const fields = [repositoryUrl, gitRev, repoFolder, gitSha, excludeGitHistory, honorExportIgnore, properties, secretPointers, values];
  return createHash("sha256").update(JSON.stringify(fields)).digest("hex");
}

/** A digest over the files' digests and the directories' identities: it changes exactly when any of them does. */
function contextId(
  files: ContextFileRecord[],
  secret: ContextFileRecord,
  directories: LayerDirectory[],
  options: RepositoryOptions,
  repoFolder: string,
): string {
  const lines = [
    // Two folders may give the same files (the default Dockerfile), but not the same place of the step context.
    `repo-folder ${repoFolder}\n`,
    ...[...files, secret].map((file) => `${file.kind} ${file.name} ${file.digest}\n`),
    ...directories.map((directory) => `directory ${directory.name} ${directory.identity}\n`),
    `options git-history=${!options.excludeGitHistory} export-ignore=${options.honorExportIgnore}\n`,
  ].join("");
  return `sha256:${createHash("sha256").update(lines).digest("hex")}`;
}

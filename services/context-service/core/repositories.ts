import { basename } from "node:path";
import type { TreeLookup } from "./dockerfile.js";
import { gitBytes, gitMaybe } from "./git.js";
import type { GitTrees } from "./git-tree.js";
import type { MirrorStore, ResolvedRevision } from "./mirrors.js";
import type { LayerDirectory, RepositoryLayers, RepositoryOptions } from "./repository-layers.js";

export interface Revision {
  gitSha: string;
  movingRef: boolean;
}

/** A resolved commit: what the context preparer reads from it. */
export interface Commit extends Revision {
  /** Things the user should know about the commit (submodules, LFS pointers). */
  warnings: string[];
  /** A stable id of the repository (its URL's digest). */
  repositoryId: string;
  lookup: TreeLookup;
  /** The repository at the commit as the build context's directories (see RepositoryLayers). */
  layers(options: RepositoryOptions, signal?: AbortSignal): Promise<LayerDirectory[]>;
}

/** Where commits come from: git mirrors in the service, in-memory trees in unit tests. */
export interface Repositories {
  resolve(repositoryUrl: string, gitRev: string, signal?: AbortSignal): Promise<Revision>;
  /** The commit a revision names; `resolved`, what resolve() just said for the same revision, saves a second look. */
  open(repositoryUrl: string, gitRev: string, signal?: AbortSignal, resolved?: Revision): Promise<Commit>;
}

const KINDS: Record<string, "file" | "executable" | "symlink" | "directory" | "submodule"> = {
  "100644": "file",
  "100755": "executable",
  "120000": "symlink",
  "040000": "directory",
  "160000": "submodule",
};

/** Repositories backed by bare mirrors and `git` itself. */
export class GitRepositories implements Repositories {
  constructor(
    private readonly mirrors: MirrorStore,
    private readonly trees: GitTrees,
    private readonly repositoryLayers: RepositoryLayers,
  ) {}

  resolve(repositoryUrl: string, gitRev: string, signal?: AbortSignal): Promise<ResolvedRevision> {
    return this.mirrors.resolve(repositoryUrl, gitRev, signal);
  }

  async open(repositoryUrl: string, gitRev: string, signal?: AbortSignal, resolved?: Revision): Promise<Commit> {
    const { mirror, gitSha, movingRef } =
      resolved && "mirror" in resolved ? (resolved as ResolvedRevision) : await this.mirrors.resolve(repositoryUrl, gitRev, signal);
    const { tree, warnings } = await this.trees.inspect(mirror, gitSha, signal);
    return {
      gitSha,
      movingRef,
      warnings,
      repositoryId: basename(mirror).replace(/\.git$/, ""),
      lookup: async (path) => {
        const listing = await gitMaybe(["ls-tree", "-z", "--long", gitSha, "--", path], { gitDir: mirror, signal });
        // "<mode> <type> <oid> <size>\t<path>\0"; a path inside a symlinked directory lists nothing.
        const record = listing?.split("\0").find((line) => line.endsWith(`\t${path}`));
        if (!record) return undefined;
        const [mode = "", , oid = "", size = "0"] = record.slice(0, record.indexOf("\t")).trim().split(/\s+/);
        const kind = KINDS[mode];
        if (!kind) return undefined;
        return {
          kind,
          size: Number(size) || 0,
          read: () => gitBytes(["cat-file", "blob", oid], { gitDir: mirror, signal }),
        };
      },
      layers: (options, layersSignal) => {
        const exportedPaths = options.honorExportIgnore ? () => this.trees.exportedPaths(mirror, gitSha, layersSignal) : undefined;
        return this.repositoryLayers.prepare(mirror, gitSha, tree, exportedPaths, options, layersSignal);
      },
    };
  }
}

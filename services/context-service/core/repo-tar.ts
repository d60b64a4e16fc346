import { createReadStream } from "node:fs";
import { lstat, readdir, readlink } from "node:fs/promises";
import { join } from "node:path";
import type { Writable } from "node:stream";
import type { LayerDirectory } from "./repository-layers.js";
import { TarWriter } from "./tar-writer.js";

interface Source {
  absolute: string;
  kind: "directory" | "file" | "executable" | "symlink";
  size: number;
}

/**
 * Writes repo.tar, the seed's form of the repository for Dockerfiles that refer to it: the working tree and
 * its .git, exactly what copying the layer directories in order gives (a later directory's file replaces an
 * earlier one's). Its tree and objects are a function of the commit and options; .git holds git's packs.
 */
export async function writeRepoTar(directories: LayerDirectory[], destination: Writable, signal?: AbortSignal): Promise<void> {
  const sources = new Map<string, Source>();
  for (const directory of directories) await collect(directory.path, "", sources);
  const out = new TarWriter(destination);
  try {
    for (const path of [...sources.keys()].sort()) {
      signal?.throwIfAborted();
      const source = sources.get(path)!;
      if (source.kind === "directory") await out.directory(path);
      else if (source.kind === "symlink") await out.symlink(path, await readlink(source.absolute));
      else await out.file(path, source.kind === "executable", source.size, createReadStream(source.absolute, { signal }));
    }
    await out.finish();
  } catch (error) {
    out.abort(error as Error);
    throw error;
  }
}

async function collect(root: string, relative: string, sources: Map<string, Source>): Promise<void> {
  for (const name of await readdir(join(root, relative))) {
    const path = relative ? `${relative}/${name}` : name;
    const absolute = join(root, path);
    const info = await lstat(absolute);
    if (info.isDirectory()) {
      sources.set(path, { absolute, kind: "directory", size: 0 });
      await collect(root, path, sources);
    } else if (info.isSymbolicLink()) {
      sources.set(path, { absolute, kind: "symlink", size: 0 });
    } else if (info.isFile()) {
      sources.set(path, { absolute, kind: info.mode & 0o100 ? "executable" : "file", size: info.size });
    }
  }
}

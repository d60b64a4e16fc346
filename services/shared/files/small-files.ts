import { existsSync, readdirSync, readFileSync, rmdirSync, unlinkSync, writeFileSync } from "node:fs";
import { readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";

/**
 * A small local file's text (a ref, a pid file, an identity file, runc's log), or undefined when it cannot be
 * read. Synchronous on purpose: such a read takes microseconds, where a round trip through libuv's thread pool
 * costs a tenth of a millisecond or more, and a warm step makes dozens of them on its path.
 */
export function readSmallFile(path: string): string | undefined {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return undefined;
  }
}

/**
 * Up to this size a file is read or written synchronously (readBytes, writeTextFile, the context-service's small
 * blobs): a millisecond at most on local disk. A larger one goes through the thread pool and holds up no other work.
 */
export const SMALL_FILE_BYTES = 1024 * 1024;

/**
 * A local file's bytes, or undefined when it cannot be read: at once when its size (as known beforehand) is
 * small, like readSmallFile; through the thread pool when it is large, so that it holds up no other work.
 */
export async function readBytes(path: string, sizeBytes: number): Promise<Buffer | undefined> {
  if (sizeBytes > SMALL_FILE_BYTES) return readFile(path).catch(() => undefined);
  try {
    return readFileSync(path);
  } catch {
    return undefined;
  }
}

/**
 * Writes a text file: at once when it is small, as readSmallFile reads (a step's step_context.json is a few
 * kilobytes, and the thread pool's three round trips for it cost a millisecond on a busy host); through the
 * thread pool when it is large, so that it holds up no other work.
 */
export async function writeTextFile(path: string, text: string, mode: number): Promise<void> {
  // Characters, not bytes: near enough for a threshold.
  if (text.length <= SMALL_FILE_BYTES) writeFileSync(path, text, { mode });
  else await writeFile(path, text, { mode });
}

/** How many entries a tree may hold to be removed synchronously (removeTree). */
const SYNC_REMOVE_ENTRIES = 64;

/**
 * Removes a directory tree (gone already is no error). A small one, such as a step's dozen directories and
 * files, is removed synchronously: each of the thread pool's round trips costs a tenth of a millisecond or more
 * on a busy host, and an asynchronous removal makes them one after another, level by level. A larger tree (or
 * one that changes under the removal) is removed asynchronously, so that it holds up no other work.
 */
export async function removeTree(path: string): Promise<void> {
  let budget = SYNC_REMOVE_ENTRIES;
  // True when the tree under dir is gone; false when it was found larger than the budget.
  const removeSmall = (dir: string): boolean => {
    const entries = readdirSync(dir, { withFileTypes: true });
    for (const entry of entries) {
      if (--budget < 0) return false;
      const child = join(dir, entry.name);
      if (!entry.isDirectory()) unlinkSync(child);
      else if (!removeSmall(child)) return false;
    }
    rmdirSync(dir);
    return true;
  };
  try {
    if (removeSmall(path)) return;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT" && !existsSync(path)) return;
  }
  await rm(path, { recursive: true, force: true });
}

import { randomBytes } from "node:crypto";
import { renameSync, rmSync, writeFileSync } from "node:fs";
import { rename, rm, writeFile } from "node:fs/promises";

/**
 * A fresh name beside path (same directory, so same filesystem: the rename is atomic), unique per call. Its
 * ".partial-" is what the services' start-up sweeps look for to remove what a crash left half-written.
 */
export function partialPath(path: string): string {
  return `${path}.partial-${process.pid}-${randomBytes(6).toString("hex")}`;
}

/**
 * Makes path appear complete or not at all: fill writes a file (or a directory) at a fresh partial path beside
 * it, which is then renamed over path. Readers see the old content or the new one, never a part of it; a
 * failure (of fill or of the rename) leaves no partial behind.
 */
export async function writeAtomically<T>(path: string, fill: (partial: string) => Promise<T>): Promise<T> {
  const partial = partialPath(path);
  try {
    const result = await fill(partial);
    await rename(partial, path);
    return result;
  } catch (error) {
    await rm(partial, { recursive: true, force: true });
    throw error;
  }
}

/** Writes data to path atomically (write-then-rename); mode applies to the new file. */
export function writeFileAtomic(path: string, data: string | Uint8Array, options: { mode?: number } = {}): Promise<void> {
  return writeAtomically(path, (partial) => writeFile(partial, data, options.mode === undefined ? {} : { mode: options.mode }));
}

/**
 * writeFileAtomic for a small file (a manifest, a step context's zip), synchronously: each of the thread pool's
 * round trips costs a tenth of a millisecond or more on a busy host, and an atomic write makes four.
 */
export function writeSmallFileAtomic(path: string, data: string | Uint8Array, options: { mode?: number } = {}): void {
  const partial = partialPath(path);
  try {
    writeFileSync(partial, data, options.mode === undefined ? {} : { mode: options.mode });
    renameSync(partial, path);
  } catch (error) {
    rmSync(partial, { force: true });
    throw error;
  }
}

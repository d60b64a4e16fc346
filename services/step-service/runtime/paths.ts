import { lstat } from "node:fs/promises";
import { join } from "node:path";

/** A path inside a container's filesystem led elsewhere. */
export class UnsafePathError extends Error {}

/**
 * The host path of `inner` under `root`, refusing symlinks on the way (the last component included): the
 * image and the step's output are not trusted, and a symlink there resolves on the host, where the service
 * reads and writes as root. Missing components are fine (they are created afterwards).
 */
export async function insideRoot(root: string, inner: string): Promise<string> {
  const parts = inner.split("/").filter((part) => part !== "" && part !== ".");
  if (parts.includes("..")) throw new UnsafePathError(`${inner} climbs out of the container's filesystem`);
  let current = root;
  for (const part of parts) {
    current = join(current, part);
    const info = await lstat(current).catch(() => undefined);
    if (!info) break;
    if (info.isSymbolicLink()) throw new UnsafePathError(`${inner} is or goes through a symlink in the container's filesystem`);
  }
  return join(root, ...parts);
}

import { lstatSync, type Stats } from "node:fs";
import { join } from "node:path";

/** A path inside a container's filesystem led elsewhere. */
export class UnsafePathError extends Error {}

/**
 * The host path of `inner` under `root`, refusing symlinks on the way (the last component included): the
 * image and the step's output are not trusted, and a symlink there resolves on the host, where the service
 * reads and writes as root. Missing components are fine (they are created afterwards). Synchronous: a few
 * lstats of a step's own directories (container.ts, SYNC_FILE_WORK).
 */
export function insideRoot(root: string, inner: string): string {
  const parts = inner.split("/").filter((part) => part !== "" && part !== ".");
  if (parts.includes("..")) throw new UnsafePathError(`${inner} climbs out of the container's filesystem`);
  let current = root;
  for (const part of parts) {
    current = join(current, part);
    const info = lstatOrNothing(current);
    if (!info) break;
    if (info.isSymbolicLink()) throw new UnsafePathError(`${inner} is or goes through a symlink in the container's filesystem`);
  }
  return join(root, ...parts);
}

/** What lstat says of a path, or undefined when it cannot say (missing, or under a file). */
function lstatOrNothing(path: string): Stats | undefined {
  try {
    return lstatSync(path);
  } catch {
    return undefined;
  }
}

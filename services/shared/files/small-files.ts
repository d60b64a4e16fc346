import { readFileSync } from "node:fs";

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

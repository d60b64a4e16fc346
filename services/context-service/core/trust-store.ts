import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { dockerfileInstructions } from "../../shared/dockerfile-instructions.js";
import { TarWriter } from "./tar-writer.js";

/** The build context file OpsChain's sample Dockerfile ADDs into its trust_store stage. */
export const TRUST_STORE_TAR = "opschain-trust-store.tar";

/** Whether a Dockerfile names opschain-trust-store.tar (it is made, and listed, only then). */
export function refersToTrustStore(text: string): boolean {
  return dockerfileInstructions(text).some(({ body }) => body.includes(TRUST_STORE_TAR));
}

/**
 * opschain-trust-store.tar: the regular files directly in `dir` (CA certificates, e.g. *.crt), sorted by
 * name, with fixed times and owners, so the same certificates always give the same bytes; an empty tar when
 * `dir` is empty, unset or absent.
 */
export async function trustStoreTar(dir: string): Promise<Buffer> {
  const entries = dir ? await readdir(dir, { withFileTypes: true }).catch(() => []) : [];
  const files = entries
    .filter((entry) => entry.isFile())
    .map((entry) => entry.name)
    .sort();
  const sink = new PassThrough();
  const chunks: Buffer[] = [];
  sink.on("data", (chunk: Buffer) => chunks.push(chunk));
  const writer = new TarWriter(sink);
  for (const name of files) {
    const body = await readFile(join(dir, name));
    await writer.file(name, false, body.length, body);
  }
  await writer.finish();
  await writer.done;
  return Buffer.concat(chunks);
}

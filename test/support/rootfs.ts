import { spawn } from "node:child_process";
import { pipeline } from "node:stream/promises";
import { parseImageReference } from "../../services/shared/registry/image-reference.js";
import { RegistryClient } from "../../services/shared/registry/registry-client.js";

/**
 * Unpacks an image from the registry into a directory with GNU tar, layer by layer. Enough for tests of
 * images without whiteouts (the base runner has one layer); the step-service has its own layer store.
 */
export async function unpackImage(imageReference: string, rootfs: string): Promise<void> {
  const reference = parseImageReference(imageReference);
  const registry = new RegistryClient(reference.registry);
  const { manifest } = await registry.manifest(reference.repository, reference.reference);
  for (const layer of manifest.layers) {
    const gzip = layer.mediaType.endsWith("gzip");
    const tar = spawn("tar", ["-x", ...(gzip ? ["-z"] : []), "--numeric-owner", "-C", rootfs, "-f", "-"], { stdio: ["pipe", "inherit", "inherit"] });
    const exited = new Promise<number | null>((resolve) => tar.once("close", resolve));
    await pipeline(await registry.blob(reference.repository, layer.digest), tar.stdin);
    const code = await exited;
    if (code !== 0) throw new Error(`tar failed (${code}) unpacking ${layer.digest}`);
  }
}

// Pushes a root filesystem to the registry as a one-layer image, without a Docker daemon: the base images of the
// local stack reach a standalone buildkitd this way, and dockerd pulls them from the registry like any image.
// Usage: node dist/deploy/local/push-rootfs.js REF ROOTFS [--user U] [--workdir W] [--env K=V]… [--label K=V]…
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { Readable, Transform } from "node:stream";
import { parseArgs } from "node:util";
import { createGzip } from "node:zlib";
import { parseImageReference } from "../../services/shared/registry/image-reference.js";
import { type ImageConfigFile, RegistryClient } from "../../services/shared/registry/registry-client.js";

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: {
    user: { type: "string" },
    workdir: { type: "string" },
    env: { type: "string", multiple: true, default: [] },
    label: { type: "string", multiple: true, default: [] },
  },
});
const [ref, rootfs] = positionals;
if (!ref || !rootfs) {
  console.error("usage: push-rootfs REF ROOTFS [--user U] [--workdir W] [--env K=V]… [--label K=V]…");
  process.exit(2);
}
const reference = parseImageReference(ref);
const registry = new RegistryClient(reference.registry);

// The layer is the tar of the root filesystem (numeric owners, as the image's users are the rootfs' own),
// gzipped; its diff_id is the digest of the tar itself.
const tar = spawn("tar", ["-C", rootfs, "--numeric-owner", "-c", "."], { stdio: ["ignore", "pipe", "inherit"] });
const tarExited = new Promise<void>((resolve, reject) =>
  tar.once("close", (code) => (code === 0 ? resolve() : reject(new Error(`tar of ${rootfs} exited with ${code}`)))),
);
const uncompressed = createHash("sha256");
const layerStream = tar.stdout
  .pipe(
    new Transform({
      transform(chunk: Buffer, _encoding, callback) {
        uncompressed.update(chunk);
        callback(null, chunk);
      },
    }),
  )
  .pipe(createGzip({ level: 1 }));
const layer = await registry.pushBlob(reference.repository, layerStream);
await tarExited;

const config: ImageConfigFile & { created: string } = {
  architecture: "amd64",
  os: "linux",
  created: new Date(0).toISOString(),
  config: {
    ...(values.user ? { User: values.user } : {}),
    ...(values.workdir ? { WorkingDir: values.workdir } : {}),
    Env: values.env,
    Labels: Object.fromEntries(values.label.map((pair) => [pair.slice(0, pair.indexOf("=")), pair.slice(pair.indexOf("=") + 1)])),
  },
  rootfs: { type: "layers", diff_ids: [`sha256:${uncompressed.digest("hex")}`] },
};
const configBytes = Buffer.from(JSON.stringify(config));
const configBlob = await registry.pushBlob(reference.repository, Readable.from([configBytes]));
const digest = await registry.putManifest(reference.repository, reference.reference, {
  schemaVersion: 2,
  mediaType: "application/vnd.docker.distribution.manifest.v2+json",
  config: { mediaType: "application/vnd.docker.container.image.v1+json", ...configBlob },
  layers: [{ mediaType: "application/vnd.docker.image.rootfs.diff.tar.gzip", ...layer }],
});
console.log(digest);

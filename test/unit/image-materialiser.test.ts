import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import tar from "tar-stream";
import { createLogger } from "../../services/shared/log.js";
import { ImageMaterialiser } from "../../services/step-service/images/images.js";
import { LayerStore } from "../../services/step-service/images/layer-store.js";

const sha256 = (bytes: Buffer) => `sha256:${createHash("sha256").update(bytes).digest("hex")}`;

async function layerTar(): Promise<Buffer> {
  const pack = tar.pack();
  pack.entry({ name: "hello.txt", mode: 0o644 }, "hello");
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const chunk of pack as unknown as AsyncIterable<Buffer>) chunks.push(chunk);
  return Buffer.concat(chunks);
}

describe("ImageMaterialiser on the registry hand-off", () => {
  let server: Server;
  let root: string;
  const requests: string[] = [];
  let reference: string;

  before(async () => {
    const layer = await layerTar();
    const config = Buffer.from(JSON.stringify({ config: { Env: ["A=1"], User: "" }, rootfs: { type: "layers", diff_ids: [sha256(layer)] } }));
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: "application/vnd.oci.image.manifest.v1+json",
        config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: sha256(config), size: config.length },
        layers: [{ mediaType: "application/vnd.oci.image.layer.v1.tar", digest: sha256(layer), size: layer.length }],
      }),
    );
    const served = new Map([
      [`/v2/steps/manifests/${sha256(manifest)}`, manifest],
      [`/v2/steps/blobs/${sha256(config)}`, config],
      [`/v2/steps/blobs/${sha256(layer)}`, layer],
    ]);
    server = createServer((request, response) => {
      requests.push(request.url!);
      const body = served.get(request.url!);
      if (body) response.end(body);
      else response.writeHead(404).end();
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    reference = `127.0.0.1:${(server.address() as AddressInfo).port}/steps@${sha256(manifest)}`;
    root = await mkdtemp(join(tmpdir(), "steprunner-materialiser-"));
  });
  after(async () => {
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await rm(root, { recursive: true, force: true });
  });

  it("pulls an image once; the same image again asks the registry nothing", async () => {
    const layers = new LayerStore(root, 1 << 30, createLogger("test", {}, { quiet: true }));
    await layers.init();
    const materialiser = new ImageMaterialiser(layers);
    const signal = new AbortController().signal;
    const first = await materialiser.materialise({ kind: "registry", reference }, signal);
    first.release();
    assert.equal(requests.length, 3, `manifest, config and layer: ${requests.join(", ")}`);
    const again = await materialiser.materialise({ kind: "registry", reference }, signal);
    again.release();
    assert.equal(requests.length, 3, "no request for a warm step's image");
    assert.deepEqual(again.lowerDirs, first.lowerDirs);
    assert.deepEqual(again.config.env, ["A=1"]);
  });
});

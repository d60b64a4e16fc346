import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { parseImageReference } from "../../services/shared/registry/image-reference.js";
import { RegistryClient, RegistryError } from "../../services/shared/registry/registry-client.js";
import { samePassOnEither, stack } from "../support/stack.js";

describe("the local registry", samePassOnEither("no BuildKit"), () => {
  const registry = new RegistryClient(stack.registry);

  it("answers /v2/ on loopback", async () => {
    const response = await fetch(`http://${stack.registry}/v2/`);
    assert.equal(response.status, 200);
    assert.equal(response.headers.get("docker-distribution-api-version"), "registry/2.0");
    assert.match(stack.registry, /^(127\.|localhost:)/);
  });

  it("holds the base runner image, built for the opschain user, with verified layers", async () => {
    const reference = parseImageReference(stack.baseRunner);
    const { digest, manifest } = await registry.manifest(reference.repository, reference.reference);
    assert.match(digest, /^sha256:[0-9a-f]{64}$/);
    assert.ok(manifest.layers.length >= 1);
    const config = await registry.config(reference.repository, manifest.config);
    assert.equal(config.config?.User, "opschain");
    assert.equal(config.config?.WorkingDir, "/opt/opschain");
    assert.match(config.config?.Labels?.["org.steprunner.inputs"] ?? "", /^[0-9a-f]{64}$/);
    assert.equal(config.rootfs.diff_ids.length, manifest.layers.length);
    // Reading a layer through the digest check proves the bytes are what the manifest says.
    const layer = manifest.layers[0]!;
    let size = 0;
    for await (const chunk of await registry.blob(reference.repository, layer.digest)) size += (chunk as Buffer).length;
    assert.equal(size, layer.size);
  });

  it("says NOT FOUND for an image it does not hold", async () => {
    await assert.rejects(registry.manifest("steprunner/no-such-image", "1"), (error: unknown) => error instanceof RegistryError && error.status === 404);
  });
});

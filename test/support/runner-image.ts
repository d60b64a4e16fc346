import { createHash } from "node:crypto";
import { readdir, readFile } from "node:fs/promises";
import { join, relative } from "node:path";
import { gzipSync } from "node:zlib";
import tar from "tar-stream";
import { parseImageReference } from "../../services/shared/registry/image-reference.js";
import { MANIFEST_MEDIA_TYPES, RegistryClient } from "../../services/shared/registry/registry-client.js";
import { ROOT, stack } from "./stack.js";

let pushed: Promise<string> | undefined;

/**
 * The base runner with this worktree's deploy/runner/bin/ and lib/ as one more layer, pushed under a tag named by the
 * layer's digest. Other worktrees push their own base runner under the shared tag; the step entry under test
 * must be the one here. (It also gives the layer store a two-layer image.)
 */
export function testRunnerImage(): Promise<string> {
  pushed ??= push();
  return pushed;
}

async function push(): Promise<string> {
  const base = parseImageReference(stack.baseRunner);
  const registry = new RegistryClient(base.registry);
  const url = `http://${base.registry}/v2/${base.repository}`;
  const { manifest } = await registry.manifest(base.repository, base.reference);
  const config = (await registry.config(base.repository, manifest.config)) as unknown as { rootfs: { diff_ids: string[] }; history?: object[] };

  // The commands beside the library and linked into /usr/local/bin, as runner-image.sh installs them.
  const binDir = join(ROOT, "deploy/runner/bin");
  const pack = tar.pack();
  for (const name of (await readdir(binDir)).sort()) {
    const installed = `/usr/local/lib/opschain-core/bin/${name}`;
    pack.entry({ name: installed.slice(1), mode: 0o755, uid: 0, gid: 0, mtime: new Date(0) }, await readFile(join(binDir, name)));
    pack.entry({ name: `usr/local/bin/${name}`, type: "symlink", linkname: installed, mode: 0o777, uid: 0, gid: 0, mtime: new Date(0) });
  }
  // The opschain library, where runner-image.sh installs it as the gem opschain-core.
  const libDir = join(ROOT, "deploy/runner/lib");
  for (const entry of (await readdir(libDir, { recursive: true, withFileTypes: true })).sort((a, b) =>
    join(a.parentPath, a.name).localeCompare(join(b.parentPath, b.name)),
  )) {
    const path = relative(libDir, join(entry.parentPath, entry.name));
    const name = `usr/local/lib/opschain-core/lib/${path}`;
    if (entry.isDirectory()) pack.entry({ name, type: "directory", mode: 0o755, uid: 0, gid: 0, mtime: new Date(0) });
    else pack.entry({ name, mode: 0o644, uid: 0, gid: 0, mtime: new Date(0) }, await readFile(join(libDir, path)));
  }
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const chunk of pack as unknown as AsyncIterable<Buffer>) chunks.push(chunk);
  const layerTar = Buffer.concat(chunks);
  const layer = gzipSync(layerTar);
  const layerDigest = sha256(layer);
  const tag = `${base.reference}-steptest-${layerDigest.slice(7, 19)}`;

  config.rootfs.diff_ids = [...config.rootfs.diff_ids, sha256(layerTar)];
  config.history = [...(config.history ?? []), { created_by: "test: deploy/runner/bin of this worktree" }];
  const configBytes = Buffer.from(JSON.stringify(config));
  await upload(url, layer);
  await upload(url, configBytes);
  const newManifest = {
    schemaVersion: 2,
    mediaType: MANIFEST_MEDIA_TYPES[0],
    config: { mediaType: "application/vnd.docker.container.image.v1+json", digest: sha256(configBytes), size: configBytes.length },
    layers: [...manifest.layers, { mediaType: "application/vnd.docker.image.rootfs.diff.tar.gzip", digest: layerDigest, size: layer.length }],
  };
  const response = await fetch(`${url}/manifests/${tag}`, {
    method: "PUT",
    headers: { "content-type": MANIFEST_MEDIA_TYPES[0] },
    body: JSON.stringify(newManifest),
  });
  if (!response.ok) throw new Error(`pushing the test runner manifest answered ${response.status}: ${await response.text()}`);
  return `${base.registry}/${base.repository}:${tag}`;
}

async function upload(url: string, bytes: Buffer): Promise<void> {
  const digest = sha256(bytes);
  if ((await fetch(`${url}/blobs/${digest}`, { method: "HEAD" })).ok) return;
  const start = await fetch(`${url}/blobs/uploads/`, { method: "POST" });
  const location = start.headers.get("location");
  if (start.status !== 202 || !location) throw new Error(`starting a blob upload answered ${start.status}`);
  const target = new URL(location, url);
  target.searchParams.set("digest", digest);
  const done = await fetch(target, { method: "PUT", headers: { "content-type": "application/octet-stream" }, body: bytes });
  if (done.status !== 201) throw new Error(`uploading ${digest} answered ${done.status}: ${await done.text()}`);
}

function sha256(bytes: Buffer): string {
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}

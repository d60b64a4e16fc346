import assert from "node:assert/strict";
import { readFile, readdir } from "node:fs/promises";
import { join } from "node:path";
import { describe, it } from "node:test";
import { parseAllDocuments, parse } from "yaml";
import { ROOT, run } from "../support/stack.js";

type Manifest = { apiVersion: string; kind: string; metadata: { name: string; namespace?: string } } & Record<string, unknown>;

/** Validates one object against the Kubernetes OpenAPI schemas that the kubernetes-models package ships. */
async function validate(manifest: Manifest): Promise<void> {
  const module = await import(`kubernetes-models/${manifest.apiVersion}`);
  const Model = module[manifest.kind];
  if (!Model) throw new Error(`unknown kind ${manifest.apiVersion} ${manifest.kind}`);
  new Model(manifest).validate();
}

async function manifests(): Promise<Array<{ file: string; manifest: Manifest }>> {
  const dir = join(ROOT, "deploy/kubernetes");
  const files = (await readdir(dir)).filter((file) => file.endsWith(".yaml") && file !== "kustomization.yaml").sort();
  const all = [];
  for (const file of files) {
    for (const document of parseAllDocuments(await readFile(join(dir, file), "utf8"))) {
      if (document.errors.length) throw new Error(`${file}: ${document.errors[0]!.message}`);
      all.push({ file, manifest: document.toJS() as Manifest });
    }
  }
  return all;
}

describe("deployment manifests (validated offline)", () => {
  it("are valid Kubernetes objects", async () => {
    const all = await manifests();
    assert.ok(all.length >= 12, `found ${all.length}`);
    for (const { file, manifest } of all) {
      await assert.doesNotReject(validate(manifest), `${file}: ${manifest.kind} ${manifest.metadata?.name}`);
    }
  });

  it("would catch a malformed object", async () => {
    const deployment = (await manifests()).find(({ manifest }) => manifest.kind === "Deployment")!.manifest;
    await assert.rejects(validate({ ...deployment, spec: { ...(deployment.spec as object), replicas: "two" } }));
  });

  it("deploy the parts the architecture names, in one namespace", async () => {
    const all = (await manifests()).map(({ manifest }) => manifest);
    const names = (kind: string) => all.filter((manifest) => manifest.kind === kind).map((manifest) => manifest.metadata.name).sort();
    assert.deepEqual(names("StatefulSet"), ["buildkitd"]);
    assert.deepEqual(names("Deployment"), ["context-service", "image-service", "registry"]);
    assert.deepEqual(names("DaemonSet"), ["step-service"]);
    const step = all.find((manifest) => manifest.kind === "DaemonSet")!;
    assert.match(JSON.stringify(step), /"privileged":true/);
    for (const manifest of all.filter((m) => m.kind !== "Namespace")) assert.equal(manifest.metadata.namespace, "steprunner");
    const kustomization = parse(await readFile(join(ROOT, "deploy/kubernetes/kustomization.yaml"), "utf8"));
    const resources: string[] = kustomization.resources;
    const files = (await readdir(join(ROOT, "deploy/kubernetes"))).filter((file) => file.endsWith(".yaml") && file !== "kustomization.yaml");
    assert.deepEqual([...resources].sort(), files.sort(), "the kustomization lists every manifest");
  });

  it("has a compose file for one host that Debian's docker-compose accepts", async () => {
    const result = await run("docker-compose", ["-f", join(ROOT, "deploy/compose/compose.yaml"), "config", "-q"]);
    assert.equal(result.code, 0, result.stderr);
  });
});

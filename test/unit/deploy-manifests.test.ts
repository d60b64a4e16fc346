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
    const names = (kind: string) =>
      all
        .filter((manifest) => manifest.kind === kind)
        .map((manifest) => manifest.metadata.name)
        .sort();
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

  // The topology test/integration/multi-host.test.ts runs: two buildkitd, two step-services with their own
  // state, runc roots and addresses, one registry, one context- and one image-service listing both buildkitd.
  it("describe on Kubernetes the multi-host topology that was run", async () => {
    const all = (await manifests()).map(({ manifest }) => manifest);
    const find = (kind: string, name: string) => all.find((manifest) => manifest.kind === kind && manifest.metadata.name === name) as Record<string, any>;
    const buildkitd = find("StatefulSet", "buildkitd");
    assert.equal(buildkitd.spec.replicas, 2);
    for (const name of ["registry", "context-service", "image-service"]) assert.equal(find("Deployment", name).spec.replicas, 1, name);
    const config = find("ConfigMap", "steprunner").data;
    const service = buildkitd.spec.serviceName;
    const port = buildkitd.spec.template.spec.containers[0].ports[0].containerPort;
    assert.deepEqual(
      config.STEPRUNNER_BUILDKIT_ADDR.split(","),
      [0, 1].map((pod) => `tcp://${service}-${pod}.${service}.steprunner.svc:${port}`),
      "the image-service lists both pods",
    );
    const args: string[] = buildkitd.spec.template.spec.containers[0].args;
    assert.ok(args.includes("--allow-insecure-entitlement=network.host"));
    const toml = find("ConfigMap", "buildkitd").data["buildkitd.toml"];
    assert.ok(toml.includes(`[registry."${config.STEPRUNNER_REGISTRY_ADDR}"]`) && /http = true/.test(toml), "buildkitd pushes to our registry over HTTP");
    assert.equal(config.STEPRUNNER_IMAGE_HANDOFF, "registry");
    const step = find("DaemonSet", "step-service");
    assert.equal(step.spec.template.spec.nodeSelector["steprunner.io/step-node"], "true");
    assert.ok(
      step.spec.template.spec.volumes.some((volume: any) => volume.hostPath?.path === "/var/lib/steprunner"),
      "each node's step-service has its own state on its node",
    );
  });

  it("describe with Compose the multi-host topology that was run", async () => {
    const result = await run("docker-compose", ["-f", join(ROOT, "deploy/compose/compose.yaml"), "config"]);
    assert.equal(result.code, 0, result.stderr);
    const services: Record<string, { image: string; command?: string; environment: Record<string, string> }> = parse(result.stdout).services;
    const byImage = (image: string) =>
      Object.keys(services)
        .filter((name) => services[name]!.image.split(":")[0] === image)
        .sort();
    assert.deepEqual(byImage("steprunner/buildkitd"), ["buildkitd-0", "buildkitd-1"]);
    assert.deepEqual(byImage("steprunner/step-service"), ["step-service-0", "step-service-1"]);
    for (const image of ["steprunner/registry", "steprunner/context-service", "steprunner/image-service"]) assert.equal(byImage(image).length, 1, image);
    const sockets = byImage("steprunner/buildkitd").map((name) => /--addr (\S+)/.exec(services[name]!.command ?? "")![1]);
    assert.deepEqual(services["image-service"]!.environment.STEPRUNNER_BUILDKIT_ADDR!.split(","), sockets, "the image-service lists both buildkitd");
    const steps = byImage("steprunner/step-service").map((name) => services[name]!.environment);
    for (const setting of ["STEPRUNNER_STEP_ADDR", "STEPRUNNER_STEP_STATE_DIR", "STEPRUNNER_STEP_RUNC_ROOT"]) {
      assert.equal(new Set(steps.map((environment) => environment[setting])).size, 2, `each step-service has its own ${setting}`);
    }
  });
});

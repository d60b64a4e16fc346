import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { writeFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { createRouterTransport } from "@connectrpc/connect";
import { zipSync } from "fflate";
import { ContextService } from "../../gen/steprunner/context/v1/context_service_pb.js";
import { ContextServicePreparer } from "../../services/step-service/clients/context-service-preparer.js";
import type { StepRequest } from "../../services/step-service/steps/ports.js";
import { stepRequest } from "../support/step-request.js";

const zipOf = (document: object) => zipSync({ "step_context.json": new TextEncoder().encode(JSON.stringify(document)) });

/** A context-service in memory that counts its calls: the step context of a request is its properties. */
function fakeContextService(hostPathOf: (zip: Uint8Array) => string = () => "") {
  const calls = { prepareContext: 0, readContextFile: 0 };
  const zips = new Map<string, Uint8Array>();
  const transport = createRouterTransport(({ service }) =>
    service(ContextService, {
      prepareContext(request) {
        calls.prepareContext++;
        const zip = zipOf({ properties: request.properties.map((set) => set.properties) });
        const digest = `sha256:${createHash("sha256").update(zip).digest("hex")}`;
        const contextId = `sha256:${createHash("sha256").update(`context ${digest}`).digest("hex")}`;
        zips.set(contextId, zip);
        return {
          context: {
            contextId,
            gitSha: "a".repeat(40),
            repoFolder: ".mintpress",
            secretStepContext: { digest, sizeBytes: BigInt(zip.length), hostPath: hostPathOf(zip) },
          },
        };
      },
      async *readContextFile(request) {
        calls.readContextFile++;
        yield { chunk: zips.get(request.contextId)! };
      },
    }),
  );
  return { calls, transport };
}

const request = (run: number): StepRequest => stepRequest({ properties: [{ owner: "project", properties: { run } }], timeoutMs: 1000 });

describe("the step-service's context-service client", () => {
  it("reads a step context once per content: a warm step makes one PrepareContext and no ReadContextFile", async () => {
    const { calls, transport } = fakeContextService();
    const preparer = new ContextServicePreparer(transport);
    const parts: string[] = [];
    const signal = new AbortController().signal;
    const first = await preparer.prepare(request(1), signal, (name) => parts.push(name));
    assert.deepEqual(first.stepContext, { properties: [{ run: 1 }] });
    assert.deepEqual(calls, { prepareContext: 1, readContextFile: 1 });
    assert.deepEqual(parts, ["prepare-context-rpc", "read-step-context-rpc"]);

    const warm = await preparer.prepare(request(1), signal, (name) => parts.push(name));
    assert.deepEqual(warm.stepContext, first.stepContext);
    assert.deepEqual(calls, { prepareContext: 2, readContextFile: 1 }, "the warm step's context is the one read before");
    assert.equal(parts.at(-1), "step-context-kept");

    assert.deepEqual((await preparer.prepare(request(2), signal)).stepContext, { properties: [{ run: 2 }] });
    assert.deepEqual(calls, { prepareContext: 3, readContextFile: 2 }, "other properties are read");
  });

  it("reads a step context from the context-service's file when it shares the filesystem and the digest matches", async () => {
    const dir = await mkdtemp(join(tmpdir(), "shared-step-context-"));
    try {
      let tamper = false;
      const { calls, transport } = fakeContextService((zip) => {
        const path = join(dir, `${createHash("sha256").update(zip).digest("hex")}.zip`);
        writeFileSync(path, tamper ? zipOf({ properties: ["tampered"] }) : zip);
        return path;
      });
      const preparer = new ContextServicePreparer(transport);
      const parts: string[] = [];
      const signal = new AbortController().signal;
      assert.deepEqual((await preparer.prepare(request(1), signal, (name) => parts.push(name))).stepContext, { properties: [{ run: 1 }] });
      assert.deepEqual(calls, { prepareContext: 1, readContextFile: 0 }, "read from the file");
      assert.equal(parts.at(-1), "step-context-shared-file");
      tamper = true;
      assert.deepEqual(
        (await preparer.prepare(request(2), signal)).stepContext,
        { properties: [{ run: 2 }] },
        "a file that is not what the digest says is not used",
      );
      assert.deepEqual(calls, { prepareContext: 2, readContextFile: 1 });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

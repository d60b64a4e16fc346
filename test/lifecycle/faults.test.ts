import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { run, stack } from "../support/stack.js";
import { FaultStack } from "../faults/stack.js";
import { BUILDKIT_FAULT_KINDS, FAULT_KINDS, FaultSuite } from "../faults/suite.js";

// The fast part of the fault suite (npm run faults runs the full one on a stack of its own): one fault of each
// kind against the test stack, which it restarts in parts; on a standalone buildkitd, the kinds that concern
// BuildKit (the rest do not depend on which BuildKit runs, and CI runs them on dockerd's). It leaves the stack as it found it, up or down, so
// that it does not matter whether it runs before or after stack.test.ts.

const daemons = [`${stack.buildkit}.sh`, "registry.sh", "services.sh"];
const kinds = stack.buildkit === "buildkitd" ? BUILDKIT_FAULT_KINDS : FAULT_KINDS;

async function stackUp(): Promise<boolean> {
  for (const script of daemons) {
    if ((await run(`deploy/local/${script}`, ["status"])).code !== 0) return false;
  }
  return true;
}

describe("fault injection, one fault of each kind", () => {
  it("leaves no container, mount, cgroup, BuildKit job or temporary file, and loses no record", { timeout: 360_000 }, async () => {
    const wasUp = await stackUp();
    if (!wasUp) {
      const up = await run("deploy/local/up.sh", [], { timeoutMs: 600_000 });
      assert.equal(up.code, 0, up.stderr);
    }
    const faults = new FaultStack();
    try {
      const results = await new FaultSuite(faults, { perKind: 1, kinds }).run();
      const injected = Object.fromEntries(results.map((result) => [result.kind, result.injected]));
      assert.deepEqual(injected, Object.fromEntries(kinds.map((kind) => [kind, 1])));
      const findings = results.flatMap((result) => [...result.leaks, ...result.lost.map((id) => `lost record ${id}`), ...result.bad]);
      assert.deepEqual(findings, []);
    } finally {
      faults.close();
      if (wasUp) {
        for (const script of daemons) await run(`deploy/local/${script}`, ["start"], { timeoutMs: 120_000 });
      } else {
        await run("deploy/local/down.sh", [], { timeoutMs: 300_000 });
      }
    }
    assert.equal(await stackUp(), wasUp, "the stack is as the test found it");
  });
});

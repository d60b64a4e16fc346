import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { configFromEnv, defaultMaxConcurrentSteps } from "../../services/step-service/service.js";

const GiB = 1024 ** 3;

describe("the step-service's default number of steps at once", () => {
  it("is two per CPU, within what the host's memory holds at each step's memory limit", () => {
    assert.equal(defaultMaxConcurrentSteps(2, 24 * GiB, GiB), 4);
    assert.equal(defaultMaxConcurrentSteps(16, 64 * GiB, GiB), 32);
    assert.equal(defaultMaxConcurrentSteps(16, 8 * GiB, GiB), 8, "memory-bound");
    assert.equal(defaultMaxConcurrentSteps(16, 64 * GiB, 4 * GiB), 16, "larger steps, fewer at once");
    assert.equal(defaultMaxConcurrentSteps(1, GiB / 2, GiB), 1, "always at least one");
  });

  it("gives way to STEPRUNNER_MAX_CONCURRENT_STEPS, and follows STEPRUNNER_STEP_MEMORY_MB", () => {
    const saved = { ...process.env };
    try {
      process.env.STEPRUNNER_MAX_CONCURRENT_STEPS = "7";
      assert.equal(configFromEnv().maxConcurrentSteps, 7);
      delete process.env.STEPRUNNER_MAX_CONCURRENT_STEPS;
      // A step limit larger than any host's memory leaves one step at a time.
      process.env.STEPRUNNER_STEP_MEMORY_MB = String(1024 * 1024 * 1024);
      const config = configFromEnv();
      assert.equal(config.maxConcurrentSteps, 1);
      assert.equal(config.defaultLimits.memoryBytes, 1024 ** 5);
    } finally {
      process.env = saved;
    }
  });
});

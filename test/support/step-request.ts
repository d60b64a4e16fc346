import type { StepRequest } from "../../services/step-service/steps/ports.js";

/** A validated RunStep request, as the step-service's core takes it: defaults of a plain step, with overrides. */
export function stepRequest(overrides: Partial<StepRequest> = {}): StepRequest {
  return {
    stepId: "",
    repositoryUrl: "/repo",
    gitRev: "main",
    action: "hello",
    properties: [],
    secretPointers: [],
    contextValues: {},
    repoFolder: ".mintpress",
    excludeGitHistory: false,
    timeoutMs: 10_000,
    hostNetwork: false,
    limits: { memoryBytes: 64 * 1024 * 1024, cpuMillis: 1000, pids: 64 },
    buildWithoutCache: false,
    ...overrides,
  };
}

import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { LogStream, VertexState } from "../../gen/steprunner/image/v1/image_service_pb.js";
import { Phase, type RunStepResponse, RunStepResponseSchema, StepState } from "../../gen/steprunner/step/v1/step_service_pb.js";

/**
 * A step's RunStep events as the step-service sends them, each with when it arrived (ms after t0, when the
 * step was accepted; the events' own times count from there too): a two-vertex build whose RUN logs, then
 * the action's log lines and a success.
 */
export function recordedStepEvents(t0: number): { atMs: number; response: RunStepResponse }[] {
  const at = (ms: number) => timestampFromMs(t0 + ms);
  const vertex = (digest: string, number: number, name: string, state: VertexState, startedMs?: number, completedMs?: number) => ({
    digest,
    number,
    name,
    state,
    ...(startedMs === undefined ? {} : { startedAt: at(startedMs) }),
    ...(completedMs === undefined ? {} : { completedAt: at(completedMs) }),
  });

  return [
    { atMs: 0, event: { case: "accepted" as const, value: { step: { id: "step-1", action: "deploy", state: StepState.QUEUED } } } },
    { atMs: 0, event: { case: "phaseChanged" as const, value: { state: StepState.QUEUED, phase: Phase.QUEUE, time: at(0) } } },
    { atMs: 100, event: { case: "phaseChanged" as const, value: { state: StepState.PREPARING, phase: Phase.CONTEXT, time: at(100) } } },
    { atMs: 400, event: { case: "phaseChanged" as const, value: { state: StepState.BUILDING, phase: Phase.BUILD, time: at(400) } } },
    {
      atMs: 500,
      event: {
        case: "buildProgress" as const,
        value: { vertexes: [vertex("sha256:a", 1, "[1/2] FROM 127.0.0.1:5000/steprunner/runner:0.1.0", VertexState.STARTED, 450)] },
      },
    },
    {
      atMs: 700,
      event: {
        case: "buildProgress" as const,
        value: {
          vertexes: [
            vertex("sha256:a", 1, "[1/2] FROM 127.0.0.1:5000/steprunner/runner:0.1.0", VertexState.COMPLETED, 450, 650),
            vertex("sha256:b", 2, "[2/2] RUN bundle install", VertexState.STARTED, 660),
          ],
        },
      },
    },
    {
      atMs: 900,
      event: {
        case: "buildProgress" as const,
        value: {
          logs: [
            {
              vertexDigest: "sha256:b",
              stream: LogStream.STDOUT,
              data: new TextEncoder().encode("Fetching rake 13.2.1\nInstalling rake 13.2.1\nBundle compl"),
              time: at(900),
            },
          ],
        },
      },
    },
    {
      atMs: 1200,
      event: {
        case: "buildProgress" as const,
        value: {
          logs: [{ vertexDigest: "sha256:b", stream: LogStream.STDOUT, data: new TextEncoder().encode("ete!\n"), time: at(1200) }],
          vertexes: [vertex("sha256:b", 2, "[2/2] RUN bundle install", VertexState.COMPLETED, 660, 1150)],
        },
      },
    },
    { atMs: 1300, event: { case: "phaseChanged" as const, value: { state: StepState.RUNNING, phase: Phase.RUN, time: at(1300) } } },
    { atMs: 1400, event: { case: "logLine" as const, value: { offset: 0n, stream: LogStream.STDOUT, text: "deploying to staging", time: at(1400) } } },
    { atMs: 1600, event: { case: "logLine" as const, value: { offset: 1n, stream: LogStream.STDERR, text: "warning: slow network", time: at(1600) } } },
    { atMs: 1900, event: { case: "logLine" as const, value: { offset: 2n, stream: LogStream.STDOUT, text: "deployed", time: at(1900) } } },
    {
      atMs: 2000,
      event: {
        case: "finished" as const,
        value: { step: { id: "step-1", action: "deploy", state: StepState.SUCCESS, reason: "exit status 0", imageId: "sha256:1234", exitCode: 0 } },
      },
    },
  ].map(({ atMs, event }) => ({ atMs, response: create(RunStepResponseSchema, { event }) }));
}

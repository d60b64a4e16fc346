import { create } from "@bufbuild/protobuf";
import { ChildExecutionStrategy } from "../../gen/steprunner/context/v1/context_service_pb.js";
import { LogStream } from "../../gen/steprunner/image/v1/image_service_pb.js";
import { type ChangeStep, type RunChangeResponse, RunChangeResponseSchema, StepKind, StepState } from "../../gen/steprunner/step/v1/step_service_pb.js";

type Node = Omit<Partial<ChangeStep>, "$typeName" | "children"> & { id: string; action: string; children?: Node[] };

const node = (id: string, action: string, state: StepState, extra: Omit<Node, "id" | "action" | "state"> = {}): Node => ({
  id,
  action,
  state,
  kind: StepKind.ACTION,
  ...extra,
});

/** A change's tree at one moment: deploy → prepare, a parallel group of two apps, a wait step. */
function tree(states: [StepState, StepState, StepState, StepState, StepState, StepState], reason = "") {
  const [root, prepare, group, app1, app2, wait] = states;
  return {
    id: "chg",
    state: root === StepState.SUCCESS && wait === StepState.SUCCESS ? StepState.SUCCESS : StepState.RUNNING,
    reason,
    root: node("chg.1", "deploy", root, {
      childExecutionStrategy: ChildExecutionStrategy.SEQUENTIAL,
      children: [
        node("chg.2", "prepare", prepare),
        node("chg.3", "opschain_steps_1", group, {
          kind: StepKind.GROUP,
          stepName: "Deploy apps",
          childExecutionStrategy: ChildExecutionStrategy.PARALLEL,
          children: [node("chg.4", "app_1", app1), node("chg.5", "app_2", app2)],
        }),
        node("chg.6", "opschain_wait_step_1", wait, { kind: StepKind.WAIT, stepName: "Smoke test" }),
      ],
    }),
  };
}

const S = StepState;

/** RunChange's events of a recorded change, each with its time after the first (ms). */
export function recordedChangeEvents(): { atMs: number; response: RunChangeResponse }[] {
  const event = (atMs: number, value: object) => ({ atMs, response: create(RunChangeResponseSchema, { event: value as never }) });
  const log = (atMs: number, stepId: string, text: string) =>
    event(atMs, { case: "stepEvent", value: { stepId, event: { event: { case: "logLine", value: { text, stream: LogStream.STDOUT } } } } });
  return [
    event(0, { case: "accepted", value: { change: tree([S.QUEUED, S.QUEUED, S.QUEUED, S.QUEUED, S.QUEUED, S.QUEUED]) } }),
    event(100, { case: "treeChanged", value: { change: tree([S.RUNNING, S.QUEUED, S.QUEUED, S.QUEUED, S.QUEUED, S.QUEUED]) } }),
    log(200, "chg.1", "deploying"),
    event(300, { case: "treeChanged", value: { change: tree([S.SUCCESS, S.RUNNING, S.QUEUED, S.QUEUED, S.QUEUED, S.QUEUED]) } }),
    event(400, { case: "treeChanged", value: { change: tree([S.SUCCESS, S.SUCCESS, S.RUNNING, S.BUILDING, S.RUNNING, S.QUEUED]) } }),
    log(500, "chg.5", "app 2 half way"),
    event(700, { case: "treeChanged", value: { change: tree([S.SUCCESS, S.SUCCESS, S.SUCCESS, S.SUCCESS, S.SUCCESS, S.WAITING]) } }),
    event(900, { case: "treeChanged", value: { change: tree([S.SUCCESS, S.SUCCESS, S.SUCCESS, S.SUCCESS, S.SUCCESS, S.SUCCESS]) } }),
    event(1000, { case: "finished", value: { change: tree([S.SUCCESS, S.SUCCESS, S.SUCCESS, S.SUCCESS, S.SUCCESS, S.SUCCESS], "every step succeeded") } }),
  ];
}

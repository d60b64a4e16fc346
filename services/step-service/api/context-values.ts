import { clone, create } from "@bufbuild/protobuf";
import {
  ChangeValuesSchema,
  ParentsValuesSchema,
  ParentValuesSchema,
  type StepContextValues,
  StepContextValuesSchema,
  StepValuesSchema,
  UserValuesSchema,
} from "../../../gen/steprunner/context/v1/context_service_pb.js";

/**
 * The context values of a step (context.change, step, user and parents of step_context.json) with what the
 * RunStep request itself says filled in where the caller left it empty, so that an action run from the CLI
 * still sees its own action: change.action and step.action (the action as requested), step.full_path (the
 * action), and parents.project / parents.environment from change.project_* / change.environment_* when
 * the caller gave those but no parents. The step's id is added when the step runs (it may be the service's
 * choice, and it must not make every step's build context differ).
 */
export function withRequestDefaults(values: StepContextValues | undefined, action: string): StepContextValues {
  const filled = values ? clone(StepContextValuesSchema, values) : create(StepContextValuesSchema);
  const change = (filled.change ??= create(ChangeValuesSchema));
  const step = (filled.step ??= create(StepValuesSchema));
  filled.user ??= create(UserValuesSchema);
  if (!change.action) change.action = action;
  if (!step.action) step.action = action;
  if (!step.fullPath) step.fullPath = step.action;
  const parents = (filled.parents ??= create(ParentsValuesSchema));
  if (!parents.project && (change.projectCode || change.projectName)) {
    parents.project = create(ParentValuesSchema, { code: change.projectCode, name: change.projectName });
  }
  if (!parents.environment && (change.environmentCode || change.environmentName)) {
    parents.environment = create(ParentValuesSchema, { code: change.environmentCode, name: change.environmentName });
  }
  return filled;
}

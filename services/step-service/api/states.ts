import { StepState } from "../../../gen/steprunner/step/v1/step_service_pb.js";
import type { StepState as DomainState } from "../steps/records.js";

/** The core's step states as the API's enum. */
export const STATES: Record<DomainState, StepState> = {
  queued: StepState.QUEUED,
  preparing: StepState.PREPARING,
  building: StepState.BUILDING,
  running: StepState.RUNNING,
  success: StepState.SUCCESS,
  error: StepState.ERROR,
  timed_out: StepState.TIMED_OUT,
  cancelled: StepState.CANCELLED,
  system_error: StepState.SYSTEM_ERROR,
  handed_back: StepState.HANDED_BACK,
};

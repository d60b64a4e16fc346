import type { ServiceImpl } from "@connectrpc/connect";
import { Code, ConnectError } from "@connectrpc/connect";
import { StepService } from "../../../gen/steprunner/step/v1/step_service_pb.js";
import { cgroupVersion, runcInfo } from "../runtime/runc.js";

export interface StepServiceSettings {
  runcPath: string;
  maxConcurrentSteps: number;
}

/** The Connect adapter of StepService. */
export function stepServiceAdapter(settings: StepServiceSettings): Partial<ServiceImpl<typeof StepService>> {
  return {
    async getRuntimeInfo(_request, context) {
      const runc = await runcInfo(settings.runcPath, context.signal).catch((error: Error) => {
        throw new ConnectError(`runc at ${settings.runcPath} does not answer: ${error.message}`, Code.FailedPrecondition);
      });
      return {
        runcVersion: runc.version,
        ociSpecVersion: runc.specVersion,
        cgroupVersion: await cgroupVersion(),
        maxConcurrentSteps: settings.maxConcurrentSteps,
        runningSteps: 0,
        queuedSteps: 0,
      };
    },
  };
}

"""A steprunner client in Python, from stubs that grpc_tools generates out of proto/ (Debian's python3-grpc-tools).

Usage: python_client.py STUBS_DIR CONTEXT_ADDR IMAGE_ADDR STEP_ADDR [REPOSITORY]
Prints one JSON object of what the services answered; with REPOSITORY, also runs its "hello" action as a
whole step through StepService.RunStep. Exits non-zero on any failure.
"""
import json
import sys

from google.protobuf import json_format

sys.path.insert(0, sys.argv[1])

import grpc  # noqa: E402
from health_check import health_pb2, health_pb2_grpc  # noqa: E402
from steprunner.context.v1 import context_service_pb2, context_service_pb2_grpc  # noqa: E402
from steprunner.image.v1 import image_service_pb2, image_service_pb2_grpc  # noqa: E402
from steprunner.step.v1 import step_service_pb2, step_service_pb2_grpc  # noqa: E402

context_addr, image_addr, step_addr = sys.argv[2:5]
answers = {}

with grpc.insecure_channel(context_addr) as channel:
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    answers["context_health"] = health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)
    dockerfile = context_service_pb2_grpc.ContextServiceStub(channel).GetDefaultDockerfile(
        context_service_pb2.GetDefaultDockerfileRequest(), timeout=10)
    answers["default_dockerfile_digest"] = dockerfile.digest
    answers["default_dockerfile_version"] = dockerfile.version

with grpc.insecure_channel(image_addr) as channel:
    info = image_service_pb2_grpc.ImageServiceStub(channel).GetBuilderInfo(image_service_pb2.GetBuilderInfoRequest(), timeout=10)
    answers["workers"] = [worker.id for worker in info.workers]
    answers["registry_api_version"] = info.registry_api_version
    try:
        image_service_pb2_grpc.ImageServiceStub(channel).PruneCache(image_service_pb2.PruneCacheRequest(keep_bytes=-1), timeout=10)
        answers["invalid_prune"] = "accepted"
    except grpc.RpcError as error:
        answers["invalid_prune"] = error.code().name

with grpc.insecure_channel(step_addr) as channel:
    runtime = step_service_pb2_grpc.StepServiceStub(channel).GetRuntimeInfo(step_service_pb2.GetRuntimeInfoRequest(), timeout=10)
    answers["runc_version"] = runtime.runc_version
    if len(sys.argv) > 5:
        request = step_service_pb2.RunStepRequest(repository_url=sys.argv[5], git_rev="main", action="hello")
        owner = request.properties.add(owner="environment")
        owner.properties.update({"region": "python"})
        request.context_values.change.environment_code = "python"
        events, stdout = [], []
        for response in step_service_pb2_grpc.StepServiceStub(channel).RunStep(request, timeout=300):
            kind = response.WhichOneof("event")
            events.append(kind)
            if kind == "log_line" and response.log_line.stream == image_service_pb2.LOG_STREAM_STDOUT:
                stdout.append(response.log_line.text)
            if kind == "finished":
                step = response.finished.step
                answers["step_state"] = step_service_pb2.StepState.Name(step.state)
                answers["step_result"] = json_format.MessageToDict(step.result.properties)
        answers["step_events"] = sorted(set(events))
        answers["step_stdout"] = stdout

print(json.dumps(answers))

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create, toJson } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { BuildProgressSchema, LogStream, VertexState } from "../../gen/steprunner/image/v1/image_service_pb.js";
import { toBuildProgress } from "../../services/step-service/api/step-service-adapter.js";
import { fromMessage } from "../../services/step-service/clients/image-service-builder.js";

describe("a build's progress through the step-service", () => {
  it("comes out of RunStep as the image-service sent it, though the core holds it in its own terms", () => {
    const sent = create(BuildProgressSchema, {
      vertexes: [
        {
          digest: "sha256:v1",
          number: 1,
          name: "[1/2] FROM base",
          state: VertexState.COMPLETED,
          startedAt: timestampFromMs(1000),
          completedAt: timestampFromMs(2500),
        },
        { digest: "sha256:v2", number: 2, name: "[2/2] RUN false", state: VertexState.ERRORED, startedAt: timestampFromMs(3000), error: "exit code: 1" },
      ],
      statuses: [{ vertexDigest: "sha256:v1", id: "sha256:layer", current: 10n, total: 20n, completed: false }],
      logs: [{ vertexDigest: "sha256:v2", stream: LogStream.STDERR, data: Buffer.from("boom\n"), time: timestampFromMs(3001) }],
    });
    const domain = fromMessage(sent);
    assert.equal(domain.vertexes[1]!.state, "errored");
    assert.equal(domain.logs[0]!.stream, "stderr");
    assert.deepEqual(toJson(BuildProgressSchema, toBuildProgress(domain)), toJson(BuildProgressSchema, sent));
  });
});

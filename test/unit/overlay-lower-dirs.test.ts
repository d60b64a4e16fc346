import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { overlayLowerDirs } from "../../services/step-service/runtime/container.js";

describe("overlay lower directories", () => {
  it("lists an image's layers top first, each once, keeping the upper copy of a layer the image holds twice", () => {
    assert.equal(overlayLowerDirs(["/base", "/empty", "/tree", "/empty", "/changes"]), "/changes:/empty:/tree:/base");
    assert.equal(overlayLowerDirs(["/a", "/b"]), "/b:/a");
  });
});

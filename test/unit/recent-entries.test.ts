import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { keepRecent } from "../../services/shared/recent-entries.js";

describe("keepRecent", () => {
  it("keeps the most recently set entries up to the limit, a set again counting as a use", () => {
    const entries = new Map<string, number>();
    keepRecent(entries, "a", 1, 2);
    keepRecent(entries, "b", 2, 2);
    keepRecent(entries, "a", 3, 2);
    keepRecent(entries, "c", 4, 2);
    assert.deepEqual(
      [...entries],
      [
        ["a", 3],
        ["c", 4],
      ],
    );
  });
});

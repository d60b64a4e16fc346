import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { JsonPointerError, parseJsonPointer, resolveJsonPointer } from "../../services/shared/json-pointer.js";

describe("JSON pointers (RFC 6901)", () => {
  it("decodes tokens, ~1 before ~0", () => {
    assert.deepEqual(parseJsonPointer(""), []);
    assert.deepEqual(parseJsonPointer("/"), [""]);
    assert.deepEqual(parseJsonPointer("/a~1b/m~0n/~01"), ["a/b", "m~n", "~1"]);
  });

  it("refuses what is not a pointer", () => {
    for (const bad of ["a/b", "/a~2", "/a~"]) assert.throws(() => parseJsonPointer(bad), JsonPointerError, bad);
  });

  it("resolves the RFC's examples and names nothing for inherited members or bad indices", () => {
    const document = { foo: ["bar", "baz"], "": 0, "a/b": 1, "m~n": 8, nested: { x: null } };
    assert.deepEqual(resolveJsonPointer(document, ""), document);
    assert.equal(resolveJsonPointer(document, "/foo/0"), "bar");
    assert.equal(resolveJsonPointer(document, "/"), 0);
    assert.equal(resolveJsonPointer(document, "/a~1b"), 1);
    assert.equal(resolveJsonPointer(document, "/m~0n"), 8);
    assert.equal(resolveJsonPointer(document, "/nested/x"), null);
    assert.equal(resolveJsonPointer(document, "/nested/x/y"), undefined);
    assert.equal(resolveJsonPointer(document, "/foo/01"), undefined);
    assert.equal(resolveJsonPointer(document, "/foo/length"), undefined);
    assert.equal(resolveJsonPointer(document, "/__proto__"), undefined);
    assert.equal(resolveJsonPointer(document, "/toString"), undefined);
  });
});

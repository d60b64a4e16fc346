import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Headers as CliHeaders } from "../../services/cli/fetch-headers.js";

interface HeadersApi extends Iterable<[string, string]> {
  append(name: string, value: string): void;
  set(name: string, value: string): void;
  get(name: string): string | null;
  has(name: string): boolean;
  delete(name: string): void;
  forEach(callback: (value: string, name: string) => void): void;
  entries(): IterableIterator<[string, string]>;
  keys(): IterableIterator<string>;
  values(): IterableIterator<string>;
}

/** The operations Connect performs on headers, on one Headers class (made by `make`); what it then shows. */
function exercise(make: (init: unknown) => HeadersApi) {
  const headers = make({ "Content-Type": "application/grpc", "x-Trace": "  a  " });
  headers.append("grpc-status-details-bin", "AAA");
  headers.append("X-Multi", "one");
  headers.append("x-multi", "two");
  headers.set("TE", "trailers");
  headers.delete("x-trace");
  const seen: string[] = [];
  headers.forEach((value, name) => seen.push(`${name}=${value}`));
  const copy = make(headers);
  const fromPairs = make([
    ["B", "2"],
    ["a", "1"],
  ]);
  return {
    seen,
    entries: [...copy.entries()],
    iterated: [...fromPairs],
    get: [headers.get("X-MULTI"), headers.get("missing"), headers.get("x-trace")],
    has: [headers.has("content-type"), headers.has("x-trace")],
    keys: [...copy.keys()],
    values: [...copy.values()],
  };
}

describe("the CLI's Headers (instead of undici's, which Node loads on first use)", () => {
  it("behaves as Node's own for what Connect does with headers", () => {
    const cli = exercise((init) => new CliHeaders(init as ConstructorParameters<typeof CliHeaders>[0]));
    assert.deepEqual(
      cli,
      exercise((init) => new globalThis.Headers(init as ConstructorParameters<typeof globalThis.Headers>[0])),
    );
  });
});

import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, describe, it } from "node:test";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Packet_PacketType as PacketType, PacketSchema } from "../../gen/fsutil/types/wire_pb.js";
import { dataPacketHead, sendDirectory } from "../../services/image-service/buildkit/session/file-sync.js";
import type { BidiCall } from "../../services/image-service/buildkit/session/grpc-server.js";

/** The paths a DiffCopy with these headers lists, BuildKit asking for no file and saying FIN at once. */
async function listedPaths(root: string, headers: Record<string, string[]>): Promise<string[]> {
  const listed: string[] = [];
  const call: BidiCall = {
    headers: new Map(Object.entries(headers)),
    messages: (async function* () {
      yield toBinary(PacketSchema, create(PacketSchema, { type: PacketType.PACKET_FIN }));
    })(),
    send: async (message) => {
      const packet = fromBinary(PacketSchema, Array.isArray(message) ? Buffer.concat(message) : message);
      if (packet.type === PacketType.PACKET_STAT && packet.stat) listed.push(packet.stat.path);
    },
    signal: new AbortController().signal,
  };
  await sendDirectory(call, "context", root);
  return listed;
}

describe("DiffCopy's include and exclude headers", () => {
  let root: string;
  before(async () => {
    root = await mkdtemp(join(tmpdir(), "steprunner-file-sync-"));
    const files = ["Dockerfile", "100%.txt", "docs/é.md", "docs/other.md", "with space/a.txt", "node_modules/dep/index.js", "node_modules/keep/index.js"];
    for (const file of files) {
      await mkdir(dirname(join(root, file)), { recursive: true });
      await writeFile(join(root, file), file);
    }
  });
  after(() => rm(root, { recursive: true, force: true }));

  it("walks into an excluded directory when an exception re-includes something below it", async () => {
    const listed = await listedPaths(root, { "exclude-patterns": ["node_modules", "!node_modules/keep"] });
    assert.deepEqual(
      listed.filter((path) => path.startsWith("node_modules")),
      ["node_modules", "node_modules/keep", "node_modules/keep/index.js"],
    );
  });

  it("decodes the values of a header that BuildKit flagged as URL-query-escaped (it does so when a pattern is not ASCII)", async () => {
    // As Go's url.QueryEscape writes "docs/é.md" and "with space/*".
    const listed = await listedPaths(root, {
      "include-patterns": ["docs%2F%C3%A9.md", "with+space%2F%2A"],
      "include-patterns-encoded": ["1"],
      "exclude-patterns": ["with+space%2Fa.txt"],
    });
    assert.deepEqual(listed, ["docs", "docs/é.md", "with space", "with space/a.txt"], "the exclusion was not flagged, so it names another path");
  });

  it("decodes the exclusions and followpaths BuildKit flagged as escaped too", async () => {
    const excluded = await listedPaths(root, { "exclude-patterns": ["docs%2F%C3%A9.md"], "exclude-patterns-encoded": ["true"] });
    assert.ok(excluded.includes("docs/other.md") && !excluded.includes("docs/é.md"), excluded.join(", "));
    const followed = await listedPaths(root, { followpaths: ["docs%2F%C3%A9.md"], "followpaths-encoded": ["1"] });
    assert.deepEqual(followed, ["docs", "docs/é.md"]);
  });

  it("takes the values of an unflagged header as they are", async () => {
    assert.deepEqual(await listedPaths(root, { "include-patterns": ["100%.txt"] }), ["100%.txt"]);
  });
});

describe("DATA packets sent in parts", () => {
  it("encode as the protobuf Packet they stand for", () => {
    for (const [id, data] of [
      [0, Buffer.from("x")],
      [7, Buffer.alloc(300, 1)],
      [70_000, Buffer.alloc(1 << 20, 2)],
    ] as const) {
      const encoded = Buffer.concat([dataPacketHead(id, data.length), data]);
      const decoded = fromBinary(PacketSchema, encoded);
      assert.equal(decoded.type, PacketType.PACKET_DATA);
      assert.equal(decoded.ID, id);
      assert.deepEqual(Buffer.from(decoded.data), data);
      assert.deepEqual(encoded, Buffer.from(toBinary(PacketSchema, create(PacketSchema, { type: PacketType.PACKET_DATA, ID: id, data }))));
    }
  });
});

describe("DiffCopy when the daemon goes away", () => {
  it("fails the call, and leaves no failure unhandled, when the daemon closes the stream while the listing is sent", async () => {
    const root = await mkdtemp(join(tmpdir(), "steprunner-file-sync-gone-"));
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on("unhandledRejection", onUnhandled);
    try {
      for (let i = 0; i < 20; i++) await writeFile(join(root, `file-${i}`), "x");
      let sends = 0;
      const call: BidiCall = {
        headers: new Map(),
        // The daemon ends its side at once, then refuses what is still sent.
        messages: (async function* () {})(),
        send: async () => {
          if (++sends > 2) throw new Error("the daemon closed the stream");
          await new Promise((resolve) => setImmediate(resolve));
        },
        signal: new AbortController().signal,
      };
      await assert.rejects(sendDirectory(call, "context", root), /the daemon closed the stream/);
      await new Promise((resolve) => setTimeout(resolve, 50));
      assert.deepEqual(unhandled, []);
    } finally {
      process.off("unhandledRejection", onUnhandled);
      await rm(root, { recursive: true, force: true });
    }
  });
});

import assert from "node:assert/strict";
import * as net from "node:net";
import { once } from "node:events";
import { describe, it } from "node:test";
import { replaying } from "../../services/shared/server/replaying-duplex.js";

describe("the replaying duplex in front of an HTTP/2 connection", () => {
  it("drops writes after the peer has gone instead of failing the streams that still flush", async () => {
    const server = net.createServer();
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    const accepted = once(server, "connection");
    const client = net.connect((server.address() as net.AddressInfo).port, "127.0.0.1");
    const [socket] = (await accepted) as [net.Socket];
    const duplex = replaying(socket, Buffer.from("head"));
    const errors: Error[] = [];
    duplex.on("error", (error) => errors.push(error));
    socket.destroy();
    const written = await new Promise<Error | null | undefined>((resolve) => duplex.write(Buffer.from("late frame"), (error) => resolve(error)));
    assert.equal(written ?? undefined, undefined);
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(errors, []);
    client.destroy();
    server.close();
  });
});

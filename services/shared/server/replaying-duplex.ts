import type * as net from "node:net";
import { Duplex } from "node:stream";

/**
 * Node's HTTP/2 server reads a net.Socket's native handle directly, past anything pushed back with unshift().
 * A JS duplex in front of the socket replays the bytes read while sniffing, then relays the rest.
 */
export function replaying(socket: net.Socket, head: Buffer): Duplex {
  const duplex = new Duplex({
    read: () => void socket.resume(),
    write: (chunk, encoding, callback) => void socket.write(chunk, encoding, callback),
    final: (callback) => {
      socket.end();
      callback();
    },
    destroy: (error, callback) => {
      socket.destroy(error ?? undefined);
      callback(error);
    },
  });
  duplex.push(head);
  socket.on("data", (chunk: Buffer) => {
    if (!duplex.push(chunk)) socket.pause();
  });
  socket.once("end", () => duplex.push(null));
  socket.once("close", () => duplex.destroy());
  return duplex;
}

import type * as net from "node:net";
import { Duplex } from "node:stream";

/**
 * Node's HTTP/2 server reads a net.Socket's native handle directly, past anything pushed back with unshift().
 * A JS duplex in front of the socket replays the bytes read while sniffing, then relays the rest.
 */
export function replaying(socket: net.Socket, head: Buffer): Duplex {
  const duplex = new Duplex({
    read: () => void socket.resume(),
    // Once the peer has gone, HTTP/2 may still flush frames: they are dropped, not an error. (Passed on, the
    // error reached a response stream with no listener and took the whole service down.)
    write: (chunk, encoding, callback) => {
      if (socket.destroyed) return callback();
      socket.write(chunk, encoding, (error) => callback(socket.destroyed ? undefined : error));
    },
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

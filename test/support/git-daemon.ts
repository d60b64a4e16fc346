import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import * as net from "node:net";

export interface GitDaemon {
  /** git://127.0.0.1:PORT/ */
  url: string;
  /** How many upload-pack requests (fetches and clones) the daemon has answered so far. */
  uploadPacks(): number;
  stop(): Promise<void>;
}

/** A free TCP port on loopback (bound, read and released). */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as net.AddressInfo;
  server.close();
  await once(server, "close");
  return port;
}

/** `git daemon` serving every repository under base on 127.0.0.1, counting the fetches it serves. */
export async function startGitDaemon(base: string): Promise<GitDaemon> {
  const port = await freePort();
  const child: ChildProcess = spawn(
    "git",
    ["daemon", "--verbose", "--reuseaddr", "--export-all", `--base-path=${base}`, "--listen=127.0.0.1", `--port=${port}`, base],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  let log = "";
  child.stderr!.setEncoding("utf8");
  child.stderr!.on("data", (text: string) => (log += text));
  for (let attempt = 0; ; attempt++) {
    const ready = await new Promise<boolean>((resolve) => {
      const socket = net.connect(port, "127.0.0.1", () => (socket.destroy(), resolve(true)));
      socket.on("error", () => resolve(false));
    });
    if (ready) break;
    if (attempt > 100 || child.exitCode !== null) throw new Error(`git daemon did not start: ${log}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return {
    url: `git://127.0.0.1:${port}/`,
    uploadPacks: () => log.split("\n").filter((line) => line.includes("Request upload-pack")).length,
    stop: async () => {
      if (child.exitCode === null) {
        child.kill("SIGTERM");
        await once(child, "exit");
      }
    },
  };
}

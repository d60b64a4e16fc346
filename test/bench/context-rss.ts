/**
 * Peak memory (VmHWM) of a context-service process that prepares and streams out repo.tar for repositories of
 * different sizes. Not a test: it takes minutes and gigabytes of disk. Run after `npx tsc -p .`:
 *
 *   node dist/test/bench/context-rss.js [SIZE_MB...]      (default: 30 1024)
 *
 * Each size gets its own repository (mostly incompressible files, some above the in-memory object limit) and a
 * fresh service process on 127.0.0.1, so each peak is its own. Everything is removed afterwards.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { createWriteStream } from "node:fs";
import { mkdir, mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { ContextFileKind, ContextService } from "../../gen/steprunner/context/v1/context_service_pb.js";
import { serviceTransport } from "../../services/shared/client/transport.js";
import { freePort } from "../support/git-daemon.js";
import { gitIn } from "../support/git-fixture.js";
import { ROOT } from "../support/stack.js";

const MiB = 1024 * 1024;

async function writeRandomFile(path: string, bytes: number): Promise<void> {
  const file = createWriteStream(path);
  for (let left = bytes; left > 0; left -= MiB) {
    if (!file.write(randomBytes(Math.min(MiB, left)))) await once(file, "drain");
  }
  file.end();
  await once(file, "finish");
}

/** A repository of about sizeMb: 200 small files and the rest in 16 MiB files (above the 4 MiB in-memory limit). */
async function makeRepository(path: string, sizeMb: number): Promise<void> {
  await mkdir(join(path, "small"), { recursive: true });
  await mkdir(join(path, "large"), { recursive: true });
  await gitIn(path, ["init", "-q", "-b", "main"]);
  for (let i = 0; i < 200; i++) await writeRandomFile(join(path, "small", `f${i}.bin`), 8 * 1024);
  const large = Math.max(1, Math.round((sizeMb * MiB - 200 * 8 * 1024) / (16 * MiB)));
  for (let i = 0; i < large; i++) await writeRandomFile(join(path, "large", `f${i}.bin`), 16 * MiB);
  await gitIn(path, ["add", "-A"]);
  await gitIn(path, ["commit", "-q", "-m", `about ${sizeMb} MB`]);
}

async function startService(stateDir: string, port: number): Promise<ChildProcess> {
  const child = spawn(process.execPath, [join(ROOT, "dist/services/context-service/main.js")], {
    env: { ...process.env, STEPRUNNER_CONTEXT_STATE_DIR: stateDir, STEPRUNNER_CONTEXT_ADDR: `127.0.0.1:${port}` },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let log = "";
  child.stderr!.on("data", (text: Buffer) => (log += text.toString()));
  for (let i = 0; i < 200 && !log.includes('"listening"'); i++) await new Promise((resolve) => setTimeout(resolve, 50));
  if (!log.includes('"listening"')) throw new Error(`context-service did not start: ${log}`);
  return child;
}

async function peakRssMb(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  return Number(/VmHWM:\s+(\d+) kB/.exec(status)![1]) / 1024;
}

async function measure(sizeMb: number): Promise<{ sizeMb: number; tarMb: number; peakMb: number; seconds: number }> {
  const work = await mkdtemp(join(tmpdir(), `context-bench-${sizeMb}-`));
  let child: ChildProcess | undefined;
  try {
    await makeRepository(join(work, "repo"), sizeMb);
    const port = await freePort();
    child = await startService(join(work, "state"), port);
    const connection = serviceTransport(`127.0.0.1:${port}`);
    const client = createClient(ContextService, connection.transport);
    const started = Date.now();
    const { context } = await client.prepareContext({ repositoryUrl: join(work, "repo"), gitRev: "main" });
    let tarBytes = 0;
    for await (const { chunk } of client.readContextFile({ contextId: context!.contextId, kind: ContextFileKind.REPO_TAR })) tarBytes += chunk.length;
    const seconds = (Date.now() - started) / 1000;
    connection.close();
    return { sizeMb, tarMb: tarBytes / MiB, peakMb: await peakRssMb(child.pid!), seconds };
  } finally {
    if (child && child.exitCode === null) {
      child.kill("SIGTERM");
      await once(child, "exit");
    }
    await rm(work, { recursive: true, force: true });
  }
}

const sizes = process.argv
  .slice(2)
  .map(Number)
  .filter((size) => size > 0);
const results = [];
for (const size of sizes.length ? sizes : [30, 1024]) {
  const result = await measure(size);
  results.push(result);
  console.log(
    `${String(result.sizeMb).padStart(6)} MB repository: repo.tar ${result.tarMb.toFixed(0)} MB in ${result.seconds.toFixed(1)} s, peak RSS ${result.peakMb.toFixed(1)} MB`,
  );
}
const peaks = results.map((result) => result.peakMb);
const growth = Math.max(...peaks) / Math.min(...peaks) - 1;
console.log(`peak RSS grows ${(growth * 100).toFixed(1)}% from the smallest to the largest (flat means within 20%)`);
process.exitCode = growth <= 0.2 ? 0 : 1;

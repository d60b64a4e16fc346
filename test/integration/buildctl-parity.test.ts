import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { chmod, lutimes, mkdir, mkdtemp, rm, symlink, utimes, writeFile } from "node:fs/promises";
import * as net from "node:net";
import { join, resolve } from "node:path";
import { after, before, describe, it } from "node:test";
import { randomBytes } from "node:crypto";
import { BuildKitClient } from "../../services/image-service/buildkit/client.js";
import { buildDockerfile } from "../../services/image-service/buildkit/dockerfile-build.js";
import { RegistryClient } from "../../services/shared/registry/registry-client.js";
import { buildkitdUnavailable, StandaloneBuildKitd } from "../support/standalone-buildkitd.js";
import { ROOT, run, samePassOnEither, stack } from "../support/stack.js";

// Upstream's own client is the reference for what a build of a directory should give and cost: for the same
// Dockerfile and context, each on a fresh buildkitd v0.24, our client and `buildctl build` must give images with
// the same layers (diff_ids), and ours must send no more bytes to the daemon.

const SHARED_BUILDCTL_XZ = resolve(ROOT, "../shared/buildkit/buildctl-v0.24.0-linux-amd64.xz");
const unavailable = buildkitdUnavailable ?? (existsSync(SHARED_BUILDCTL_XZ) ? undefined : `no buildctl at ${SHARED_BUILDCTL_XZ}`);
const REPOSITORY = "steprunner-test/buildctl-parity";

/** A unix-socket proxy in front of a daemon that counts the bytes its clients send. */
async function countingProxy(target: string, path: string): Promise<{ address: string; sent(): number; close(): Promise<void> }> {
  let sent = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(target.replace(/^unix:\/\//, ""));
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on("error", () => socket.destroy());
      socket.once("close", () => (client.destroy(), upstream.destroy()));
    }
    client.on("data", (chunk: Buffer) => (sent += chunk.length));
    client.pipe(upstream).pipe(client);
  });
  await new Promise<void>((ready) => server.listen(path, ready));
  return {
    address: `unix://${path}`,
    sent: () => sent,
    close: () => new Promise((done) => (sockets.forEach((socket) => socket.destroy()), server.close(() => done()))),
  };
}

describe("our BuildKit client against upstream's buildctl, on buildkitd v0.24", samePassOnEither("it starts buildkitd daemons of its own", unavailable), () => {
  let work: string;
  let buildctl: string;
  const context = () => join(work, "context");
  const dockerfileDir = () => join(work, "dockerfile");

  before(async () => {
    await mkdir(join(stack.stateDir, "tmp"), { recursive: true });
    work = await mkdtemp(join(stack.stateDir, "tmp", "buildctl-parity-"));
    buildctl = join(work, "buildctl");
    const extracted = await run("sh", ["-c", 'xz -dc "$1" > "$2"', "extract", SHARED_BUILDCTL_XZ, buildctl]);
    assert.equal(extracted.code, 0, extracted.stderr);
    await chmod(buildctl, 0o755);
    // A context with what real repositories hold: nested folders, an executable, a symlink, an empty file,
    // a file of a few MB, fixed times (layers record them).
    await mkdir(join(context(), "lib", "deep"), { recursive: true });
    await writeFile(join(context(), "actions.rb"), "task :hello do\n  puts 'hello'\nend\n");
    await writeFile(join(context(), "lib", "deep", "blob.bin"), randomBytes(3 * 1024 * 1024));
    await writeFile(join(context(), "lib", "empty"), "");
    await writeFile(join(context(), "run.sh"), "#!/bin/sh\necho run\n", { mode: 0o755 });
    await symlink("lib/deep/blob.bin", join(context(), "link"));
    for (const path of ["actions.rb", "lib/deep/blob.bin", "lib/empty", "run.sh", "lib/deep", "lib", "."]) {
      await utimes(join(context(), path), new Date("2024-01-01T00:00:00Z"), new Date("2024-01-01T00:00:00Z"));
    }
    await lutimes(join(context(), "link"), new Date("2024-01-01T00:00:00Z"), new Date("2024-01-01T00:00:00Z"));
    // Each COPY names its sources and goes to a folder the base image lacks. Why not `COPY . /dest/`: the context's
    // root is no entry of the session (its paths are relative to it), so BuildKit stamps the destination folder
    // with the time of the build, whichever client sends it, and two builds' layers would differ in that one field.
    await mkdir(dockerfileDir());
    await writeFile(
      join(dockerfileDir(), "Dockerfile"),
      `FROM ${stack.baseRunner}\nCOPY --chown=10001:10001 lib/ /project/\nCOPY actions.rb run.sh link /\nCOPY lib/deep/ /deep/\n`,
    );
  });

  after(async () => {
    if (work) await rm(work, { recursive: true, force: true });
  });

  /** Builds and pushes with one client on a buildkitd of its own; the bytes sent and the image's diff_ids. */
  async function buildWith(client: "ours" | "buildctl"): Promise<{ sent: number; diffIds: string[] }> {
    const buildkitd = await StandaloneBuildKitd.start({ allowNetworkHost: false });
    const proxy = await countingProxy(buildkitd.address, join(work, `${client}.sock`));
    const name = `${stack.registry}/${REPOSITORY}:${client}`;
    try {
      if (client === "buildctl") {
        const result = await run(
          buildctl,
          [
            "--addr",
            proxy.address,
            "build",
            "--frontend",
            "dockerfile.v0",
            "--local",
            `context=${context()}`,
            "--local",
            `dockerfile=${dockerfileDir()}`,
            "--output",
            `type=image,name=${name},push=true`,
            "--progress",
            "plain",
          ],
          { timeoutMs: 300_000 },
        );
        assert.equal(result.code, 0, result.stderr);
      } else {
        const ours = new BuildKitClient(proxy.address);
        try {
          await buildDockerfile(
            ours,
            {
              context: context(),
              dockerfileDir: dockerfileDir(),
              buildArgs: {},
              network: "none",
              noCache: false,
              exporter: { type: "image", attrs: { name, push: "true" } },
              sessionName: "buildctl parity",
              sharedKey: "buildctl-parity",
            },
            () => {},
            AbortSignal.timeout(300_000),
          );
        } finally {
          ours.close();
        }
      }
      const registry = new RegistryClient(stack.registry);
      const { manifest } = await registry.manifest(REPOSITORY, client);
      return { sent: proxy.sent(), diffIds: (await registry.config(REPOSITORY, manifest.config)).rootfs.diff_ids };
    } finally {
      await proxy.close();
      await buildkitd.stop();
    }
  }

  it("gives an image with the same layers as buildctl build, and sends the daemon no more bytes", { timeout: 600_000 }, async (t) => {
    const upstream = await buildWith("buildctl");
    const ours = await buildWith("ours");
    assert.equal(ours.diffIds.length, upstream.diffIds.length, "as many layers");
    assert.deepEqual(ours.diffIds, upstream.diffIds, "the same layers, byte for byte");
    assert.ok(upstream.sent > 3 * 1024 * 1024, `buildctl sent the context (${upstream.sent} bytes)`);
    t.diagnostic(`bytes sent to buildkitd: ours ${ours.sent}, buildctl ${upstream.sent}`);
    assert.ok(ours.sent <= upstream.sent, `ours sent ${ours.sent} bytes, buildctl ${upstream.sent}`);
  });
});

import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { toConnectError } from "../../services/image-service/api/image-service-adapter.js";
import { type DockerfileBuilder, ImageBuilder } from "../../services/image-service/core/image-builder.js";
import type { BuildEvent, LocalContext } from "../../services/image-service/core/model.js";
import { fakeContext, fakeImageStore, fakeInspect, fakeRegistry, fakeSettings } from "../support/fake-image-builder.js";
import { ReuseRecords } from "../../services/image-service/core/reuse-records.js";
import { RegistryError } from "../../services/shared/registry/registry-client.js";

/** A prepared context as the image-builder sees it; its files are never read by these tests. */
const context = fakeContext();

describe("retries", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "steprunner-retries-"));
  });
  after(() => rm(dir, { recursive: true, force: true }));

  function builderFailing(failures: ConnectError[]): { images: ImageBuilder; attempts: () => number; events: BuildEvent[] } {
    let attempts = 0;
    const buildkit: DockerfileBuilder = {
      build: async () => {
        const failure = failures[attempts++];
        if (failure) throw failure;
        return { "containerimage.digest": `sha256:${"5".repeat(64)}` };
      },
    };
    const images = new ImageBuilder({
      contexts: { describe: async () => context, materialize: async () => context },
      buildkit: buildkit,
      images: fakeImageStore(),
      registry: fakeRegistry(),
      records: new ReuseRecords(join(dir, String(Math.random()))),
      settings: fakeSettings({ transportAttempts: 3 }),
    });
    const events: BuildEvent[] = [];
    return { images, attempts: () => attempts, events };
  }

  const request = { contextId: context.contextId, baseRunner: "", network: "none" as const, buildWithoutCache: false, handoff: undefined };

  it("tries again after the connection to BuildKit fails, up to three attempts, saying so", async () => {
    const { images, attempts, events } = builderFailing([
      new ConnectError("connection reset", Code.Unavailable),
      new ConnectError("connection reset", Code.Unavailable),
    ]);
    const image = await images.build(request, (event) => events.push(event));
    assert.equal(attempts(), 3);
    assert.match(image.imageId, /^sha256:5/);
    assert.equal(events.filter((event) => event.kind === "warning").length, 2);
  });

  it("answers a reuse-only request NOT_FOUND before the image is built, building nothing, and with the image after", async () => {
    const { images, attempts } = builderFailing([]);
    const missing = await images.build({ ...request, reuseOnly: true }, () => {}).catch((error) => ConnectError.from(toConnectError(error)));
    assert.ok(missing instanceof ConnectError);
    assert.equal(missing.code, Code.NotFound);
    assert.match(missing.rawMessage, /no image was built for context sha256:\w+ with these inputs/);
    assert.equal(attempts(), 0, "nothing was built");
    const built = await images.build(request, () => {});
    const reused = await images.build({ ...request, reuseOnly: true }, () => {});
    assert.deepEqual([reused.imageId, reused.reused, attempts()], [built.imageId, true, 1]);
  });

  it("gives up after three failed attempts", async () => {
    const unavailable = () => new ConnectError("connection reset", Code.Unavailable);
    const { images, attempts } = builderFailing([unavailable(), unavailable(), unavailable(), unavailable()]);
    await assert.rejects(images.build(request, () => {}));
    assert.equal(attempts(), 3);
  });

  it("never repeats a build that failed on its own", async () => {
    const { images, attempts } = builderFailing([new ConnectError("failed to solve: executor failed running [/bin/sh -c exit 1]: exit code: 1", Code.Unknown)]);
    const failure = await images.build(request, () => {}).catch((error) => ConnectError.from(toConnectError(error)));
    assert.ok(failure instanceof ConnectError);
    assert.equal(failure.code, Code.FailedPrecondition);
    assert.equal(attempts(), 1);
  });
});

describe("reuse from a context's description", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "steprunner-reuse-"));
  });
  after(() => rm(dir, { recursive: true, force: true }));

  it("reuses the image of a context whose properties alone changed without making its files local, and makes them local to build", async () => {
    const described: string[] = [];
    const materialized: string[] = [];
    let builds = 0;
    const contexts = new Map(
      [context, fakeContext({ contextId: `sha256:${"6".repeat(64)}`, stepContextZip: { digest: `sha256:${"7".repeat(64)}`, size: 2n } })].map((entry) => [
        entry.contextId,
        entry,
      ]),
    );
    const images = new ImageBuilder({
      contexts: {
        describe: async (id) => (described.push(id), contexts.get(id)!),
        materialize: async (id) => (materialized.push(id), contexts.get(id)!),
      },
      buildkit: { build: async () => (builds++, { "containerimage.digest": `sha256:${"5".repeat(64)}` }) },
      images: fakeImageStore(),
      registry: fakeRegistry(),
      records: new ReuseRecords(join(dir, "records")),
      settings: fakeSettings(),
    });
    const request = (contextId: string) => ({ contextId, baseRunner: "", network: "none" as const, buildWithoutCache: false, handoff: undefined });
    const built = await images.build(request(context.contextId), () => {});
    const reused = await images.build(request(`sha256:${"6".repeat(64)}`), () => {});
    assert.deepEqual([reused.reused, reused.imageId, builds], [true, built.imageId, 1]);
    assert.deepEqual(materialized, [context.contextId], "only the build made its context local");
    assert.deepEqual(described, [context.contextId, `sha256:${"6".repeat(64)}`]);
  });
});

describe("a repository's Dockerfile that copies the trust store", () => {
  it("builds again when the trust store changed, and reuses the image while it has not", async () => {
    const dir = await mkdtemp(join(tmpdir(), "steprunner-trust-store-"));
    try {
      await mkdir(join(dir, "dockerfile"));
      await writeFile(join(dir, "dockerfile", "Dockerfile"), "ARG OPSCHAIN_BASE_RUNNER\nFROM ${OPSCHAIN_BASE_RUNNER}\nCOPY opschain-trust-store.tar /tmp/\n");
      const custom = (id: string, trustStore: string) =>
        fakeContext({
          contextId: `sha256:${id.repeat(64)}`,
          defaultDockerfile: false,
          dockerfileDir: join(dir, "dockerfile"),
          trustStoreTar: { digest: `sha256:${trustStore.repeat(64)}`, size: 1n },
        });
      const contexts = new Map([custom("6", "a"), custom("7", "a"), custom("8", "b")].map((entry) => [entry.contextId, entry]));
      let builds = 0;
      const images = new ImageBuilder({
        contexts: { describe: async (id) => contexts.get(id)!, materialize: async (id) => contexts.get(id)! },
        buildkit: { build: async () => (builds++, { "containerimage.digest": `sha256:${String(builds).repeat(64)}` }) },
        images: fakeImageStore(),
        registry: fakeRegistry(),
        records: new ReuseRecords(join(dir, "records")),
        settings: fakeSettings(),
      });
      const request = (id: string) => ({
        contextId: `sha256:${id.repeat(64)}`,
        baseRunner: "",
        network: "none" as const,
        buildWithoutCache: false,
        handoff: undefined,
      });
      await images.build(request("6"), () => {});
      const sameTrustStore = await images.build(request("7"), () => {});
      const otherTrustStore = await images.build(request("8"), () => {});
      assert.deepEqual([sameTrustStore.reused, otherTrustStore.reused, builds], [true, false, 2]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("the base runner's digest", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "steprunner-base-digest-"));
  });
  after(() => rm(dir, { recursive: true, force: true }));

  /** An image-builder whose registry names the base runner by `digest()`, counting the times it is asked. */
  function builderWith(baseImageRecheckMs: number, digest: () => string) {
    let asked = 0;
    let builds = 0;
    const registry = fakeRegistry({
      manifest: async () => (asked++, { digest: digest(), manifest: { schemaVersion: 2, config: { mediaType: "", digest: "", size: 0 }, layers: [] } }),
    });
    const images = new ImageBuilder({
      contexts: { describe: async () => context, materialize: async () => context },
      buildkit: { build: async () => (builds++, { "containerimage.digest": `sha256:${String(builds).repeat(64)}` }) },
      images: fakeImageStore(),
      registry,
      records: new ReuseRecords(join(dir, String(Math.random()))),
      settings: fakeSettings({ baseImageRecheckMs }),
    });
    return { images, asked: () => asked, builds: () => builds };
  }
  const request = { contextId: context.contextId, baseRunner: "", network: "none" as const, buildWithoutCache: false, handoff: undefined };

  it("asks the registry once within the recheck time, however many builds start, at once or one after another", async () => {
    const { images, asked, builds } = builderWith(60_000, () => `sha256:${"a".repeat(64)}`);
    await Promise.all([1, 2, 3].map(() => images.build(request, () => {})));
    await images.build(request, () => {});
    await images.build({ ...request, reuseOnly: true }, () => {});
    assert.deepEqual([asked(), builds()], [1, 1]);
  });

  it("asks on every build with a recheck time of 0, and then says no answer may be given again without a call", async () => {
    const { images, asked } = builderWith(0, () => `sha256:${"a".repeat(64)}`);
    const answers = [];
    for (let i = 0; i < 3; i++) answers.push(await images.build(request, () => {}));
    assert.equal(asked(), 3);
    assert.deepEqual(
      answers.map((answer) => answer.reusableUntilMs),
      [undefined, undefined, undefined],
    );
  });

  it("says each answer holds until the digest it was built or reused on is to be asked again", async () => {
    const { images } = builderWith(60_000, () => `sha256:${"a".repeat(64)}`);
    const before = Date.now();
    const built = await images.build(request, () => {});
    const reused = await images.build(request, () => {});
    const after = Date.now();
    assert.equal(reused.reused, true);
    for (const answer of [built, reused]) {
      assert.ok(answer.reusableUntilMs! >= before + 60_000 && answer.reusableUntilMs! <= after + 60_000, `${answer.reusableUntilMs}`);
    }
    assert.equal(reused.reusableUntilMs, built.reusableUntilMs, "the same digest, asked once: the same time");
  });

  it("builds on the base runner's new digest once the recheck time has passed since the tag was pushed anew", async () => {
    let pushed = "a";
    const { images, asked, builds } = builderWith(50, () => `sha256:${pushed.repeat(64)}`);
    const first = await images.build(request, () => {});
    pushed = "b";
    const within = await images.build(request, () => {});
    assert.deepEqual([within.reused, within.imageId, asked()], [true, first.imageId, 1], "within the recheck time: the digest read before");
    await new Promise((resolve) => setTimeout(resolve, 60));
    const after = await images.build(request, () => {});
    assert.deepEqual([after.reused, builds(), asked()], [false, 2, 2], "after it: the new base, a new image");
    assert.notEqual(after.contentKey, first.contentKey);
  });
});

describe("a reused image's hand-off time", () => {
  it("is written when it is a minute older than the last one this process wrote, and again after the record was removed", async () => {
    const dir = await mkdtemp(join(tmpdir(), "steprunner-handed-over-"));
    try {
      const records = new ReuseRecords(dir);
      const key = `sha256:${"c".repeat(64)}`;
      await records.markHandedOver(key, 1_000_000);
      await records.markHandedOver(key, 1_030_000);
      assert.equal(await records.handedOverAt(key), 1_000_000, "half a minute later: not written");
      await records.markHandedOver(key, 1_060_000);
      assert.equal(await records.handedOverAt(key), 1_060_000, "a minute later: written");
      await records.remove(key);
      await records.markHandedOver(key, 1_070_000);
      assert.equal(await records.handedOverAt(key), 1_070_000, "after a removal: written at once");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("bad input to a build", () => {
  const images = (materialize: () => Promise<LocalContext>) =>
    new ImageBuilder({
      contexts: { describe: materialize, materialize },
      buildkit: { build: async () => assert.fail("no build for bad input") },
      images: fakeImageStore({ inspectImage: async () => undefined }),
      registry: fakeRegistry({ manifest: async () => assert.fail("the registry is not asked") }),
      records: new ReuseRecords("/nonexistent"),
      settings: fakeSettings({ reuseTtlMs: 0 }),
    });
  const request = (baseRunner: string) => ({
    contextId: context.contextId,
    baseRunner,
    network: "none" as const,
    buildWithoutCache: false,
    handoff: undefined,
  });

  for (const [name, baseRunner, expected] of [
    [
      "a base runner that is not an image reference",
      "not an image",
      /^base_runner: must be an image reference in the registry registry\.test:5000 \(.*must start with a registry host.*\), got "not an image"$/,
    ],
    [
      "a base runner in another registry",
      "elsewhere.test:5000/runner:1",
      /^base_runner: must be an image in the registry registry\.test:5000, got "elsewhere\.test:5000\/runner:1"$/,
    ],
  ] as const) {
    it(`answers INVALID_ARGUMENT for ${name}, before any build`, async () => {
      let materialized = false;
      const failure = await images(async () => ((materialized = true), context))
        .build(request(baseRunner), () => {})
        .catch((error) => ConnectError.from(toConnectError(error)));
      assert.ok(failure instanceof ConnectError);
      assert.equal(failure.code, Code.InvalidArgument);
      assert.match(failure.rawMessage, expected);
      assert.equal(materialized, false, "the context was not fetched");
    });
  }

  it("passes on the context-service's NOT_FOUND for a context it does not know", async () => {
    const failure = await images(async () => {
      throw new ConnectError("no prepared context sha256:111…", Code.NotFound);
    })
      .build(request(""), () => {})
      .catch((error) => ConnectError.from(toConnectError(error)));
    assert.ok(failure instanceof ConnectError);
    assert.equal(failure.code, Code.NotFound);
  });
});

describe("the registry hand-off of a reused image", () => {
  it("pushes the image again when the registry lost the manifest pushed before", async () => {
    const dir = await mkdtemp(join(tmpdir(), "steprunner-repush-"));
    try {
      const pushed = [`sha256:${"a".repeat(64)}`, `sha256:${"b".repeat(64)}`];
      let pushes = 0;
      const lost = new Set<string>();
      const images = new ImageBuilder({
        contexts: { describe: async () => context, materialize: async () => context },
        buildkit: { build: async () => ({ "containerimage.digest": `sha256:${"5".repeat(64)}` }) },
        images: fakeImageStore({ pushImage: async () => ({ digest: pushed[pushes++]!, size: 1 }) }),
        registry: fakeRegistry({
          manifest: async (repository, reference) => {
            if (lost.has(reference)) throw new RegistryError(`manifest ${reference} unknown`, 404);
            const digest = repository === "steps" ? reference : `sha256:${"6".repeat(64)}`;
            return { digest, manifest: { schemaVersion: 2, config: { mediaType: "", digest: "", size: 0 }, layers: [] } };
          },
          config: async () => ({ rootfs: { type: "layers", diff_ids: [] } }) as never,
        }),
        records: new ReuseRecords(dir),
        settings: fakeSettings({ defaultHandoff: "registry" }),
      });
      const request = { contextId: context.contextId, baseRunner: "", network: "none" as const, buildWithoutCache: false, handoff: "registry" as const };
      const first = await images.build(request, () => {});
      assert.equal(first.reference, `registry.test:5000/steps@${pushed[0]}`);
      lost.add(pushed[0]!);
      const again = await images.build(request, () => {});
      assert.equal(again.reused, true);
      assert.equal(again.reference, `registry.test:5000/steps@${pushed[1]}`);
      assert.equal(pushes, 2);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("pruning images a running step may have mounted (layer-store hand-off)", () => {
  const upper = "/var/lib/docker/overlay2/upper/diff";
  const lower = "/var/lib/docker/overlay2/lower/diff";

  async function withBuilder(
    options: { mounted: Set<string>; inUseHoldMs: number },
    use: (images: ImageBuilder, removed: string[], clock: { advance(ms: number): void }) => Promise<void>,
  ): Promise<void> {
    const dir = await mkdtemp(join(tmpdir(), "steprunner-prune-in-use-"));
    const realNow = Date.now;
    let offset = 0;
    Date.now = () => realNow() + offset;
    try {
      const removed: string[] = [];
      const images = new ImageBuilder({
        contexts: { describe: async () => context, materialize: async () => context },
        buildkit: { build: async () => ({ "containerimage.digest": `sha256:${"5".repeat(64)}` }) },
        images: fakeImageStore({
          inspectImage: async () => fakeInspect({ UpperDir: upper, LowerDir: lower }),
          removeImage: async (name) => void removed.push(name),
        }),
        registry: fakeRegistry(),
        records: new ReuseRecords(dir),
        settings: fakeSettings({ inUseHoldMs: options.inUseHoldMs }),
        mountedLayers: { lowerDirs: async () => options.mounted },
      });
      await use(images, removed, { advance: (ms) => (offset += ms) });
    } finally {
      Date.now = realNow;
      await rm(dir, { recursive: true, force: true });
    }
  }
  const request = { contextId: context.contextId, baseRunner: "", network: "none" as const, buildWithoutCache: false, handoff: undefined };

  it("keeps an expired image whose overlay2 directories a step has mounted as lower layers", async () => {
    await withBuilder({ mounted: new Set([lower]), inUseHoldMs: 0 }, async (images, removed, clock) => {
      const image = await images.build(request, () => {});
      assert.deepEqual(image.layerDirectories, [lower, upper]);
      clock.advance(120_000);
      assert.deepEqual(await images.prune(), [], "an image in use is never removed");
      assert.deepEqual(removed, []);
    });
  });

  it("keeps an expired image handed over within the hold, although no mount of it is seen (another mount namespace)", async () => {
    await withBuilder({ mounted: new Set(), inUseHoldMs: 3_600_000 }, async (images, removed, clock) => {
      await images.build(request, () => {});
      clock.advance(30_000);
      // Reused (handed over again): a step is starting on it; then a prune of everything built before now.
      assert.equal((await images.build(request, () => {})).reused, true);
      clock.advance(1_000);
      assert.deepEqual(await images.prune(0), []);
      assert.deepEqual(removed, []);
    });
  });

  it("removes an expired image once it is neither mounted nor handed over within the hold", async () => {
    await withBuilder({ mounted: new Set(["/somewhere/else"]), inUseHoldMs: 3_600_000 }, async (images, removed, clock) => {
      const image = await images.build(request, () => {});
      clock.advance(3_600_001);
      assert.deepEqual(await images.prune(), [image.contentKey]);
      assert.deepEqual(removed, [`steps:${image.contentKey.slice(7)}`]);
    });
  });
});

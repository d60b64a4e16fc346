import assert from "node:assert/strict";
import type { ImageBuilderSettings, ImageStore, Registry } from "../../services/image-service/core/image-builder.js";
import type { LocalContext } from "../../services/image-service/core/model.js";
import type { ImageInspect } from "../../services/image-service/docker/docker-api.js";

// The image-builder's ports as its unit tests fake them: each test overrides only what it is about.

/** A prepared context as the image-builder sees it; its files are read only where a test puts them. */
export function fakeContext(overrides: Partial<LocalContext> = {}): LocalContext {
  return {
    contextId: `sha256:${"1".repeat(64)}`,
    gitRev: "main",
    gitSha: "a".repeat(40),
    defaultDockerfile: true,
    repositoryId: "2".repeat(32),
    repositoryOptions: { excludeGitHistory: false, honorExportIgnore: false },
    stepContextZip: { digest: `sha256:${"3".repeat(64)}`, size: 1n },
    dockerfile: { digest: `sha256:${"4".repeat(64)}`, size: 1n },
    contextSources: {},
    dockerfileDir: "/nonexistent",
    secretZipPath: "/nonexistent",
    ...overrides,
  };
}

/** dockerd's description of a built image, its layers in overlay2 directories. */
export function fakeInspect(layers: { UpperDir: string; LowerDir?: string } = { UpperDir: "/u" }): ImageInspect {
  return { Id: "x", RepoDigests: [], Config: {}, RootFS: { Type: "layers", Layers: [] }, GraphDriver: { Name: "overlay2", Data: layers }, Size: 0 };
}

/** dockerd holding every image; a push fails the test. */
export function fakeImageStore(overrides: Partial<ImageStore> = {}): ImageStore {
  return {
    inspectImage: async () => fakeInspect(),
    removeImage: async () => {},
    tagImage: async () => {},
    pushImage: async () => assert.fail("no push"),
    ...overrides,
  };
}

/** A registry holding every manifest asked for; reading a config fails the test. */
export function fakeRegistry(overrides: Partial<Registry> = {}): Registry {
  return {
    address: "registry.test:5000",
    manifest: async () => ({ digest: `sha256:${"6".repeat(64)}`, manifest: { schemaVersion: 2, config: { mediaType: "", digest: "", size: 0 }, layers: [] } }),
    config: async () => assert.fail("no config"),
    deleteManifest: async () => {},
    ...overrides,
  };
}

/** The settings of a one-build-at-a-time image-builder on dockerd. */
export function fakeSettings(overrides: Partial<ImageBuilderSettings> = {}): ImageBuilderSettings {
  return {
    defaultBaseRunner: "registry.test:5000/runner:1",
    version: "0",
    stepsRepository: "steps",
    defaultHandoff: "layer-store",
    reuseTtlMs: 60_000,
    maxConcurrentBuilds: 1,
    transportAttempts: 1,
    ...overrides,
  };
}

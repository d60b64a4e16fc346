import { randomBytes } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import type { StatusResponse } from "../../../gen/moby/buildkit/v1/control_pb.js";
import type { BuildKitClient } from "./client.js";
import type { LocalSource, TransferObserver } from "./session/file-sync.js";
import type { SessionTransport } from "./session/session.js";
import type { RegistryCredentials } from "../../shared/registry/credentials.js";

export interface CacheEntry {
  type: string;
  attrs: Record<string, string>;
}

export interface DockerfileBuild {
  /** What is sent as the build context (local source "context"). */
  context: LocalSource;
  /** The directory holding the Dockerfile (local source "dockerfile"). */
  dockerfileDir: string;
  buildArgs: Record<string, string>;
  labels?: Record<string, string>;
  /** The stage to build; the last one when absent. */
  target?: string;
  /** There is no bridge network on our daemons: RUN gets no network, or the host's. */
  network: "none" | "host";
  /** Ignore BuildKit's cache for every stage. */
  noCache: boolean;
  /**
   * Build with BuildKit's builtin Dockerfile frontend even when the Dockerfile's first lines name another
   * with "# syntax=" (whose image could not be pulled). BuildKit's frontend skips the directive when the
   * "cmdline" attribute is set, as it is for a frontend it forwarded to.
   */
  ignoreSyntaxDirective?: boolean;
  secrets?: Record<string, () => Promise<Uint8Array>>;
  exporter: { type: string; attrs: Record<string, string> };
  cacheImports?: CacheEntry[];
  cacheExports?: CacheEntry[];
  sessionName: string;
  sharedKey: string;
  observer?: TransferObserver;
  registryCredentials?: RegistryCredentials;
  /** Defaults to dockerd's session endpoint when talking to dockerd, the Control.Session tunnel otherwise. */
  sessionTransport?: SessionTransport;
}

/**
 * Exporters that hand the build's output back to the client through the session's FileSend, which our
 * session does not serve: BuildKit would build everything first and then fail, or (local) wait forever.
 */
const EXPORTERS_SENDING_TO_CLIENT = new Set(["local", "tar", "oci", "docker"]);

/**
 * Builds a Dockerfile with BuildKit's dockerfile.v0 frontend, as BuildKit's own client does: the session,
 * the Solve and the Status stream run together and are cancelled together through the signal.
 */
export async function buildDockerfile(
  client: BuildKitClient,
  build: DockerfileBuild,
  onStatus: (status: StatusResponse) => void,
  signal?: AbortSignal,
): Promise<Record<string, string>> {
  if (EXPORTERS_SENDING_TO_CLIENT.has(build.exporter.type)) {
    throw new ConnectError(
      `the "${build.exporter.type}" exporter sends the build's output back to the client, which this client cannot receive: export with "image" (push=true to send it to a registry) or, on dockerd, "moby"`,
      Code.InvalidArgument,
    );
  }
  const controller = new AbortController();
  const abort = () => controller.abort(signal?.reason);
  signal?.addEventListener("abort", abort, { once: true });
  const session = await client.openSession(
    {
      name: build.sessionName,
      sharedKey: build.sharedKey,
      localDirs: { context: build.context, dockerfile: build.dockerfileDir },
      secrets: build.secrets,
      observer: build.observer,
      registryCredentials: build.registryCredentials,
    },
    controller.signal,
    build.sessionTransport,
  );
  const ref = randomBytes(16).toString("hex");
  const progress = (async () => {
    for await (const status of client.status(ref, controller.signal)) onStatus(status);
  })();
  try {
    const frontendAttrs: Record<string, string> = {
      filename: "Dockerfile",
      "force-network-mode": build.network,
    };
    for (const [name, value] of Object.entries(build.buildArgs)) frontendAttrs[`build-arg:${name}`] = value;
    for (const [name, value] of Object.entries(build.labels ?? {})) frontendAttrs[`label:${name}`] = value;
    if (build.noCache) frontendAttrs["no-cache"] = "";
    if (build.ignoreSyntaxDirective) frontendAttrs.cmdline = "";
    if (build.target) frontendAttrs.target = build.target;
    // BuildKit v0.8's Dockerfile frontend reads cache imports from this attribute, later ones from Cache.
    if (build.cacheImports?.length) {
      frontendAttrs["cache-imports"] = JSON.stringify(build.cacheImports.map((entry) => ({ Type: entry.type, Attrs: entry.attrs })));
    }
    const response = await client.solve(
      {
        Ref: ref,
        Session: session.id,
        Frontend: "dockerfile.v0",
        FrontendAttrs: frontendAttrs,
        // v0.8 reads one exporter from Exporter/ExporterAttrs; v0.13+ reads Exporters.
        Exporter: build.exporter.type,
        ExporterAttrs: build.exporter.attrs,
        Exporters: [{ Type: build.exporter.type, Attrs: build.exporter.attrs }],
        // A standalone buildkitd runs RUN on the host network only when the build asks for the entitlement.
        Entitlements: build.network === "host" ? ["network.host"] : [],
        Cache: {
          Imports: (build.cacheImports ?? []).map((entry) => ({ Type: entry.type, Attrs: entry.attrs })),
          Exports: (build.cacheExports ?? []).map((entry) => ({ Type: entry.type, Attrs: entry.attrs })),
        },
      },
      controller.signal,
    );
    // The status stream ends by itself once the job is done; wait for its last events.
    await progress.catch(() => {});
    return { ...response.ExporterResponse };
  } catch (error) {
    controller.abort(error);
    await progress.catch(() => {});
    throw error;
  } finally {
    signal?.removeEventListener("abort", abort);
    session.close();
  }
}

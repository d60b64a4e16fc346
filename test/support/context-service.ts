import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient, type Client } from "@connectrpc/connect";
import { ContextService } from "../../gen/steprunner/context/v1/context_service_pb.js";
import { type ContextServiceParts, type ContextServiceSettings, openContextService } from "../../services/context-service/service.js";
import { serviceTransport } from "../../services/shared/client/transport.js";
import { createLogger } from "../../services/shared/log.js";
import { type RunningServer, startServer } from "../../services/shared/server/serve.js";

export interface TestContextService {
  parts: ContextServiceParts;
  server: RunningServer;
  client: Client<typeof ContextService>;
  address: string;
  stateDir: string;
  stop(): Promise<void>;
}

/** A context-service in this process on 127.0.0.1 and a free port, with its own state directory. */
export async function startTestContextService(overrides: Partial<ContextServiceSettings> = {}): Promise<TestContextService> {
  const stateDir = await mkdtemp(join(tmpdir(), "context-state-"));
  const settings: ContextServiceSettings = {
    stateDir,
    repoFolder: ".mintpress",
    cacheMaxBytes: 1024 ** 3,
    fetchTimeoutMs: 60_000,
    layersMaxAgeMs: 3600_000,
    mirrorsMaxAgeMs: 0,
    maxDockerfileBytes: 1024 * 1024,
    maxPropertiesBytes: 64 * 1024,
    trustStoreDir: "",
    ...overrides,
  };
  const logger = createLogger("context-service-test", {}, { quiet: true });
  const parts = await openContextService(settings, "0.0.0-test", logger);
  const server = await startServer({
    address: { kind: "tcp", host: "127.0.0.1", port: 0 },
    services: [ContextService],
    routes: parts.routes,
    httpRoutes: parts.httpRoutes,
    logger,
  });
  const address = `127.0.0.1:${server.port}`;
  const transport = serviceTransport(address);
  return {
    parts,
    server,
    client: createClient(ContextService, transport.transport),
    address,
    stateDir,
    stop: async () => {
      transport.close();
      await server.close(1000);
      await rm(stateDir, { recursive: true, force: true });
    },
  };
}

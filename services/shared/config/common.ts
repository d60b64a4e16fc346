import { readFileSync } from "node:fs";
import { type LogLevel, parseLogLevel } from "../log.js";
import { type ClientSecurity, parseTokenFile, type ServerSecurity } from "../security.js";
import type { ServerLimits } from "../server/serve.js";
import type { TracingSettings } from "../tracing-setup.js";
import { numberSetting, setting } from "./env.js";

/**
 * The settings every service has (docs/settings.md), read once in its main: shared code takes them as
 * arguments and never reads the environment itself.
 */
export interface CommonSettings {
  logLevel: LogLevel;
  tracing: TracingSettings;
  serverSecurity: ServerSecurity;
  serverLimits: ServerLimits;
  /** How long calls in flight (the step-service: running steps) may finish after SIGTERM. */
  shutdownGraceMs: number;
  /** What the service presents when it calls another service. */
  clientSecurity: ClientSecurity;
}

export function readCommonSettings(service: string): CommonSettings {
  return {
    logLevel: parseLogLevel(setting("STEPRUNNER_LOG_LEVEL", "info")),
    tracing: readTracingSettings(service),
    serverSecurity: serverSecurityFromSettings(),
    serverLimits: {
      maxRequestBytes: numberSetting("STEPRUNNER_MAX_REQUEST_BYTES", 4 * 1024 * 1024),
      maxConcurrentStreams: numberSetting("STEPRUNNER_MAX_CONCURRENT_STREAMS", 100),
    },
    shutdownGraceMs: numberSetting("STEPRUNNER_SHUTDOWN_GRACE_MS", 10_000),
    clientSecurity: clientSecurityFromSettings(),
  };
}

/**
 * STEPRUNNER_TRACING (off or otlp) and OTEL_SERVICE_NAME (by default the service's name). The OTLP exporter
 * reads its endpoint from OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT itself.
 */
export function readTracingSettings(service: string): TracingSettings {
  const mode = setting("STEPRUNNER_TRACING", "off");
  if (mode !== "off" && mode !== "otlp") throw new Error(`STEPRUNNER_TRACING must be off or otlp, got "${mode}"`);
  return { mode, serviceName: setting("OTEL_SERVICE_NAME", service) };
}

const read = (path: string) => readFileSync(path, "utf8");

/**
 * The server side, from settings: STEPRUNNER_TLS_CERT and STEPRUNNER_TLS_KEY turn on TLS,
 * STEPRUNNER_TLS_CLIENT_CA makes it mutual, STEPRUNNER_AUTH_TOKEN_FILE requires tokens.
 * Files rather than values, so that secrets stay out of process listings and environments.
 */
export function serverSecurityFromSettings(): ServerSecurity {
  const cert = setting("STEPRUNNER_TLS_CERT", "");
  const key = setting("STEPRUNNER_TLS_KEY", "");
  if (Boolean(cert) !== Boolean(key)) throw new Error("STEPRUNNER_TLS_CERT and STEPRUNNER_TLS_KEY go together");
  const clientCa = setting("STEPRUNNER_TLS_CLIENT_CA", "");
  if (clientCa && !cert) throw new Error("STEPRUNNER_TLS_CLIENT_CA needs STEPRUNNER_TLS_CERT and STEPRUNNER_TLS_KEY");
  const tokenFile = setting("STEPRUNNER_AUTH_TOKEN_FILE", "");
  const named = tokenFile ? parseTokenFile(read(tokenFile)) : undefined;
  if (named && named.length === 0) throw new Error(`STEPRUNNER_AUTH_TOKEN_FILE ${tokenFile} holds no token`);
  return {
    tls: cert ? { cert: read(cert), key: read(key), clientCa: clientCa ? read(clientCa) : undefined } : undefined,
    tokens: named?.map((entry) => entry.token),
    tokenNames: named ? Object.fromEntries(named.map((entry) => [entry.token, entry.name])) : undefined,
  };
}

/**
 * The client side, from settings: STEPRUNNER_CLIENT_TLS_CA (https to the services), STEPRUNNER_CLIENT_TLS_CERT
 * and STEPRUNNER_CLIENT_TLS_KEY (mutual TLS), and the first token of STEPRUNNER_AUTH_TOKEN_FILE.
 */
export function clientSecurityFromSettings(): ClientSecurity {
  const ca = setting("STEPRUNNER_CLIENT_TLS_CA", "");
  const cert = setting("STEPRUNNER_CLIENT_TLS_CERT", "");
  const key = setting("STEPRUNNER_CLIENT_TLS_KEY", "");
  const tokenFile = setting("STEPRUNNER_AUTH_TOKEN_FILE", "");
  return {
    ca: ca ? read(ca) : undefined,
    cert: cert ? read(cert) : undefined,
    key: key ? read(key) : undefined,
    token: tokenFile ? parseTokenFile(read(tokenFile))[0]?.token : undefined,
  };
}

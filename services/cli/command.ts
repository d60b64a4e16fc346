import { clientSecurityFromSettings } from "../shared/config/common.js";
import type { ClientSecurity } from "../shared/security.js";

/** A subcommand of the steprunner CLI (its one-line summary is in main.ts). run() returns the process exit code. */
export interface Command {
  usage: string;
  options: Record<string, { type: "string" | "boolean"; description: string; default?: string; multiple?: boolean }>;
  /** Whether the command takes positional arguments (e.g. a step ID). */
  positionals?: boolean;
  run(values: Record<string, string | boolean | string[] | undefined>, positionals?: string[]): Promise<number>;
}

export const serviceAddressOptions = {
  "context-addr": {
    type: "string",
    description: "context-service address, HOST:PORT or unix:/path (env STEPRUNNER_CONTEXT_ADDR)",
    default: process.env.STEPRUNNER_CONTEXT_ADDR || "127.0.0.1:7701",
  },
  "image-addr": {
    type: "string",
    description: "image-service address (env STEPRUNNER_IMAGE_ADDR)",
    default: process.env.STEPRUNNER_IMAGE_ADDR || "127.0.0.1:7702",
  },
  "step-addr": {
    type: "string",
    description: "step-service address (env STEPRUNNER_STEP_ADDR)",
    default: process.env.STEPRUNNER_STEP_ADDR || "127.0.0.1:7703",
  },
} as const satisfies Command["options"];

let security: ClientSecurity | undefined;

/** What the CLI presents to the services (STEPRUNNER_CLIENT_TLS_*, STEPRUNNER_AUTH_TOKEN_FILE), read once. */
export function clientSecurity(): ClientSecurity {
  security ??= clientSecurityFromSettings();
  return security;
}

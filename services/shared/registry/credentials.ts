import { readFileSync } from "node:fs";

export interface RegistryCredential {
  username: string;
  password: string;
}

/** Credentials by registry host ("host:port"), as Docker's config.json keeps them under "auths". */
export type RegistryCredentials = Map<string, RegistryCredential>;

/**
 * Reads a Docker config.json: {"auths": {"host:port": {"auth": base64("user:password")}}} or with
 * "username" and "password". Hosts may be written as URLs; only host[:port] counts.
 */
export function readRegistryCredentials(path: string): RegistryCredentials {
  const config = JSON.parse(readFileSync(path, "utf8")) as { auths?: Record<string, { auth?: string; username?: string; password?: string }> };
  const credentials: RegistryCredentials = new Map();
  for (const [key, entry] of Object.entries(config.auths ?? {})) {
    const host = key.replace(/^https?:\/\//, "").replace(/\/.*$/, "");
    if (entry.auth) {
      const decoded = Buffer.from(entry.auth, "base64").toString("utf8");
      const colon = decoded.indexOf(":");
      if (colon < 0) throw new Error(`${path}: the auth of ${key} is not base64 of user:password`);
      credentials.set(host, { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) });
    } else if (entry.username !== undefined && entry.password !== undefined) {
      credentials.set(host, { username: entry.username, password: entry.password });
    } else {
      throw new Error(`${path}: ${key} has neither auth nor username and password`);
    }
  }
  return credentials;
}

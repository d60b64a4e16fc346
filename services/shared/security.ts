import { createHash, timingSafeEqual } from "node:crypto";

/** TLS for a server: its certificate and key; with clientCa, clients must present a certificate it signed. */
export interface ServerTls {
  cert: string;
  key: string;
  clientCa?: string;
}

export interface ServerSecurity {
  tls?: ServerTls;
  /** Accepted bearer tokens; when set, every call but the health check must carry one. */
  tokens?: string[];
  /** Names of tokens, by token, that tell callers apart in messages and limits (see callerOf). */
  tokenNames?: Record<string, string>;
}

/** TLS and credentials a client presents to our services. */
export interface ClientSecurity {
  /** The CA that signed the services' certificates; its presence means https. */
  ca?: string;
  cert?: string;
  key?: string;
  token?: string;
}

/**
 * A token file: one token a line, optionally after a name and a space ("ci 3f9a…"), the name standing for
 * its caller in messages; a token without one is "#N", its place in the file.
 */
export function parseTokenFile(text: string): { name: string; token: string }[] {
  const lines = text
    .split("\n")
    .map((line) => line.trim())
    .filter(Boolean);
  return lines.map((line, index) => {
    const fields = line.split(/\s+/);
    if (fields.length > 2) throw new Error(`line ${index + 1} of the token file has ${fields.length} fields; a line is a token, or a name and a token`);
    return fields.length === 2 ? { name: fields[0]!, token: fields[1]! } : { name: `#${index + 1}`, token: fields[0]! };
  });
}

/** The token of an `Authorization: Bearer …` header, if it holds one. */
export function bearerToken(header: string | string[] | undefined): string | undefined {
  const value = Array.isArray(header) ? header[0] : header;
  return /^Bearer (\S+)$/i.exec(value ?? "")?.[1];
}

/**
 * The index of the accepted token the candidate is, or -1. The SHA-256 digests (of one length) are compared with
 * timingSafeEqual, against every accepted token, so that the time taken tells neither how much of a token was
 * right nor which token it was.
 */
export function acceptedTokenIndex(accepted: readonly string[], candidate: string | undefined): number {
  if (candidate === undefined) return -1;
  const candidateDigest = sha256(candidate);
  let index = -1;
  accepted.forEach((token, tokenIndex) => {
    const equal = timingSafeEqual(sha256(token), candidateDigest);
    if (equal && index < 0) index = tokenIndex;
  });
  return index;
}

function sha256(text: string): Buffer {
  return createHash("sha256").update(text).digest();
}

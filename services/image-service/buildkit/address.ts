import type { ConnectionOptions } from "node:tls";

/**
 * Where BuildKit is reached:
 * - docker-unix:///path/docker.sock: the BuildKit inside dockerd, through the Docker API's POST /grpc upgraded to h2c;
 * - unix:///path/buildkitd.sock: a standalone buildkitd;
 * - tcp://host:port: a standalone buildkitd over TCP.
 */
export type BuildKitAddress =
  | { kind: "docker-unix"; socketPath: string }
  | { kind: "unix"; socketPath: string }
  | { kind: "tcp"; host: string; port: number; tls?: BuildKitTls };

/** TLS for tcp://: the CA that signed buildkitd's certificate, and ours for mutual TLS. PEM contents. */
export interface BuildKitTls {
  ca: string;
  cert?: string;
  key?: string;
  /** The name buildkitd's certificate is for, when it is not the address's host. */
  serverName?: string;
}

export function tlsOptions(settings: BuildKitTls): ConnectionOptions {
  return { ca: settings.ca, cert: settings.cert, key: settings.key, servername: settings.serverName, ALPNProtocols: ["h2"] };
}

export function parseBuildKitAddress(text: string): BuildKitAddress {
  const [scheme, rest] = splitScheme(text);
  switch (scheme) {
    case "docker-unix":
    case "unix":
      if (!rest.startsWith("/")) throw new Error(`${scheme}:// needs an absolute socket path, got "${text}"`);
      return { kind: scheme, socketPath: rest };
    case "tcp": {
      const match = /^(?:\[([^\]]+)\]|([^:/]+)):(\d{1,5})$/.exec(rest);
      if (!match || Number(match[3]) > 65535) throw new Error(`tcp:// needs HOST:PORT, got "${text}"`);
      return { kind: "tcp", host: match[1] ?? match[2]!, port: Number(match[3]) };
    }
    default:
      throw new Error(`unsupported BuildKit address "${text}": use docker-unix://, unix:// or tcp://`);
  }
}

function splitScheme(text: string): [string, string] {
  const index = text.indexOf("://");
  if (index < 0) throw new Error(`BuildKit address needs a scheme (docker-unix://, unix://, tcp://), got "${text}"`);
  return [text.slice(0, index), text.slice(index + 3)];
}

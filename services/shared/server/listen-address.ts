/** Where a service listens: a loopback (or other) TCP host and port, or a unix socket path. */
export type ListenAddress = { kind: "tcp"; host: string; port: number } | { kind: "unix"; path: string };

/** Parses "HOST:PORT", "[::1]:PORT" or "unix:/path/to.sock". */
export function parseListenAddress(text: string): ListenAddress {
  if (text.startsWith("unix:")) {
    const path = text.slice("unix:".length).replace(/^\/\/(?=\/)/, "");
    if (!path.startsWith("/")) throw new Error(`unix socket address needs an absolute path: ${text}`);
    return { kind: "unix", path };
  }
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(text);
  const port = match ? Number(match[3]) : NaN;
  if (!match || port > 65535) throw new Error(`listen address must be HOST:PORT or unix:/path, got "${text}"`);
  return { kind: "tcp", host: match[1] ?? match[2]!, port };
}

export function formatListenAddress(address: ListenAddress): string {
  if (address.kind === "unix") return `unix:${address.path}`;
  return address.host.includes(":") ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`;
}

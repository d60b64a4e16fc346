/** An ADD of something BuildKit fetches itself from the network: a URL or a git remote. */
export interface RemoteSource {
  line: number;
  source: string;
}

const REMOTE = /^([a-z][a-z0-9+.-]*:\/\/|git@)/i;

/**
 * Finds the first ADD whose source is fetched from the network. BuildKit's daemon fetches it, outside the
 * build's network mode, so even a build without network could reach the host's loopback (the registry, the
 * services). Follows line continuations with the escape parser directive, and expands $NAME and ${NAME}
 * from the ARG and ENV values declared before, so that a variable does not hide a URL.
 */
export function findRemoteSource(dockerfile: string): RemoteSource | undefined {
  const lines = dockerfile.split("\n");
  let escape = "\\";
  let index = 0;
  for (; index < lines.length; index++) {
    const directive = /^#\s*([a-z]+)\s*=\s*(\S+)\s*$/i.exec(lines[index]!);
    if (!directive) break;
    if (directive[1]!.toLowerCase() === "escape") escape = directive[2]!;
  }
  const values = new Map<string, string>();
  const expand = (text: string) =>
    text.replace(/\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-+][^}]*)?\}|([A-Za-z_][A-Za-z0-9_]*))/g, (_, braced: string, bare: string) => values.get(braced ?? bare) ?? "");
  for (; index < lines.length; index++) {
    const lineNumber = index + 1;
    let instruction = lines[index]!;
    while (instruction.trimEnd().endsWith(escape) && index + 1 < lines.length) {
      const next = lines[++index]!;
      if (/^\s*#/.test(next)) continue;
      instruction = instruction.trimEnd().slice(0, -escape.length) + " " + next;
    }
    const trimmed = instruction.trim();
    if (trimmed === "" || trimmed.startsWith("#")) continue;
    const [keyword = "", ...rest] = trimmed.split(/\s+/);
    const word = keyword.toUpperCase();
    if (word === "ARG" || word === "ENV") {
      if (word === "ENV" && rest[0] && !rest[0].includes("=")) {
        values.set(rest[0], expand(rest.slice(1).join(" ")));
        continue;
      }
      for (const pair of rest) {
        const [name, ...value] = pair.split("=");
        if (name && value.length > 0) values.set(name, expand(value.join("=").replace(/^["']|["']$/g, "")));
      }
      continue;
    }
    if (word !== "ADD") continue;
    const body = trimmed.slice(keyword.length).trim();
    let operands: string[];
    try {
      operands = body.startsWith("[") ? (JSON.parse(body) as string[]) : body.split(/\s+/);
    } catch {
      operands = body.split(/\s+/);
    }
    const sources = operands.filter((operand) => !operand.startsWith("--")).slice(0, -1);
    const remote = sources.map(expand).find((source) => REMOTE.test(source));
    if (remote) return { line: lineNumber, source: remote };
  }
  return undefined;
}

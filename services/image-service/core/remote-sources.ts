import { dockerfileInstructions } from "../../shared/dockerfile-instructions.js";

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
  const values = new Map<string, string>();
  const expand = (text: string) =>
    text.replace(
      /\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-+][^}]*)?\}|([A-Za-z_][A-Za-z0-9_]*))/g,
      (_, braced: string, bare: string) => values.get(braced ?? bare) ?? "",
    );
  for (const { line, keyword, body } of dockerfileInstructions(dockerfile)) {
    const rest = body.split(/\s+/);
    if (keyword === "ARG" || keyword === "ENV") {
      if (keyword === "ENV" && rest[0] && !rest[0].includes("=")) {
        values.set(rest[0], expand(rest.slice(1).join(" ")));
        continue;
      }
      for (const pair of rest) {
        const [name, ...value] = pair.split("=");
        if (name && value.length > 0) values.set(name, expand(value.join("=").replace(/^["']|["']$/g, "")));
      }
      continue;
    }
    if (keyword !== "ADD") continue;
    let operands: string[];
    try {
      operands = body.startsWith("[") ? (JSON.parse(body) as string[]) : rest;
    } catch {
      operands = rest;
    }
    const sources = operands.filter((operand) => !operand.startsWith("--")).slice(0, -1);
    const remote = sources.map(expand).find((source) => REMOTE.test(source));
    if (remote) return { line, source: remote };
  }
  return undefined;
}

/**
 * .dockerignore-style path patterns, as BuildKit sends them in DiffCopy's include-patterns,
 * exclude-patterns and followpaths headers: `*` and `?` within one path element, `**` across elements,
 * a leading `!` re-includes, the last matching pattern wins, and a pattern matching a directory covers
 * everything below it.
 */
export class PathPatterns {
  private readonly rules: Array<{ regex: RegExp; negated: boolean; literalPrefix: string }>;

  constructor(patterns: string[]) {
    this.rules = patterns
      .map((pattern) => pattern.trim())
      .filter((pattern) => pattern !== "" && !pattern.startsWith("#"))
      .map((pattern) => {
        const negated = pattern.startsWith("!");
        const cleaned = clean(negated ? pattern.slice(1) : pattern);
        return { regex: toRegex(cleaned), negated, literalPrefix: cleaned.split(/[*?[\\]/)[0]! };
      });
  }

  get empty(): boolean {
    return this.rules.length === 0;
  }

  /** Whether the path (relative, "/"-separated) or one of its parent directories matches. */
  matches(path: string): boolean {
    let matched = false;
    const candidates = ancestry(path);
    for (const rule of this.rules) {
      if (candidates.some((candidate) => rule.regex.test(candidate))) matched = !rule.negated;
    }
    return matched;
  }

  /** Whether something below this directory could match, so that the directory must be walked and sent. */
  mayMatchBelow(dir: string): boolean {
    const prefix = `${dir}/`;
    return this.rules.some(
      (rule) => !rule.negated && (rule.literalPrefix.startsWith(prefix) || prefix.startsWith(rule.literalPrefix)),
    );
  }
}

function clean(pattern: string): string {
  return pattern.replace(/^(\.\/|\/)+/, "").replace(/\/+$/, "");
}

function ancestry(path: string): string[] {
  const parts = path.split("/");
  return parts.map((_, index) => parts.slice(0, index + 1).join("/"));
}

function toRegex(pattern: string): RegExp {
  let source = "";
  for (let i = 0; i < pattern.length; i++) {
    const char = pattern[i]!;
    if (char === "*" && pattern[i + 1] === "*") {
      source += ".*";
      i++;
      if (pattern[i + 1] === "/") i++;
    } else if (char === "*") source += "[^/]*";
    else if (char === "?") source += "[^/]";
    else if (char === "\\" && i + 1 < pattern.length) source += escape(pattern[++i]!);
    else source += escape(char);
  }
  return new RegExp(`^${source}$`);
}

function escape(char: string): string {
  return /[.+^${}()|[\]\\]/.test(char) ? `\\${char}` : char;
}


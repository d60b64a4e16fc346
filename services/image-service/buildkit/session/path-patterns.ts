import { Code, ConnectError } from "@connectrpc/connect";

interface Rule {
  /** A `!` pattern: it un-selects what earlier patterns selected. */
  exception: boolean;
  regex: RegExp;
  /** The pattern's text before its first special character: every path it matches starts with it. */
  literalPrefix: string;
}

/**
 * Path patterns as BuildKit reads .dockerignore and DiffCopy's include-patterns, exclude-patterns and followpaths
 * (moby/patternmatcher, applied by fsutil): `*` is any characters but `/`, `?` one character but `/`, `[...]` a
 * character class (`^` negates it, `a-z` is a range), `**` followed by `/` any number of whole directories,
 * `**` at the end anything below, `\` takes the next character literally. A pattern that matches a directory
 * matches everything below it, a leading `!` makes an exception, and the last pattern that matches a path decides.
 * Patterns are cleaned as paths first (`./`, a leading or trailing `/`, doubled `/` and `..`).
 */
export class PathPatterns {
  private readonly rules: Rule[];

  /** Throws INVALID_ARGUMENT, naming the pattern, for a pattern BuildKit would refuse too. */
  constructor(patterns: string[]) {
    this.rules = patterns
      .map((pattern) => pattern.trim())
      .filter((pattern) => pattern !== "")
      .map((pattern) => {
        if (pattern === "!") throw invalidPattern(pattern, "an exception needs a pattern after the !");
        const exception = pattern.startsWith("!");
        const cleaned = cleanPath(exception ? pattern.slice(1) : pattern);
        return { exception, regex: compile(cleaned, pattern), literalPrefix: cleaned.split(/[*?[\\]/)[0]! };
      });
  }

  get empty(): boolean {
    return this.rules.length === 0;
  }

  /** Whether the patterns select the path (relative, "/"-separated), itself or through a parent directory. */
  matches(path: string): boolean {
    const candidates = ancestry(path);
    let matched = false;
    for (const rule of this.rules) {
      // Only an exception can change a selected path, and only a plain pattern an unselected one.
      if (rule.exception !== matched) continue;
      if (candidates.some((candidate) => rule.regex.test(candidate))) matched = !rule.exception;
    }
    return matched;
  }

  /** Whether a plain pattern could select something below this directory, so that a walk must enter it. */
  mayMatchBelow(dir: string): boolean {
    return this.rules.some((rule) => !rule.exception && mayMatchBelow(rule, dir));
  }

  /** Whether an exception could un-select something below this selected directory, so that a walk must enter it. */
  exceptionMayMatchBelow(dir: string): boolean {
    return this.rules.some((rule) => rule.exception && mayMatchBelow(rule, dir));
  }
}

function mayMatchBelow(rule: Rule, dir: string): boolean {
  const prefix = `${dir}/`;
  return rule.literalPrefix.startsWith(prefix) || prefix.startsWith(rule.literalPrefix);
}

function invalidPattern(pattern: string, reason: string): ConnectError {
  return new ConnectError(`invalid path pattern ${JSON.stringify(pattern)}: ${reason}`, Code.InvalidArgument);
}

/** Like Go's path.Clean, without the leading "/": the paths matched are relative to the directory sent. */
function cleanPath(pattern: string): string {
  const elements: string[] = [];
  for (const element of pattern.split("/")) {
    if (element === "" || element === ".") continue;
    if (element !== "..") elements.push(element);
    else if (elements.length > 0 && elements.at(-1) !== "..") elements.pop();
    else if (!pattern.startsWith("/")) elements.push(element);
  }
  return elements.join("/");
}

function ancestry(path: string): string[] {
  const parts = path.split("/");
  return parts.map((_, index) => parts.slice(0, index + 1).join("/"));
}

function compile(pattern: string, original: string): RegExp {
  const chars = [...pattern];
  let source = "";
  for (let i = 0; i < chars.length; i++) {
    const char = chars[i]!;
    if (char === "*" && chars[i + 1] === "*") {
      i++;
      if (chars[i + 1] === "/") {
        i++;
        source += "(?:.*/)?";
      } else if (i === chars.length - 1 || (i === 1 && !/[*?[\]\\]/.test(pattern.slice(2)))) {
        // At the end, or first before a plain name (BuildKit's "**.log" is any path ending in ".log").
        source += ".*";
      } else {
        source += "(?:.*/)?";
      }
    } else if (char === "*") source += "[^/]*";
    else if (char === "?") source += "[^/]";
    else if (char === "\\") {
      const escaped = chars[++i];
      if (escaped === undefined) throw invalidPattern(original, "it ends in a \\ that escapes nothing (write \\\\ for a backslash)");
      source += escapeOutsideClass(escaped);
    } else if (char === "[") {
      const characterClass = readCharacterClass(chars, i + 1, original);
      source += characterClass.source;
      i = characterClass.end;
    } else source += escapeOutsideClass(char);
  }
  // "s": a name may hold a newline, which ** and * must still cover.
  return new RegExp(`^${source}$`, "su");
}

/** Reads the class after a `[` at start, as Go's filepath.Match accepts it; end is the index of its `]`. */
function readCharacterClass(chars: string[], start: number, original: string): { source: string; end: number } {
  let i = start;
  const negated = chars[i] === "^";
  if (negated) i++;
  const readMember = (): string => {
    const char = chars[i++];
    if (char === undefined) throw invalidPattern(original, "a [ is not closed by ] (write \\[ for a bracket)");
    if (char === "-" || char === "]") throw invalidPattern(original, `a ${char} in a character class must be escaped as \\${char}`);
    if (char !== "\\") return char;
    const escaped = chars[i++];
    if (escaped === undefined) throw invalidPattern(original, "a [ is not closed by ] (write \\[ for a bracket)");
    return escaped;
  };
  let members = "";
  do {
    const low = readMember();
    if (chars[i] === "-") {
      i++;
      const high = readMember();
      if (high.codePointAt(0)! < low.codePointAt(0)!) throw invalidPattern(original, `the range ${low}-${high} is reversed`);
      members += `${escapeInClass(low)}-${escapeInClass(high)}`;
    } else members += escapeInClass(low);
    if (i >= chars.length) throw invalidPattern(original, "a [ is not closed by ] (write \\[ for a bracket)");
  } while (chars[i] !== "]");
  return { source: `[${negated ? "^" : ""}${members}]`, end: i };
}

function escapeOutsideClass(char: string): string {
  return /[\\^$.*+?()[\]{}|/]/.test(char) ? `\\${char}` : char;
}

function escapeInClass(char: string): string {
  return /[\\\][^-]/.test(char) ? `\\${char}` : char;
}

/**
 * The `# syntax=` parser directive of a Dockerfile: it asks BuildKit to build the file with a frontend image
 * (e.g. docker/dockerfile:1.4) instead of its builtin Dockerfile frontend, which BuildKit must then pull.
 */

export interface SyntaxDirective {
  /** 1-based line of the directive. */
  line: number;
  /** The line as written, e.g. "# syntax=docker/dockerfile:1.4". */
  text: string;
  /** The frontend image, e.g. "docker/dockerfile:1.4". */
  image: string;
}

/**
 * Finds the syntax directive the way BuildKit reads parser directives: only in the comment lines at the very
 * top of the file, "# key=value" (key case-insensitive), before any blank line, other comment or instruction.
 */
export function findSyntaxDirective(dockerfile: string): SyntaxDirective | undefined {
  const lines = dockerfile.replace(/^\uFEFF/, "").split(/\r?\n/);
  for (const [index, text] of lines.entries()) {
    const directive = /^#\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(.*?)\s*$/.exec(text);
    if (!directive) return undefined;
    if (directive[1]!.toLowerCase() === "syntax") {
      const image = directive[2]!.split(/\s+/)[0] ?? "";
      return image ? { line: index + 1, text, image } : undefined;
    }
  }
  return undefined;
}

/** The registry host of an image reference, as Docker reads it: a first component with '.' or ':' or "localhost", else Docker Hub. */
export function registryHostOf(image: string): string {
  const slash = image.indexOf("/");
  const first = slash > 0 ? image.slice(0, slash) : "";
  return first && (/[.:]/.test(first) || first === "localhost") ? first : "docker.io";
}

/**
 * Whether a build failure says the Dockerfile frontend did not understand the file (an unknown flag such as
 * COPY --link on BuildKit v0.8, an unknown instruction, a heredoc it cannot parse), as opposed to a failing
 * RUN line or a missing base image.
 */
export function isNotUnderstood(message: string): boolean {
  return /parse error|unknown flag|unknown instruction|failed to parse|not supported|unsupported|syntax error|invalid (?:instruction|flag|mount)|has an error on line/i.test(
    message,
  );
}

/** How the image-service treats a syntax directive (STEPRUNNER_DOCKERFILE_SYNTAX). */
export type SyntaxPolicy = "auto" | "pull" | "builtin";

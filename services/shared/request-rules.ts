import { parseJsonPointer } from "./json-pointer.js";

/**
 * Rules for request fields that more than one service checks (the step-service at its boundary, the
 * context-service again before git is asked anything). Each returns what is allowed when the value breaks the
 * rule, or undefined when it is fine; the caller names the field.
 */

export const MAX_URL_LENGTH = 2048;
export const MAX_REV_LENGTH = 255;
export const MAX_OWNERS = 32;
export const MAX_SECRET_POINTERS = 1000;

const URL_KINDS = "an absolute path or a file://, http(s)://, git:// or ssh:// URL (or user@host:path)";
/** The kinds of repository address we accept; anything else (ext::, fd::, relative paths) is refused. */
const REMOTE_URL = /^(https?|git|ssh):\/\/[^\s]+$/;
const SCP_LIKE = /^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^\s]+$/;
const OWNER = /^[a-z][a-z0-9_-]{0,62}$/;

/** A repository address's shape; whether a local path exists is for the machine that reads it to say. */
export function repositoryUrlRule(url: string): string | undefined {
  if (url.length > MAX_URL_LENGTH) return `must be at most ${MAX_URL_LENGTH} characters`;
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what it refuses
  if (/[\u0000-\u001f\u007f]/.test(url)) return `must be ${URL_KINDS} without control characters`;
  const trimmed = url.length > 1 ? url.replace(/\/+$/, "") : url;
  if (trimmed.startsWith("file://")) {
    return decodeURIComponent(trimmed.slice("file://".length)).startsWith("/") ? undefined : "must have an absolute path after file://";
  }
  if (trimmed.startsWith("/") || REMOTE_URL.test(trimmed) || SCP_LIKE.test(trimmed)) return undefined;
  return `must be ${URL_KINDS}`;
}

/**
 * GIT_REV by git's rules for ref names (git check-ref-format), which also rules out revision expressions such
 * as "main~1" or "@{upstream}": GIT_REV names a branch, tag, commit SHA or HEAD.
 */
export function revisionRule(rev: string): string | undefined {
  const allowed = "must be a branch, tag, short or full commit SHA, or HEAD";
  if (rev === "") return allowed;
  if (rev.length > MAX_REV_LENGTH) return `must be at most ${MAX_REV_LENGTH} characters`;
  const problem =
    // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what it refuses
    /[\u0000-\u0020\u007f~^:?*[\\]/.test(rev)
      ? "without spaces, control characters or any of ~ ^ : ? * [ \\"
      : rev.startsWith("-")
        ? "not starting with '-'"
        : rev.includes("..")
          ? "without '..'"
          : rev.includes("@{")
            ? "without '@{'"
            : rev.startsWith("/") || rev.endsWith("/") || rev.includes("//")
              ? "without empty path components"
              : rev.endsWith(".") || rev.endsWith(".lock")
                ? "not ending with '.' or '.lock'"
                : rev.split("/").some((part) => part.startsWith("."))
                  ? "without components starting with '.'"
                  : undefined;
  return problem ? `${allowed}, ${problem}` : undefined;
}

/** A properties owner's name: also its key under "properties" in step_context.json. */
export function ownerRule(owner: string): string | undefined {
  return OWNER.test(owner) ? undefined : "must be 1-63 lower case letters, digits, '_' or '-', starting with a letter (e.g. \"project\")";
}

/** A secret pointer: an RFC 6901 JSON pointer into step_context.json's "properties", starting with an owner. */
export function secretPointerRule(pointer: string, owners?: ReadonlySet<string>): string | undefined {
  const allowed = 'must be a JSON pointer into the properties, starting with their owner, e.g. "/project/opschain/env/API_TOKEN"';
  if (pointer.length < 2 || pointer.length > 1024) return allowed;
  let owner: string;
  try {
    owner = parseJsonPointer(pointer)[0]!;
  } catch {
    return allowed;
  }
  if (owners && !owners.has(owner)) return `${allowed}; "${owner}" is not an owner of the request's properties`;
  return undefined;
}

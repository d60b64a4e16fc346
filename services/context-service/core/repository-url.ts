import { existsSync } from "node:fs";
import { invalidArgument, notFound } from "./errors.js";

export const MAX_URL_LENGTH = 2048;
export const MAX_REV_LENGTH = 255;

/** The kinds of repository address we accept; anything else (ext::, fd::, relative paths) is refused. */
const REMOTE_URL = /^(https?|git|ssh):\/\/[^\s]+$/;
const SCP_LIKE = /^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^\s]+$/;

/**
 * Checks a repository address and returns it trimmed of a trailing slash, so that "r" and "r/" share a mirror.
 * A local path or file:// URL must exist: NOT_FOUND says so before git is asked.
 */
export function checkRepositoryUrl(url: string): string {
  if (url === "") throw invalidArgument("repository_url is required: an absolute path, file://, http(s)://, git:// or ssh:// URL");
  if (url.length > MAX_URL_LENGTH) throw invalidArgument(`repository_url is longer than ${MAX_URL_LENGTH} characters`);
  if (/[\u0000-\u001f\u007f]/.test(url)) throw invalidArgument("repository_url contains control characters");
  const trimmed = url.length > 1 ? url.replace(/\/+$/, "") : url;
  if (trimmed.startsWith("/") || trimmed.startsWith("file://")) {
    const path = trimmed.startsWith("file://") ? decodeURIComponent(trimmed.slice("file://".length)) : trimmed;
    if (!path.startsWith("/")) throw invalidArgument(`repository_url "${url}": a file:// URL needs an absolute path`);
    if (!existsSync(path)) throw notFound(`repository "${url}" does not exist on the context-service's machine`);
    return trimmed;
  }
  if (REMOTE_URL.test(trimmed) || SCP_LIKE.test(trimmed)) return trimmed;
  throw invalidArgument(`repository_url "${url}" is not an absolute path, file://, http(s)://, git:// or ssh:// URL`);
}

/**
 * Checks GIT_REV by git's rules for ref names (git check-ref-format), which also rules out revision
 * expressions such as "main~1" or "@{upstream}": GIT_REV names a branch, tag, commit SHA or HEAD.
 */
export function checkRevision(rev: string): string {
  if (rev === "") throw invalidArgument("git_rev is required: a branch, tag, short or full commit SHA, or HEAD");
  if (rev.length > MAX_REV_LENGTH) throw invalidArgument(`git_rev is longer than ${MAX_REV_LENGTH} characters`);
  const problem =
    /[\u0000-\u0020\u007f~^:?*[\\]/.test(rev) ? "contains a space, control character or one of ~ ^ : ? * [ \\"
    : rev.startsWith("-") ? "starts with '-'"
    : rev.includes("..") ? "contains '..'"
    : rev.includes("@{") ? "contains '@{'"
    : rev.startsWith("/") || rev.endsWith("/") || rev.includes("//") ? "has an empty path component"
    : rev.endsWith(".") || rev.endsWith(".lock") ? "ends with '.' or '.lock'"
    : rev.split("/").some((part) => part.startsWith(".")) ? "has a component starting with '.'"
    : undefined;
  if (problem) throw invalidArgument(`git_rev "${rev}" ${problem}; give a branch, tag, commit SHA or HEAD`);
  return rev;
}

import { existsSync } from "node:fs";
import { repositoryUrlRule, revisionRule } from "../../shared/request-rules.js";
import { invalidField, notFound } from "./errors.js";

/**
 * Checks a repository address and returns it trimmed of a trailing slash, so that "r" and "r/" share a mirror.
 * A local path or file:// URL must exist: NOT_FOUND says so before git is asked.
 */
export function checkRepositoryUrl(url: string): string {
  const rule = repositoryUrlRule(url);
  if (rule) throw invalidField("repository_url", rule, url);
  const trimmed = url.length > 1 ? url.replace(/\/+$/, "") : url;
  const path = localRepositoryPath(trimmed);
  if (path !== undefined && !existsSync(path)) throw notFound(`repository_url: the repository "${url}" does not exist on the context-service's machine`);
  return trimmed;
}

/** The path of a repository on this machine (an absolute path or a file:// URL); undefined for a remote one. */
export function localRepositoryPath(url: string): string | undefined {
  if (url.startsWith("file://")) return decodeURIComponent(url.slice("file://".length));
  return url.startsWith("/") ? url : undefined;
}

/** Checks GIT_REV's shape (shared/request-rules.ts): a branch, tag, commit SHA or HEAD, never an expression. */
export function checkRevision(rev: string): string {
  const rule = revisionRule(rev);
  if (rule) throw invalidField("git_rev", rule, rev);
  return rev;
}

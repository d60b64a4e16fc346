/** A parsed image reference such as "127.0.0.1:5000/steprunner/runner:0.1.0" or "host/repo@sha256:…". */
export interface ImageReference {
  /** "host[:port]" */
  registry: string;
  repository: string;
  /** A tag or a digest ("sha256:…"). */
  reference: string;
}

const COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const DIGEST = /^sha256:[a-f0-9]{64}$/;

/** Parses a reference that names its registry (we never default to Docker Hub). */
export function parseImageReference(text: string): ImageReference {
  const slash = text.indexOf("/");
  const registry = slash > 0 ? text.slice(0, slash) : "";
  if (!registry || !/[.:]|^localhost$/.test(registry)) {
    throw new Error(`image reference "${text}" must start with a registry host, e.g. 127.0.0.1:5000/name:tag`);
  }
  let remainder = text.slice(slash + 1);
  let reference = "latest";
  const at = remainder.indexOf("@");
  if (at >= 0) {
    reference = remainder.slice(at + 1);
    remainder = remainder.slice(0, at);
    if (!DIGEST.test(reference)) throw new Error(`image reference "${text}" has an invalid digest`);
  } else {
    const colon = remainder.lastIndexOf(":");
    if (colon >= 0) {
      reference = remainder.slice(colon + 1);
      remainder = remainder.slice(0, colon);
      if (!TAG.test(reference)) throw new Error(`image reference "${text}" has an invalid tag`);
    }
  }
  if (!remainder.split("/").every((part) => COMPONENT.test(part))) {
    throw new Error(`image reference "${text}" has an invalid repository name "${remainder}"`);
  }
  return { registry, repository: remainder, reference };
}

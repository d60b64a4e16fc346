/**
 * What of a prepared context its step image depends on: the commit (its ref's name goes in as GIT_REV), the
 * repository's options, the Dockerfile, step_context.json.zip only when the Dockerfile is the repository's own
 * (the default one never puts the properties in a layer), and the trust store when that Dockerfile copies it.
 * Not the bytes the repository travels in: its directories and repo.tar depend on which older commits a host
 * has seen. Two contexts with the same inputs get the same image from the same base image, build arguments and
 * network: the image-service keys its reuse on them, and the step-service takes the image asked for one context
 * as the other's.
 */
export interface ImageInputs {
  gitRev: string;
  gitSha: string;
  repositoryOptions: { excludeGitHistory: boolean; honorExportIgnore: boolean };
  dockerfileDigest: string;
  /** null with the default Dockerfile. */
  stepContextZipDigest: string | null;
  /** null unless the Dockerfile copies opschain-trust-store.tar. */
  trustStoreDigest: string | null;
}

export interface ImageInputSource {
  gitRev: string;
  gitSha: string;
  repositoryOptions: { excludeGitHistory: boolean; honorExportIgnore: boolean };
  defaultDockerfile: boolean;
  dockerfileDigest: string;
  stepContextZipDigest: string;
  /** The trust store's tar, when the context has one (a Dockerfile that copies it). */
  trustStoreDigest?: string;
}

export function imageInputs(context: ImageInputSource): ImageInputs {
  return {
    gitRev: context.gitRev,
    gitSha: context.gitSha,
    repositoryOptions: { excludeGitHistory: context.repositoryOptions.excludeGitHistory, honorExportIgnore: context.repositoryOptions.honorExportIgnore },
    dockerfileDigest: context.dockerfileDigest,
    stepContextZipDigest: context.defaultDockerfile ? null : context.stepContextZipDigest,
    trustStoreDigest: context.trustStoreDigest ?? null,
  };
}

export function sameImageInputs(a: ImageInputs, b: ImageInputs): boolean {
  return (
    a.gitRev === b.gitRev &&
    a.gitSha === b.gitSha &&
    a.repositoryOptions.excludeGitHistory === b.repositoryOptions.excludeGitHistory &&
    a.repositoryOptions.honorExportIgnore === b.repositoryOptions.honorExportIgnore &&
    a.dockerfileDigest === b.dockerfileDigest &&
    a.stepContextZipDigest === b.stepContextZipDigest &&
    a.trustStoreDigest === b.trustStoreDigest
  );
}

import { createHash } from "node:crypto";

/**
 * The default step runner Dockerfile of this version, for the BuildKit inside dockerd 20.10 too: no "# syntax"
 * line (it would pull a frontend image) and no COPY --link (that frontend lacks it).
 * - The repository arrives as three directories copied in order (history, base, changes), so a new commit
 *   builds one small layer and the others are cache hits; it never reads repo.tar, which is then not made.
 * - GIT_REV and GIT_SHA are declared after the layers that do not depend on the commit.
 * - step_context.json.zip is never copied into a layer: a RUN line that needs the properties mounts it as
 *   the BuildKit secret env_context_zip.
 */
export function defaultDockerfile(version: string): string {
  return `# The default step runner Dockerfile of steprunner ${version}.
# To customise it, save it as <OPSCHAIN_REPO_FOLDER>/Dockerfile (.mintpress/Dockerfile by default) in your
# repository. Keep FROM \${OPSCHAIN_BASE_RUNNER} and do not change ENTRYPOINT.
# Build context: the repository at GIT_SHA with its .git, as three directories that together are the
# repository (history: a pack of older objects; base: the working tree of a recent commit; changes: what
# differs at GIT_SHA), and step_context.json.zip (properties and context values). A Dockerfile that names
# repo.tar gets repo.tar as well: the same repository in one file.
ARG OPSCHAIN_BASE_RUNNER

FROM \${OPSCHAIN_BASE_RUNNER}
ARG OPSCHAIN_VERSION
# Add RUN, ENV and other lines that do not depend on the commit here, so that they stay cached.
# A RUN line that needs the properties can load them without baking them into a layer:
#   RUN --mount=type=secret,id=env_context_zip,target=/tmp/step_context.json.zip,uid=10001 \\
#       opschain-exec --context /tmp/step_context.json.zip your-command
COPY --chown=10001:10001 history/ /opt/opschain/
COPY --chown=10001:10001 base/ /opt/opschain/
COPY --chown=10001:10001 changes/ /opt/opschain/
ARG GIT_REV
ARG GIT_SHA
LABEL org.steprunner.git-rev="\${GIT_REV}" org.steprunner.git-sha="\${GIT_SHA}" org.steprunner.version="\${OPSCHAIN_VERSION}"
`;
}

export interface DefaultDockerfile {
  text: string;
  version: string;
  /** "sha256:<hex>" of the text; also its HTTP ETag. */
  digest: string;
}

export function loadDefaultDockerfile(version: string): DefaultDockerfile {
  const text = defaultDockerfile(version);
  return { text, version, digest: `sha256:${createHash("sha256").update(text).digest("hex")}` };
}

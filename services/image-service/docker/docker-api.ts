import * as http from "node:http";
import { Code, ConnectError } from "@connectrpc/connect";
import type { RegistryCredentials } from "../../shared/registry/credentials.js";

/** What `GET /images/{name}/json` tells of an image. */
export interface ImageInspect {
  Id: string;
  RepoDigests: string[] | null;
  Config: {
    User?: string;
    Env?: string[] | null;
    Entrypoint?: string[] | null;
    Cmd?: string[] | null;
    WorkingDir?: string;
    Labels?: Record<string, string> | null;
  } | null;
  RootFS: { Type: string; Layers?: string[] };
  GraphDriver: { Name: string; Data: Record<string, string> | null };
  Size: number;
}

export interface PushResult {
  /** The manifest digest the registry stored. */
  digest: string;
  size: number;
}

/** The few Docker Engine API calls the image-service needs, over dockerd's unix socket. */
export class DockerApi {
  constructor(
    private readonly socketPath: string,
    private readonly credentials: RegistryCredentials = new Map(),
  ) {}

  /** The image, or undefined when dockerd does not have it. */
  async inspectImage(name: string, signal?: AbortSignal): Promise<ImageInspect | undefined> {
    const response = await this.request("GET", `/images/${encodeURIComponent(name)}/json`, {}, signal);
    if (response.status === 404) return undefined;
    return JSON.parse(response.body) as ImageInspect;
  }

  /** Fails (FAILED_PRECONDITION, dockerd's "No such image") when dockerd does not have the image. */
  async tagImage(image: string, repository: string, tag: string, signal?: AbortSignal): Promise<void> {
    const query = new URLSearchParams({ repo: repository, tag });
    await this.request("POST", `/images/${encodeURIComponent(image)}/tag?${query}`, {}, signal, []);
  }

  async removeImage(name: string, signal?: AbortSignal): Promise<void> {
    const response = await this.request("DELETE", `/images/${encodeURIComponent(name)}?noprune=false`, {}, signal, [404, 409]);
    if (response.status === 409) throw new ConnectError(`dockerd will not remove ${name}: ${errorMessage(response.body)}`, Code.FailedPrecondition);
  }

  /**
   * Pushes repository:tag to its registry (dockerd 20.10's BuildKit cannot push by itself). The answer is a
   * stream of JSON messages; an error can arrive in the middle of a 200 answer.
   */
  async pushImage(repository: string, tag: string, signal?: AbortSignal): Promise<PushResult> {
    const query = new URLSearchParams({ tag });
    // X-Registry-Auth must be present even when empty (anonymous, as the registry on loopback is).
    const host = repository.slice(0, repository.indexOf("/"));
    const credential = this.credentials.get(host);
    const auth = registryAuthHeader(credential ? { username: credential.username, password: credential.password, serveraddress: host } : {});
    const response = await this.request("POST", `/images/${encodeURIComponent(repository)}/push?${query}`, { "X-Registry-Auth": auth }, signal);
    let result: PushResult | undefined;
    for (const line of response.body.split("\n")) {
      if (!line.trim()) continue;
      const message = JSON.parse(line) as { error?: string; aux?: { Digest?: string; Size?: number } };
      if (message.error) throw new ConnectError(`pushing ${repository}:${tag} failed: ${message.error}`, Code.Unavailable);
      if (message.aux?.Digest) result = { digest: message.aux.Digest, size: message.aux.Size ?? 0 };
    }
    if (!result) throw new ConnectError(`dockerd pushed ${repository}:${tag} without telling its digest`, Code.Internal);
    return result;
  }

  private request(
    method: string,
    path: string,
    headers: Record<string, string>,
    signal?: AbortSignal,
    acceptedErrors: number[] = [404],
  ): Promise<{ status: number; body: string }> {
    return new Promise((resolve, reject) => {
      const request = http.request(
        { socketPath: this.socketPath, method, path: `/v1.41${path}`, headers: { host: "docker", ...headers }, signal },
        (response) => {
          const chunks: Buffer[] = [];
          response.on("data", (chunk: Buffer) => chunks.push(chunk));
          response.on("error", reject);
          response.on("end", () => {
            const status = response.statusCode ?? 0;
            const body = Buffer.concat(chunks).toString("utf8");
            if (status >= 400 && !acceptedErrors.includes(status)) {
              reject(
                new ConnectError(
                  `dockerd: ${method} ${path} answered ${status}: ${errorMessage(body)}`,
                  status >= 500 ? Code.Unavailable : Code.FailedPrecondition,
                ),
              );
            } else resolve({ status, body });
          });
        },
      );
      request.on("error", (error) => {
        if (signal?.aborted) reject(new ConnectError("cancelled", Code.Canceled));
        else reject(new ConnectError(`cannot reach dockerd at ${this.socketPath}: ${error.message}`, Code.Unavailable));
      });
      request.end();
    });
  }
}

/**
 * dockerd decodes X-Registry-Auth as Go's base64.URLEncoding: the URL-safe alphabet ('-' and '_'), padded with '='
 * as the Docker CLI sends it. Node's "base64url" drops the padding, hence the standard encoding with its two
 * alphabet letters swapped.
 */
function registryAuthHeader(auth: object): string {
  return Buffer.from(JSON.stringify(auth)).toString("base64").replaceAll("+", "-").replaceAll("/", "_");
}

function errorMessage(body: string): string {
  try {
    return (JSON.parse(body) as { message?: string }).message ?? body.trim();
  } catch {
    return body.trim();
  }
}

import * as http from "node:http";
import { Code, ConnectError } from "@connectrpc/connect";

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
  constructor(private readonly socketPath: string) {}

  /** The image, or undefined when dockerd does not have it. */
  async inspectImage(name: string, signal?: AbortSignal): Promise<ImageInspect | undefined> {
    const response = await this.request("GET", `/images/${encodeURIComponent(name)}/json`, {}, signal);
    if (response.status === 404) return undefined;
    return JSON.parse(response.body) as ImageInspect;
  }

  async tagImage(image: string, repository: string, tag: string, signal?: AbortSignal): Promise<void> {
    const query = new URLSearchParams({ repo: repository, tag });
    await this.request("POST", `/images/${encodeURIComponent(image)}/tag?${query}`, {}, signal);
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
    // Anonymous: the registry on loopback needs no credentials; X-Registry-Auth must still be present.
    const auth = Buffer.from("{}").toString("base64");
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
      const request = http.request({ socketPath: this.socketPath, method, path: `/v1.41${path}`, headers: { host: "docker", ...headers }, signal }, (response) => {
        const chunks: Buffer[] = [];
        response.on("data", (chunk: Buffer) => chunks.push(chunk));
        response.on("error", reject);
        response.on("end", () => {
          const status = response.statusCode ?? 0;
          const body = Buffer.concat(chunks).toString("utf8");
          if (status >= 400 && !acceptedErrors.includes(status)) {
            reject(new ConnectError(`dockerd: ${method} ${path} answered ${status}: ${errorMessage(body)}`, status >= 500 ? Code.Unavailable : Code.FailedPrecondition));
          } else resolve({ status, body });
        });
      });
      request.on("error", (error) => {
        if (signal?.aborted) reject(new ConnectError("cancelled", Code.Canceled));
        else reject(new ConnectError(`cannot reach dockerd at ${this.socketPath}: ${error.message}`, Code.Unavailable));
      });
      request.end();
    });
  }
}

function errorMessage(body: string): string {
  try {
    return (JSON.parse(body) as { message?: string }).message ?? body.trim();
  } catch {
    return body.trim();
  }
}

import { createHash } from "node:crypto";
import { Readable, Transform } from "node:stream";
import type { ReadableStream as WebReadableStream } from "node:stream/web";
import { keepRecent } from "../recent-entries.js";

export const MANIFEST_MEDIA_TYPES = ["application/vnd.docker.distribution.manifest.v2+json", "application/vnd.oci.image.manifest.v1+json"] as const;

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
}

export interface ImageManifest {
  schemaVersion: number;
  mediaType?: string;
  config: Descriptor;
  layers: Descriptor[];
}

/** The parts of an image config (OCI image spec) that running a container needs. */
export interface ImageConfigFile {
  architecture?: string;
  os?: string;
  config?: {
    User?: string;
    Env?: string[];
    Entrypoint?: string[] | null;
    Cmd?: string[] | null;
    WorkingDir?: string;
    Labels?: Record<string, string> | null;
  };
  rootfs: { type: string; diff_ids: string[] };
}

/** How many image configs a client keeps (a few kB each). */
const CONFIGS_KEPT = 256;

export class RegistryError extends Error {
  constructor(
    message: string,
    /** The HTTP status, or 0 when the registry could not be reached. */
    readonly status: number,
  ) {
    super(message);
  }
}

/**
 * A client of the OCI distribution API (anonymous, plain HTTP unless told otherwise): manifests, configs
 * and blobs, each verified against its digest.
 */
export class RegistryClient {
  private readonly base: string;
  /** Image configs read lately, by digest: content-addressed, so a warm step asks for none again. */
  private readonly configs = new Map<string, ImageConfigFile>();

  constructor(
    readonly address: string,
    scheme: "http" | "https" = "http",
  ) {
    this.base = `${scheme}://${address}/v2`;
  }

  /** The registry's Docker-Distribution-Api-Version, e.g. "registry/2.0". */
  async apiVersion(signal?: AbortSignal): Promise<string> {
    const response = await this.get("/", {}, signal);
    await response.body?.cancel();
    return response.headers.get("docker-distribution-api-version") ?? "unknown";
  }

  async manifest(repository: string, reference: string, signal?: AbortSignal): Promise<{ digest: string; manifest: ImageManifest }> {
    const response = await this.get(`/${repository}/manifests/${reference}`, { accept: MANIFEST_MEDIA_TYPES.join(", ") }, signal);
    const bytes = Buffer.from(await response.arrayBuffer());
    const digest = sha256(bytes);
    if (reference.startsWith("sha256:") && digest !== reference) {
      throw new RegistryError(`manifest ${repository}@${reference} arrived with digest ${digest}`, 502);
    }
    const manifest = JSON.parse(bytes.toString("utf8")) as ImageManifest;
    if (manifest.schemaVersion !== 2 || !manifest.config || !Array.isArray(manifest.layers)) {
      throw new RegistryError(`${repository}:${reference} is not a single-platform image manifest (schema 2)`, 415);
    }
    return { digest, manifest };
  }

  async config(repository: string, descriptor: Descriptor, signal?: AbortSignal): Promise<ImageConfigFile> {
    const known = this.configs.get(descriptor.digest);
    if (known) return structuredClone(known);
    const response = await this.get(`/${repository}/blobs/${descriptor.digest}`, {}, signal);
    const bytes = Buffer.from(await response.arrayBuffer());
    if (sha256(bytes) !== descriptor.digest) throw new RegistryError(`config ${descriptor.digest} failed its digest check`, 502);
    const config = JSON.parse(bytes.toString("utf8")) as ImageConfigFile;
    keepRecent(this.configs, descriptor.digest, config, CONFIGS_KEPT);
    return structuredClone(config);
  }

  /** Streams a blob; the stream fails at its end when the bytes do not match the digest. */
  async blob(repository: string, digest: string, signal?: AbortSignal): Promise<Readable> {
    const response = await this.get(`/${repository}/blobs/${digest}`, {}, signal);
    if (!response.body) throw new RegistryError(`blob ${digest} has no body`, 502);
    const hash = createHash("sha256");
    const verify = new Transform({
      transform(chunk: Buffer, _encoding, callback) {
        hash.update(chunk);
        callback(null, chunk);
      },
      flush(callback) {
        const actual = `sha256:${hash.digest("hex")}`;
        callback(actual === digest ? null : new RegistryError(`blob ${digest} arrived with digest ${actual}`, 502));
      },
    });
    const body = Readable.fromWeb(response.body as WebReadableStream<Uint8Array>);
    // pipe() does not pass the body's errors on (a registry gone mid-blob, an abort of the signal even after
    // the reader is done): they end the stream handed out instead, and the end of that stream releases the body.
    body.once("error", (error) => verify.destroy(new RegistryError(`blob ${digest} broke off: ${error.message}`, 0)));
    verify.once("close", () => body.destroy());
    return body.pipe(verify);
  }

  /** Deletes a manifest by digest (its blobs go at the registry's next garbage collection). */
  async deleteManifest(repository: string, digest: string, signal?: AbortSignal): Promise<void> {
    let response: Response;
    try {
      response = await fetch(`${this.base}/${repository}/manifests/${digest}`, { method: "DELETE", signal });
    } catch (error) {
      if (signal?.aborted) throw error;
      throw new RegistryError(`registry ${this.address} is unreachable: ${(error as Error).message}`, 0);
    }
    await response.body?.cancel();
    if (!response.ok && response.status !== 404)
      throw new RegistryError(`registry ${this.address}: DELETE of ${repository}@${digest} answered ${response.status}`, response.status);
  }

  /**
   * Uploads a blob from a stream of unknown length (one chunked PATCH, then the PUT that names its digest,
   * which the stream's own hash gives at its end). Returns its descriptor without the media type.
   */
  async pushBlob(repository: string, content: Readable, signal?: AbortSignal): Promise<{ digest: string; size: number }> {
    const started = await this.send("POST", `${this.base}/${repository}/blobs/uploads/`, {}, undefined, signal);
    const hash = createHash("sha256");
    let size = 0;
    const counted = content.pipe(
      new Transform({
        transform(chunk: Buffer, _encoding, callback) {
          hash.update(chunk);
          size += chunk.length;
          callback(null, chunk);
        },
      }),
    );
    content.once("error", (error) => counted.destroy(error));
    const patched = await this.send("PATCH", this.uploadUrl(started), { "content-type": "application/octet-stream" }, counted, signal);
    const digest = `sha256:${hash.digest("hex")}`;
    const target = new URL(this.uploadUrl(patched));
    target.searchParams.set("digest", digest);
    await this.send("PUT", target.toString(), {}, undefined, signal);
    return { digest, size };
  }

  /** Uploads a manifest under a tag; returns its digest. */
  async putManifest(repository: string, tag: string, manifest: ImageManifest, signal?: AbortSignal): Promise<string> {
    const bytes = Buffer.from(JSON.stringify(manifest));
    await this.send("PUT", `${this.base}/${repository}/manifests/${tag}`, { "content-type": manifest.mediaType ?? MANIFEST_MEDIA_TYPES[0] }, bytes, signal);
    return sha256(bytes);
  }

  private uploadUrl(response: Response): string {
    const location = response.headers.get("location");
    if (!location) throw new RegistryError(`registry ${this.address} gave no upload location`, 502);
    return new URL(location, this.base).toString();
  }

  private async send(
    method: string,
    url: string,
    headers: Record<string, string>,
    body: Readable | Buffer | undefined,
    signal?: AbortSignal,
  ): Promise<Response> {
    let response: Response;
    try {
      const payload = body instanceof Readable ? (Readable.toWeb(body) as unknown as ReadableStream) : body;
      response = await fetch(url, { method, headers, body: payload, signal, ...(body instanceof Readable ? { duplex: "half" } : {}) } as RequestInit);
    } catch (error) {
      if (signal?.aborted) throw error;
      throw new RegistryError(`registry ${this.address} is unreachable: ${(error as Error).message}`, 0);
    }
    if (!response.ok) {
      const text = await response.text().catch(() => "");
      throw new RegistryError(
        `registry ${this.address}: ${method} ${new URL(url).pathname} answered ${response.status} ${text.slice(0, 200).trim()}`,
        response.status,
      );
    }
    await response.body?.cancel();
    return response;
  }

  private async get(path: string, headers: Record<string, string>, signal?: AbortSignal): Promise<Response> {
    let response: Response;
    try {
      response = await fetch(this.base + path, { headers, signal });
    } catch (error) {
      if (signal?.aborted) throw error;
      throw new RegistryError(`registry ${this.address} is unreachable: ${(error as Error).message}`, 0);
    }
    if (!response.ok) {
      const text = await response.text().catch(() => "");
      throw new RegistryError(`registry ${this.address}: GET ${path} answered ${response.status} ${text.slice(0, 200).trim()}`, response.status);
    }
    return response;
  }
}

function sha256(bytes: Uint8Array): string {
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}

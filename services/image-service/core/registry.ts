/** What the image-service needs to know of the registry that images are handed over through. */
export interface RegistryProbe {
  readonly address: string;
  /** The registry's Docker-Distribution-Api-Version (e.g. "registry/2.0"), or undefined when it does not answer. */
  apiVersion(signal?: AbortSignal): Promise<string | undefined>;
}

/** A registry spoken to over plain HTTP, as the local registry on loopback is. */
export class HttpRegistryProbe implements RegistryProbe {
  constructor(readonly address: string) {}

  async apiVersion(signal?: AbortSignal): Promise<string | undefined> {
    try {
      const timeout = AbortSignal.timeout(5000);
      const response = await fetch(`http://${this.address}/v2/`, {
        signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
      });
      await response.body?.cancel();
      return response.ok ? (response.headers.get("docker-distribution-api-version") ?? "unknown") : undefined;
    } catch (error) {
      if (signal?.aborted) throw error;
      return undefined;
    }
  }
}

import type { Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import * as tar from "tar-stream";

/** Every entry's time: a constant, so that the tar depends on content alone. */
export const FIXED_MTIME = new Date(Date.UTC(2000, 0, 1));
/** The runner image's user (opschain, 10001), so that the unpacked repository belongs to the step. */
export const RUNNER_OWNER = { uid: 10001, gid: 10001, uname: "opschain", gname: "opschain" } as const;

/**
 * Writes a tar with normalised headers to a destination, honouring backpressure: every method resolves once
 * its bytes were accepted, so a slow reader slows the producer instead of filling memory.
 */
export class TarWriter {
  private readonly pack = tar.pack();
  readonly done: Promise<void>;

  constructor(destination: Writable) {
    this.done = pipeline(this.pack as unknown as NodeJS.ReadableStream, destination);
    this.done.catch(() => undefined);
  }

  directory(name: string): Promise<void> {
    return this.entry({ name: name.endsWith("/") ? name : `${name}/`, type: "directory", mode: 0o755 });
  }

  symlink(name: string, target: string): Promise<void> {
    return this.entry({ name, type: "symlink", mode: 0o777, linkname: target });
  }

  /** A file from a buffer, or from a stream of exactly size bytes. */
  async file(name: string, executable: boolean, size: number, body: Buffer | AsyncIterable<Uint8Array>): Promise<void> {
    const mode = executable ? 0o755 : 0o644;
    if (Buffer.isBuffer(body)) return this.entry({ name, type: "file", mode, size }, body);
    let sink!: ReturnType<tar.Pack["entry"]>;
    const written = new Promise<void>((resolve, reject) => {
      sink = this.pack.entry({ name, type: "file", mode, size, mtime: FIXED_MTIME, ...RUNNER_OWNER }, (error) => (error ? reject(error) : resolve()));
    });
    written.catch(() => undefined);
    for await (const chunk of body) {
      if (!sink.write(chunk)) await Promise.race([new Promise((resolve) => sink.once("drain", () => resolve(undefined))), this.done]);
    }
    sink.end(Buffer.alloc(0));
    await written;
  }

  async finish(): Promise<void> {
    this.pack.finalize();
    await this.done;
  }

  abort(error: Error): void {
    this.pack.destroy(error);
  }

  private entry(header: Partial<tar.Header> & { name: string }, body?: Buffer): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const full = { ...header, mtime: FIXED_MTIME, ...RUNNER_OWNER };
      if (body) this.pack.entry(full, body, (error) => (error ? reject(error) : resolve()));
      else this.pack.entry(full, (error) => (error ? reject(error) : resolve())).end(Buffer.alloc(0));
    });
  }
}

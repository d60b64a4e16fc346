import type { Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import * as tar from "tar-stream";

/** Every entry's time: a constant, so that the tar depends on content alone. */
export const FIXED_MTIME = new Date(Date.UTC(2000, 0, 1));
/** The runner image's user (opschain, 10001), so that the unpacked repository belongs to the step. */
export const RUNNER_OWNER = { uid: 10001, gid: 10001, uname: "opschain", gname: "opschain" } as const;

type TarEntry = ReturnType<tar.Pack["entry"]>;

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
    let sink!: TarEntry;
    const written = new Promise<void>((resolve, reject) => {
      sink = this.open({ name, type: "file", mode, size }, undefined, (error) => (error ? reject(error) : resolve()));
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
      const sink = this.open(header, body, (error) => (error ? reject(error) : resolve()));
      if (!body) sink.end(Buffer.alloc(0));
    });
  }

  /**
   * Starts an entry, with the fixed time and the runner's owner. When the tar fails (an abort, a broken
   * destination), the pack destroys the entry in progress, and any waiting, with its error: the callback
   * carries it, and an entry nobody listens to would end the process.
   */
  private open(header: Partial<tar.Header> & { name: string }, body: Buffer | undefined, callback: (error?: Error | null) => void): TarEntry {
    const full = { ...header, mtime: FIXED_MTIME, ...RUNNER_OWNER };
    const sink = body ? this.pack.entry(full, body, callback) : this.pack.entry(full, callback);
    sink.on("error", () => undefined);
    return sink;
  }
}

/**
 * Bridges a producer that calls back with events into an async iterable, for server-streaming RPCs: events
 * pushed while nobody reads are kept in order until read. Iteration ends after the buffered events once the
 * channel is closed (throwing close's error, if any) or the signal given to it aborts (the caller went away).
 * One reader.
 */
export class EventChannel<T> implements AsyncIterable<T> {
  private readonly buffered: T[] = [];
  private wake: (() => void) | undefined;
  private closed = false;
  private failure: unknown;

  constructor(private readonly signal?: AbortSignal) {}

  push(event: T): void {
    if (this.closed) return;
    this.buffered.push(event);
    this.wake?.();
  }

  close(error?: unknown): void {
    this.closed = true;
    this.failure = error;
    this.wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    const onAbort = () => this.wake?.();
    this.signal?.addEventListener("abort", onAbort, { once: true });
    try {
      for (;;) {
        while (this.buffered.length) yield this.buffered.shift()!;
        if (this.closed) {
          if (this.failure !== undefined) throw this.failure;
          return;
        }
        if (this.signal?.aborted) return;
        await new Promise<void>((resolve) => (this.wake = resolve));
        this.wake = undefined;
      }
    } finally {
      this.signal?.removeEventListener("abort", onAbort);
    }
  }
}

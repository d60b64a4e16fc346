/**
 * Bridges a producer that calls back with events into an async iterable, for server-streaming RPCs: events
 * pushed while nobody reads are kept in order until read.
 */
export class EventChannel<T> implements AsyncIterable<T> {
  private readonly buffered: T[] = [];
  private wake: (() => void) | undefined;
  private closed = false;
  private failure: unknown;

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
    for (;;) {
      while (this.buffered.length) yield this.buffered.shift()!;
      if (this.closed) {
        if (this.failure !== undefined) throw this.failure;
        return;
      }
      await new Promise<void>((resolve) => (this.wake = resolve));
      this.wake = undefined;
    }
  }
}

/** Why a waiting run was taken out of the queue by remove or removeAll (not by its signal). */
export class QueueLeftError extends Error {
  constructor(key: string) {
    super(`${key} was taken out of the queue`);
    this.name = "QueueLeftError";
  }
}

export interface QueueRunOptions {
  /** Names the run while it waits, so that remove can take it out. */
  key?: string;
  /** Told the run's place (1: next) when it starts waiting and whenever it moves up. */
  onPosition?: (position: number) => void;
  /** Aborting it while the run waits takes it out of the queue (the run rejects with the signal's reason). */
  signal?: AbortSignal;
}

interface Waiter {
  key: string | undefined;
  start: () => void;
  leave: (reason: unknown) => void;
  onPosition: ((position: number) => void) | undefined;
}

/**
 * Runs at most `limit` pieces of work at once; the rest wait in FIFO order. A run starts at once when a slot
 * is free (work is called before run returns), else when every run queued before it has started.
 */
export class FifoQueue {
  private active = 0;
  private readonly waiting: Waiter[] = [];

  constructor(private readonly limit: number) {
    if (!(limit >= 1)) throw new Error(`a queue needs a limit of at least 1, got ${limit}`);
  }

  /** Runs holding a slot. */
  get running(): number {
    return this.active;
  }

  /** Runs waiting for a slot. */
  get depth(): number {
    return this.waiting.length;
  }

  async run<T>(work: () => Promise<T>, options: QueueRunOptions = {}): Promise<T> {
    if (this.active >= this.limit || this.waiting.length > 0) await this.wait(options);
    else this.active++;
    try {
      return await work();
    } finally {
      const next = this.waiting.shift();
      // The slot passes straight to the next waiter: a run arriving meanwhile cannot take it.
      if (next) {
        this.announce();
        next.start();
      } else this.active--;
    }
  }

  /** Takes a waiting run out of the queue (it rejects with QueueLeftError); false if none waits under key. */
  remove(key: string): boolean {
    const waiter = this.waiting.find((entry) => entry.key === key);
    if (!waiter) return false;
    waiter.leave(new QueueLeftError(key));
    return true;
  }

  /** Takes every waiting run out of the queue; returns the keys of those that had one. */
  removeAll(): string[] {
    const removed = [...this.waiting];
    for (const waiter of removed) waiter.leave(new QueueLeftError(waiter.key ?? "a run"));
    return removed.flatMap((waiter) => (waiter.key === undefined ? [] : [waiter.key]));
  }

  private wait({ key, onPosition, signal }: QueueRunOptions): Promise<void> {
    return new Promise((resolve, reject) => {
      signal?.throwIfAborted();
      const onAbort = () => waiter.leave(signal!.reason);
      const waiter: Waiter = {
        key,
        onPosition,
        start: () => {
          signal?.removeEventListener("abort", onAbort);
          resolve();
        },
        leave: (reason) => {
          signal?.removeEventListener("abort", onAbort);
          const index = this.waiting.indexOf(waiter);
          if (index < 0) return;
          this.waiting.splice(index, 1);
          this.announce(index);
          reject(reason);
        },
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.waiting.push(waiter);
      onPosition?.(this.waiting.length);
    });
  }

  /** Tells the waiters from index on their new place. */
  private announce(from = 0): void {
    for (let index = from; index < this.waiting.length; index++) this.waiting[index]!.onPosition?.(index + 1);
  }
}

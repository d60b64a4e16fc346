/**
 * At most `limit` builds at once; the rest wait in FIFO order and are told their place when it changes.
 * A waiter whose signal aborts leaves the queue.
 */
export class BuildQueue {
  private running = 0;
  private readonly waiting: Array<{ start: () => void; onPosition: (position: number) => void }> = [];

  constructor(private readonly limit: number) {}

  get depth(): number {
    return this.waiting.length;
  }

  async run<T>(work: () => Promise<T>, onPosition: (position: number) => void, signal?: AbortSignal): Promise<T> {
    if (this.running >= this.limit) await this.wait(onPosition, signal);
    else this.running++;
    try {
      return await work();
    } finally {
      const next = this.waiting.shift();
      if (next) {
        this.announce();
        next.start();
      } else this.running--;
    }
  }

  private wait(onPosition: (position: number) => void, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      signal?.throwIfAborted();
      const waiter = {
        start: () => {
          signal?.removeEventListener("abort", leave);
          resolve();
        },
        onPosition,
      };
      const leave = () => {
        const index = this.waiting.indexOf(waiter);
        if (index >= 0) this.waiting.splice(index, 1);
        this.announce();
        reject(signal!.reason);
      };
      signal?.addEventListener("abort", leave, { once: true });
      this.waiting.push(waiter);
      onPosition(this.waiting.length);
    });
  }

  private announce(): void {
    this.waiting.forEach((waiter, index) => waiter.onPosition(index + 1));
  }
}

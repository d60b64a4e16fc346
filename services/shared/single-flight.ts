interface Flight<T> {
  promise: Promise<T>;
  controller: AbortController;
  waiters: number;
}

/**
 * Runs one piece of work per key at a time: callers that ask while it runs wait for the same result. The work
 * is aborted only when every caller waiting for it has aborted, so one impatient caller cannot fail the rest.
 */
export class SingleFlight<T> {
  private readonly flights = new Map<string, Flight<T>>();

  run(key: string, work: (signal: AbortSignal) => Promise<T>, signal?: AbortSignal): Promise<T> {
    let flight = this.flights.get(key);
    // Work whose callers all went away is being stopped: a new caller starts it afresh instead of joining it.
    if (!flight || flight.controller.signal.aborted) {
      const controller = new AbortController();
      const started: Flight<T> = {
        controller,
        waiters: 0,
        promise: work(controller.signal).finally(() => {
          if (this.flights.get(key) === started) this.flights.delete(key);
        }),
      };
      started.promise.catch(() => undefined);
      this.flights.set(key, started);
      flight = started;
    }
    const joined = flight;
    joined.waiters++;
    return new Promise<T>((resolve, reject) => {
      const leave = () => {
        signal?.removeEventListener("abort", onAbort);
        joined.waiters--;
      };
      const onAbort = () => {
        leave();
        if (joined.waiters === 0) joined.controller.abort(signal?.reason);
        reject(signal?.reason);
      };
      if (signal?.aborted) return onAbort();
      signal?.addEventListener("abort", onAbort, { once: true });
      joined.promise.then(
        (value) => (leave(), resolve(value)),
        (error: unknown) => (leave(), reject(error)),
      );
    });
  }

  /** Whether work runs for key. */
  has(key: string): boolean {
    return this.flights.has(key);
  }

  /** The keys with work running. */
  keys(): string[] {
    return [...this.flights.keys()];
  }

  /** How many keys have work running (for tests and metrics). */
  get running(): number {
    return this.flights.size;
  }
}

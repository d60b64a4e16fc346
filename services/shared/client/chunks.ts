const EMPTY = new Uint8Array(0);

/**
 * The chunks of a server stream of { chunk } messages, each let go of once read. Connect keeps every response
 * of a server stream reachable until the call ends (connect-es#1524: each read is raced against one promise
 * that lives as long as the call), so a download held the whole file in memory, and slowed down as it grew.
 */
export async function* releasedChunks(responses: AsyncIterable<{ chunk: Uint8Array }>): AsyncGenerator<Uint8Array> {
  for await (const response of responses) {
    const chunk = response.chunk;
    response.chunk = EMPTY;
    yield chunk;
  }
}

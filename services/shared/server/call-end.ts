import type { Interceptor, StreamRequest, UnaryRequest } from "@connectrpc/connect";

/**
 * An interceptor that sees each call end: a unary call when it returns or throws, a server stream when it has
 * been read to its end or fails. `begin` runs as the call starts and returns what to do at its end, with the
 * error if there is one; what that returns is thrown in the error's place.
 */
export function onCallEnd(begin: (request: UnaryRequest | StreamRequest) => (error?: unknown) => unknown): Interceptor {
  return (next) => async (request) => {
    const end = begin(request);
    try {
      const response = await next(request);
      if (!response.stream) {
        end();
        return response;
      }
      const original = response.message;
      return {
        ...response,
        message: (async function* () {
          try {
            yield* original;
          } catch (error) {
            throw end(error);
          }
          end();
        })(),
      };
    } catch (error) {
      throw end(error);
    }
  };
}

/**
 * A time derived from a hex digest (seconds within 2001–2033 and a fraction): equal content always gets
 * equal metadata, and different content almost never does. BuildKit sends a local file again only when its
 * size, mtime or mode changed, so this is what makes "unchanged" mean "same bytes".
 */
export function stableTime(hexDigest: string): Date {
  const hex = hexDigest.replace(/^sha256:/, "");
  const seconds = 1_000_000_000 + (parseInt(hex.slice(0, 8), 16) % 1_000_000_000);
  const milliseconds = parseInt(hex.slice(8, 11), 16) % 1000;
  return new Date(seconds * 1000 + milliseconds);
}

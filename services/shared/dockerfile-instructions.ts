/** One instruction of a Dockerfile: its keyword in upper case, its arguments as written, its first line. */
export interface DockerfileInstruction {
  line: number;
  keyword: string;
  /** The instruction after its keyword, continuation lines joined. */
  body: string;
}

/**
 * The instructions of a Dockerfile, as BuildKit's parser reads them: parser directives first (only `escape`
 * matters here), line continuations joined, comment lines inside a continuation skipped, comments and blank
 * lines left out.
 */
export function dockerfileInstructions(text: string): DockerfileInstruction[] {
  const lines = text.split("\n");
  let escapeChar = "\\";
  let index = 0;
  for (; index < lines.length; index++) {
    const directive = /^#\s*([a-z]+)\s*=\s*(\S+)\s*$/i.exec(lines[index]!);
    if (!directive) break;
    if (directive[1]!.toLowerCase() === "escape") escapeChar = directive[2]!;
  }
  const instructions: DockerfileInstruction[] = [];
  for (; index < lines.length; index++) {
    const line = index + 1;
    let instruction = lines[index]!;
    while (instruction.trimEnd().endsWith(escapeChar) && index + 1 < lines.length) {
      const next = lines[++index]!;
      if (/^\s*#/.test(next)) continue;
      instruction = `${instruction.trimEnd().slice(0, -escapeChar.length)} ${next}`;
    }
    const trimmed = instruction.trim();
    if (trimmed === "" || trimmed.startsWith("#")) continue;
    const keyword = trimmed.split(/\s+/, 1)[0]!;
    instructions.push({ line, keyword: keyword.toUpperCase(), body: trimmed.slice(keyword.length).trim() });
  }
  return instructions;
}

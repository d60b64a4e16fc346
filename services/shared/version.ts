import { readFileSync } from "node:fs";

/** steprunner's version (OPSCHAIN_VERSION), from package.json so that there is one place to change it. */
export const STEPRUNNER_VERSION: string = JSON.parse(readFileSync(new URL("../../../package.json", import.meta.url), "utf8")).version;

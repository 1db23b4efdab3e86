import type { ScoreSummary } from "@/api/types";
import { number } from "./format";

/** "0.75 ± 0.12  95% [0.47, 0.92] (wilson)  n=12", or "no samples". */
export function scoreText(summary: ScoreSummary | undefined | null): string {
  if (!summary || summary.mean === null) return "no samples";
  const stderr = summary.stderr !== null ? ` ± ${number(summary.stderr, 3)}` : "";
  const interval =
    summary.ci_low !== null && summary.ci_high !== null
      ? `  95% [${number(summary.ci_low, 3)}, ${number(summary.ci_high, 3)}] (${summary.interval})`
      : "";
  return `${number(summary.mean, 4)}${stderr}${interval}  n=${summary.n}`;
}

/** The summary of one scorer from an evaluation's `summary` object. */
export function summaryOf(summary: Record<string, unknown>, scorer: string): ScoreSummary | null {
  const found = summary[scorer];
  return found && typeof found === "object" ? (found as ScoreSummary) : null;
}

import { mergePoints, type Point } from "./series";
import type { GpuSample, JobState } from "@/api/types";

// What the job page knows from its live socket (schema v1, GET /api/v1/ws/schema): the
// reducer is separate from the socket so it can be tested message by message.

const LOG_KEEP = 1_000_000; // characters of log kept in the page (the API has the rest)

export interface JobLive {
  job: JobState | null;
  series: Record<string, Point[]>;
  lastStep: number | null;
  // The snapshot of a long run stands evenly spaced steps for it, up to this step: the page
  // reads the curves it shows whole from the metrics route (mergeDetail). Null: all is here.
  thinnedUntil: number | null;
  logAttempt: number | null;
  logStart: number; // byte offset (of the attempt's log) the text starts at: above it, "load earlier"
  logEnd: number; // byte offset (of the attempt's log) the text ends at
  logText: string;
  logTrimmed: boolean;
  gpu: GpuSample[];
  alerts: Record<string, unknown>[];
  // Bumps when the job's state, attempt or error changes (not on mere progress): the views
  // read from other routes (the job record, events, checkpoints) reload then.
  statusVersion: number;
}

export function emptyJobLive(): JobLive {
  return {
    job: null,
    series: {},
    lastStep: null,
    thinnedUntil: null,
    logAttempt: null,
    logStart: 0,
    logEnd: 0,
    logText: "",
    logTrimmed: false,
    gpu: [],
    alerts: [],
    statusVersion: 0,
  };
}

interface WirePoint {
  step: number;
  key: string;
  value: number | null;
}

// Points by key, each key's sorted by step; merged by step, so a point sent twice is kept once.
function addSeries(state: JobLive, byKey: Record<string, Point[]>) {
  const series = { ...state.series };
  for (const [key, incoming] of Object.entries(byKey)) {
    series[key] = mergePoints(series[key] ?? [], incoming);
    for (const [step] of incoming) if (state.lastStep === null || step > state.lastStep) state.lastStep = step;
  }
  state.series = series;
}

function addPoints(state: JobLive, points: WirePoint[]) {
  const byKey: Record<string, Point[]> = {};
  for (const p of points) (byKey[p.key] ??= []).push([p.step, p.value]);
  addSeries(state, byKey);
}

/** Points read from the metrics route (every point of a stretch the snapshot thinned). */
export function mergeDetail(state: JobLive, points: WirePoint[]): JobLive {
  addPoints(state, points);
  return state;
}

/** Earlier log text, as GET .../logs?before=logStart answered it (offset: where it starts,
 * nextOffset: where it ends), put above what the page shows. */
export function prependLog(state: JobLive, attempt: number, offset: number, nextOffset: number, text: string): JobLive {
  // An answer for another attempt, or to an older question (the text has moved): dropped.
  if (attempt !== state.logAttempt || nextOffset !== state.logStart || offset >= nextOffset) return state;
  state.logText = text + state.logText;
  state.logStart = offset;
  return state;
}

function appendLog(state: JobLive, attempt: number, offset: number, text: string) {
  if (state.logAttempt !== attempt || offset > state.logEnd) {
    // A new attempt's log (the old one is in the API under its attempt), or text after a gap
    // (a long disconnect): the text starts over at `offset`; what is above it, the page loads
    // on demand ("load earlier"), so the text always covers logStart..logEnd exactly.
    state.logAttempt = attempt;
    state.logText = "";
    state.logStart = offset;
    state.logEnd = offset;
  } else if (offset < state.logEnd) {
    // Overlap after a reconnect: keep only the part after what we have.
    const bytes = new TextEncoder().encode(text);
    const skip = state.logEnd - offset;
    if (skip >= bytes.length) return;
    text = new TextDecoder().decode(bytes.slice(skip));
    offset = state.logEnd;
  }
  state.logText += text;
  state.logEnd = offset + new TextEncoder().encode(text).length;
  if (state.logText.length > LOG_KEEP) {
    // Drop whole lines from the top: what is left starts at a known byte offset.
    const cut = state.logText.indexOf("\n", state.logText.length - LOG_KEEP) + 1;
    if (cut > 0) {
      state.logStart += new TextEncoder().encode(state.logText.slice(0, cut)).length;
      state.logText = state.logText.slice(cut);
      state.logTrimmed = true;
    }
  }
}

export function applyMessage(state: JobLive, message: Record<string, unknown>): JobLive {
  switch (message.type) {
    case "snapshot": {
      state.job = message.job as JobState;
      // [step, value] pairs per key; a key without pairs is listed all the same.
      addSeries(state, (message.series ?? {}) as Record<string, Point[]>);
      const last = message.last_step as number | null;
      if (message.thinned && last !== null) state.thinnedUntil = Math.max(state.thinnedUntil ?? last, last);
      // The tail ends at log_offset; `log` messages continue from there.
      const tail = String(message.log_tail ?? "");
      const end = Number(message.log_offset ?? 0);
      const attempt = Number(message.log_attempt ?? 1);
      const start = Math.max(0, end - new TextEncoder().encode(tail).length);
      if (state.logAttempt !== attempt || end > state.logEnd) appendLog(state, attempt, start, tail);
      state.statusVersion += 1;
      break;
    }
    case "metrics":
      addPoints(state, message.points as WirePoint[]);
      break;
    case "log":
      appendLog(state, Number(message.attempt), Number(message.offset), String(message.text ?? ""));
      break;
    case "status": {
      const job = message.job as JobState;
      const before = state.job;
      state.job = job;
      if (!before || before.status !== job.status || before.attempt !== job.attempt || before.error !== job.error) {
        state.statusVersion += 1;
      }
      break;
    }
    case "gpu":
      state.gpu = state.gpu.concat(message.samples as GpuSample[]).slice(-5000);
      break;
    case "alert":
      state.alerts = [message.alert as Record<string, unknown>, ...state.alerts];
      break;
  }
  return state;
}

/** Keys to show first: what the user picked, else the losses (or the first key). */
export function defaultKeys(keys: string[]): string[] {
  const losses = keys.filter((k) => k === "loss" || k.endsWith("/loss") || k === "train/loss");
  if (losses.length) return losses.slice(0, 2);
  const anyLoss = keys.filter((k) => k.includes("loss"));
  return (anyLoss.length ? anyLoss : keys).slice(0, 1);
}

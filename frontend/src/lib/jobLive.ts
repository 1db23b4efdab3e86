import { mergePoints, type Point } from "./series";
import type { GpuSample, JobState } from "@/api/types";

// What the job page knows from its live socket (schema v1, GET /api/v1/ws/schema): the
// reducer is separate from the socket so it can be tested message by message.

const LOG_KEEP = 1_000_000; // characters of log kept in the page (the API has the rest)

export interface JobLive {
  job: JobState | null;
  series: Record<string, Point[]>;
  lastStep: number | null;
  logAttempt: number | null;
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
    logAttempt: null,
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

function addPoints(state: JobLive, points: WirePoint[]) {
  const byKey: Record<string, Point[]> = {};
  for (const p of points) (byKey[p.key] ??= []).push([p.step, p.value]);
  const series = { ...state.series };
  for (const [key, incoming] of Object.entries(byKey)) series[key] = mergePoints(series[key] ?? [], incoming);
  state.series = series;
  for (const p of points) if (state.lastStep === null || p.step > state.lastStep) state.lastStep = p.step;
}

function appendLog(state: JobLive, attempt: number, offset: number, text: string) {
  if (state.logAttempt !== attempt) {
    // A new attempt's log starts a new text (the old one is in the API under its attempt).
    state.logAttempt = attempt;
    state.logText = offset > 0 ? `[… first ${offset} bytes not shown …]\n` : "";
    state.logEnd = offset;
  }
  if (offset > state.logEnd) {
    state.logText += `\n[… ${offset - state.logEnd} bytes not shown …]\n`;
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
    state.logText = state.logText.slice(-LOG_KEEP);
    state.logTrimmed = true;
  }
}

export function applyMessage(state: JobLive, message: Record<string, unknown>): JobLive {
  switch (message.type) {
    case "snapshot": {
      state.job = message.job as JobState;
      addPoints(state, message.points as WirePoint[]);
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

import { usePolling } from "@/lib/poll";
import { useLive } from "@/lib/useLive";

// What the overview socket (/api/v1/ws/overview) pushes about jobs and pipelines.
export interface JobChange {
  id: number;
  status: string;
  name?: string;
}
export interface JobProgress {
  id: number;
  progress_step: number | null;
  progress_total: number | null;
}
export interface PipelineChange {
  id: number;
  status: string;
}

export interface ChangeHandlers {
  /** A job changed state (or was created). */
  job?: (job: JobChange) => void;
  /** A running job's step moved. */
  progress?: (job: JobProgress) => void;
  /** A pipeline or one of its stages changed. */
  pipeline?: (pipeline: PipelineChange) => void;
  /** Read everything again: when the socket (re)opens, and every `fallbackMs` while it is down. */
  resync: () => unknown;
}

export const FALLBACK_MS = 15_000;

/** Calls `fn` once, `ms` after the last of a burst of calls. */
export function coalesce(fn: () => unknown, ms = 250): () => void {
  let timer: ReturnType<typeof setTimeout> | null = null;
  return () => {
    if (timer) clearTimeout(timer);
    timer = setTimeout(() => {
      timer = null;
      void fn();
    }, ms);
  };
}

interface Rows {
  items: { id: number; progress: { step: number | null; total: number | null } }[];
}

/** The page with the job's step and total replaced, if the job is on it (a new object, for a
 * shallow ref); the same page otherwise. */
export function withProgress<T extends Rows>(page: T | null, job: JobProgress): T | null {
  if (!page || !page.items.some((row) => row.id === job.id)) return page;
  const items = page.items.map((row) =>
    row.id === job.id ? { ...row, progress: { ...row.progress, step: job.progress_step, total: job.progress_total } } : row,
  );
  return { ...page, items };
}

/** Route one overview message to its handler. */
export function dispatchChange(message: Record<string, unknown>, handlers: ChangeHandlers): void {
  switch (message.type) {
    case "overview": // the first message of each connection: what happened while it was down
      void handlers.resync();
      break;
    case "status":
      handlers.job?.(message.job as JobChange);
      break;
    case "progress":
      handlers.progress?.(message.job as JobProgress);
      break;
    case "pipeline":
      handlers.pipeline?.(message.pipeline as PipelineChange);
      break;
  }
}

/**
 * Changes of jobs and pipelines pushed over the overview socket, instead of polling; while the
 * socket is down (API restarting), `resync` every FALLBACK_MS.
 */
export function useChanges(handlers: ChangeHandlers, fallbackMs = FALLBACK_MS) {
  const live = useLive({
    path: "/api/v1/ws/overview",
    onMessage: (message) => dispatchChange(message, handlers),
  });
  usePolling(() => (live.state.value === "open" ? undefined : handlers.resync()), fallbackMs);
  return live;
}

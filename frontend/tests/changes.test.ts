import { describe, expect, it, vi } from "vitest";
import { coalesce, dispatchChange, withProgress } from "@/lib/useChanges";

describe("changes pushed over the overview socket", () => {
  it("routes each message to its handler and resyncs on every (re)connect", () => {
    const seen: string[] = [];
    const handlers = {
      job: (j: { id: number; status: string }) => seen.push(`job ${j.id} ${j.status}`),
      progress: (j: { id: number; progress_step: number | null }) => seen.push(`step ${j.id} ${j.progress_step}`),
      pipeline: (p: { id: number; status: string }) => seen.push(`pipeline ${p.id} ${p.status}`),
      resync: () => seen.push("resync"),
    };
    dispatchChange({ type: "overview", counts: {}, jobs: [] }, handlers);
    dispatchChange({ type: "status", job_id: 3, job: { id: 3, status: "running" } }, handlers);
    dispatchChange({ type: "progress", job_id: 3, job: { id: 3, progress_step: 7, progress_total: 10 } }, handlers);
    dispatchChange({ type: "pipeline", job_id: 0, pipeline: { id: 2, status: "succeeded" } }, handlers);
    dispatchChange({ type: "counts", counts: { running: 1 } }, handlers);
    expect(seen).toEqual(["resync", "job 3 running", "step 3 7", "pipeline 2 succeeded"]);
  });

  it("patches the step of a job on the page, and leaves a page without it as it is", () => {
    const page = { total: 2, items: [{ id: 1, progress: { step: 1, total: 5 } }, { id: 2, progress: { step: null, total: null } }] };
    const moved = withProgress(page, { id: 1, progress_step: 4, progress_total: 5 });
    expect(moved).not.toBe(page); // a new object: the page is a shallow ref
    expect(moved?.items[0].progress).toEqual({ step: 4, total: 5 });
    expect(moved?.items[1]).toBe(page.items[1]);
    expect(withProgress(page, { id: 9, progress_step: 1, progress_total: 2 })).toBe(page);
  });

  it("reloads once for a burst of changes", () => {
    vi.useFakeTimers();
    const reload = vi.fn();
    const soon = coalesce(reload);
    soon();
    soon();
    soon();
    vi.advanceTimersByTime(300);
    expect(reload).toHaveBeenCalledTimes(1);
    vi.useRealTimers();
  });
});

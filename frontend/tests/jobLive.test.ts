import { describe, expect, it } from "vitest";
import { applyMessage, defaultKeys, emptyJobLive, mergeDetail, prependLog } from "@/lib/jobLive";

const job = { id: 7, name: "j", status: "running", attempt: 1, version: 3, progress_step: 2, progress_total: 10, error: null, updated_at: null };

function snapshot(points: [number, string, number | null][], logTail: string, logOffset: number, attempt = 1, thinned = false) {
  const series: Record<string, [number, number | null][]> = {};
  for (const [step, key, value] of points) (series[key] ??= []).push([step, value]);
  return {
    v: 1,
    type: "snapshot",
    job_id: 7,
    job,
    series,
    thinned,
    last_step: points.length ? points[points.length - 1][0] : null,
    log_attempt: attempt,
    log_offset: logOffset,
    log_tail: logTail,
  };
}

const metrics = (steps: number[], key = "loss") => ({
  type: "metrics",
  job_id: 7,
  attempt: 1,
  last_step: Math.max(...steps),
  points: steps.map((step) => ({ step, key, value: step / 10 })),
});

describe("the job page's live state", () => {
  it("builds curves from the snapshot and live points, each step once, after a resume", () => {
    const state = emptyJobLive();
    applyMessage(state, snapshot([[1, "loss", 2.5], [2, "loss", 2.0]], "", 0));
    applyMessage(state, { type: "metrics", job_id: 7, attempt: 1, last_step: 3, points: [{ step: 3, key: "loss", value: 1.5 }] });
    // The socket dropped; the resumed snapshot repeats step 3 (at-least-once) and adds step 4.
    applyMessage(state, snapshot([[3, "loss", 1.5], [4, "loss", null]], "", 0));
    expect(state.series.loss).toEqual([[1, 2.5], [2, 2.0], [3, 1.5], [4, null]]);
    expect(state.lastStep).toBe(4);
  });

  it("continues the log from byte offsets without repeating text after a reconnect", () => {
    const state = emptyJobLive();
    applyMessage(state, snapshot([], "line 1\n", 7));
    applyMessage(state, { type: "log", job_id: 7, attempt: 1, offset: 7, text: "line 2\n" });
    // Reconnect: the snapshot's tail overlaps what the page already has.
    applyMessage(state, snapshot([], "line 2\nline 3\n", 21));
    expect(state.logText).toBe("line 1\nline 2\nline 3\n");
    expect(state.logEnd).toBe(21);
  });

  it("starts a new log for a new attempt, knowing where its text starts", () => {
    const state = emptyJobLive();
    applyMessage(state, snapshot([], "tail\n", 105, 2));
    expect(state.logText).toBe("tail\n");
    expect([state.logStart, state.logEnd]).toEqual([100, 105]); // 100 bytes above: "load earlier"
    applyMessage(state, { type: "log", job_id: 7, attempt: 3, offset: 0, text: "fresh\n" });
    expect(state.logText).toBe("fresh\n");
    expect(state.logStart).toBe(0);
  });

  it("puts earlier lines above the text, once, and only those that end where it starts", () => {
    const state = emptyJobLive();
    applyMessage(state, snapshot([], "line 3\n", 21));
    expect(state.logStart).toBe(14);
    prependLog(state, 1, 7, 14, "line 2\n");
    prependLog(state, 1, 7, 14, "line 2\n"); // the same answer twice (a double click)
    prependLog(state, 2, 0, 7, "other attempt\n");
    expect(state.logText).toBe("line 2\nline 3\n");
    prependLog(state, 1, 0, 7, "line 1\n");
    applyMessage(state, { type: "log", job_id: 7, attempt: 1, offset: 21, text: "line 4\n" });
    expect(state.logText).toBe("line 1\nline 2\nline 3\nline 4\n");
    expect([state.logStart, state.logEnd]).toEqual([0, 28]);
    // After a long disconnect the tail starts past the text: it starts over there.
    applyMessage(state, snapshot([], "line 9\n", 70));
    expect(state.logText).toBe("line 9\n");
    expect([state.logStart, state.logEnd]).toEqual([63, 70]);
  });

  it("grows a thinned snapshot's curves with live points and the metrics route's detail, each step once", () => {
    const state = emptyJobLive();
    // 2,000 steps thinned to every 20th (and the last); a key the thinned steps missed is listed.
    const thinned: [number, string, number | null][] = [];
    for (let step = 1; step <= 2000; step += step === 1981 ? 19 : 20) thinned.push([step, "loss", step / 10]);
    const first = snapshot(thinned, "", 0, 1, true);
    (first.series as Record<string, unknown[]>)["val/score"] = [];
    applyMessage(state, first);
    expect(Object.keys(state.series).sort()).toEqual(["loss", "val/score"]);
    expect(state.series.loss.length).toBe(101);
    expect([state.lastStep, state.thinnedUntil]).toEqual([2000, 2000]);
    applyMessage(state, metrics([2001, 2002]));
    // The page reads the detail up to the thinned step; it overlaps what is there.
    mergeDetail(state, metrics(Array.from({ length: 2000 }, (_, i) => i + 1)).points);
    applyMessage(state, metrics([2003]));
    // Reconnect after 2003: the resumed snapshot repeats nothing, or at worst a step it had.
    applyMessage(state, snapshot([[2003, "loss", 200.3], [2004, "loss", 200.4]], "", 0));
    const steps = state.series.loss.map(([step]) => step);
    expect(steps).toEqual(Array.from({ length: 2004 }, (_, i) => i + 1));
    expect(state.lastStep).toBe(2004);
    expect(state.thinnedUntil).toBe(2000); // an unthinned resume leaves it
  });

  it("counts changes of state (not of progress) so dependent views reload, and keeps the newest job state", () => {
    const state = emptyJobLive();
    applyMessage(state, { type: "status", job_id: 7, job: { ...job, status: "succeeded" } });
    expect(state.job?.status).toBe("succeeded");
    expect(state.statusVersion).toBe(1);
    // Progress alone moves the header, but does not make the other views reload.
    applyMessage(state, { type: "status", job_id: 7, job: { ...job, status: "succeeded", progress_step: 9 } });
    expect(state.job?.progress_step).toBe(9);
    expect(state.statusVersion).toBe(1);
  });

  it("shows losses first", () => {
    expect(defaultKeys(["grad_norm", "learning_rate", "loss"])).toEqual(["loss"]);
    expect(defaultKeys(["ppo/policy_loss", "reward"])).toEqual(["ppo/policy_loss"]);
    expect(defaultKeys(["reward"])).toEqual(["reward"]);
  });
});

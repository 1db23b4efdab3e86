import { describe, expect, it } from "vitest";
import { applyMessage, defaultKeys, emptyJobLive } from "@/lib/jobLive";

const job = { id: 7, name: "j", status: "running", attempt: 1, version: 3, progress_step: 2, progress_total: 10, error: null, updated_at: null };

function snapshot(points: [number, string, number | null][], logTail: string, logOffset: number, attempt = 1) {
  return {
    v: 1,
    type: "snapshot",
    job_id: 7,
    job,
    points: points.map(([step, key, value]) => ({ step, key, value })),
    last_step: points.length ? points[points.length - 1][0] : null,
    log_attempt: attempt,
    log_offset: logOffset,
    log_tail: logTail,
  };
}

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

  it("starts a new log for a new attempt and marks text it never received", () => {
    const state = emptyJobLive();
    applyMessage(state, snapshot([], "tail\n", 105, 2));
    expect(state.logText).toBe("[… first 100 bytes not shown …]\ntail\n");
    applyMessage(state, { type: "log", job_id: 7, attempt: 3, offset: 0, text: "fresh\n" });
    expect(state.logText).toBe("fresh\n");
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

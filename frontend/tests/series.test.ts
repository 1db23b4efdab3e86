import { describe, expect, it } from "vitest";
import { mergePoints, smooth } from "@/lib/series";

describe("smooth", () => {
  it("returns the points unchanged at weight 0", () => {
    const points: [number, number | null][] = [[1, 3], [2, 5]];
    expect(smooth(points, 0)).toBe(points);
  });

  it("is debiased, so the first value is kept and a constant stays constant", () => {
    expect(smooth([[1, 4], [2, 4], [3, 4]], 0.9).map(([, v]) => v)).toEqual([4, 4, 4].map((v) => expect.closeTo(v, 10)));
  });

  it("leaves NaN/inf gaps as gaps and does not let them into the average", () => {
    const out = smooth([[1, 2], [2, null], [3, 2]], 0.5);
    expect(out[1][1]).toBeNull();
    expect(out[2][1]).toBeCloseTo(2, 10);
  });
});

describe("mergePoints", () => {
  it("appends new steps and replaces resent ones, keeping steps sorted and unique", () => {
    const merged = mergePoints([[1, 1], [2, 2]], [[2, 20], [3, 3], [0, 0]]);
    expect(merged).toEqual([[0, 0], [1, 1], [2, 20], [3, 3]]);
  });
});

// Curves as the API returned them, and the one transformation the user can ask for:
// exponential smoothing (like TensorBoard's, debiased). Null points (NaN/inf in training)
// stay gaps and do not feed the average.

export type Point = [number, number | null];

export interface Series {
  name: string;
  points: Point[];
}

export function smooth(points: Point[], weight: number): Point[] {
  if (weight <= 0) return points;
  let last = 0;
  let count = 0;
  return points.map(([step, value]) => {
    if (value === null || !Number.isFinite(value)) return [step, null];
    last = last * weight + (1 - weight) * value;
    count += 1;
    const debias = 1 - Math.pow(weight, count);
    return [step, last / debias];
  });
}

/** Insert points keyed by step, keeping steps sorted and unique (resumes may resend). */
export function mergePoints(target: Point[], incoming: Point[]): Point[] {
  if (incoming.length === 0) return target;
  const lastStep = target.length ? target[target.length - 1][0] : -Infinity;
  if (incoming.every(([step], i) => step > lastStep && (i === 0 || step > incoming[i - 1][0]))) {
    return target.concat(incoming);
  }
  const byStep = new Map<number, number | null>(target);
  for (const [step, value] of incoming) byStep.set(step, value);
  return [...byStep.entries()].sort((a, b) => a[0] - b[0]);
}

import type { components } from "./schema";

// Named shapes of the API. Most come straight from the generated OpenAPI types; the few
// routes that answer free-form objects are described here, after the server code that
// builds them (monitoring/routes.py, scheduling/service.py).

type S = components["schemas"];
export type Job = S["JobPublic"];
export type JobsPage = S["JobsPublic"];
export type Backend = S["BackendPublic"];
export type Plan = S["PlanPublic"];
export type JobEvent = S["JobEventPublic"];
export type Checkpoint = S["CheckpointPublic"];
export type Pipeline = S["PipelinePublic"];
export type PipelineSummary = S["PipelineSummary"];
export type PipelinesPage = S["PipelinesPublic"];
export type Stage = S["StagePublic"];
export type Template = S["TemplatePublic"];
export type Host = S["HostPublic"];
export type HostKey = S["HostKeyPublic"];
export type HostCreate = S["HostCreate"];
export type Model = S["ModelPublic"];
export type Dataset = S["DatasetPublic"];
export type AlertRule = S["AlertRule"];
export type Evaluation = S["EvaluationPublic"];
export type EvaluationsPage = S["EvaluationsPublic"];
export type EvaluationSamples = S["SamplesPublic"];
export type EvaluationBreakdown = S["BreakdownPublic"];
export type Comparison = S["ComparisonPublic"];
export type Ranking = S["RankingPublic"];
export type Suite = S["SuitePublic"];
export type SuiteRun = S["SuiteRunPublic"];
export type SuiteRunsPage = S["SuiteRunsPublic"];
export type Served = S["ServedPublic"];
export type Endpoint = S["EndpointPublic"];
export type Merge = S["MergePublic"];
export type MergePreview = S["MergePreview"];
export type Lineage = S["ModelLineagePublic"];
export type Sweep = S["SweepPublic"];

/** A merge method and what it takes (surgery/service.py methods()). */
export interface MergeMethodInfo {
  method: string;
  needs_base: boolean;
  models: [number, number];
  per_model: string[];
  required: string[];
  parameters: string[];
  required_parameters: string[];
}

/** One scorer's result (evaluation/stats.py Summary): the API types it as a free object. */
export interface ScoreSummary {
  n: number;
  mean: number | null;
  stderr: number | null;
  ci_low: number | null;
  ci_high: number | null;
  interval: string;
}

/** B against A on the same samples (evaluation/stats.py Paired). */
export interface PairedStats {
  n: number;
  mean_a: number | null;
  mean_b: number | null;
  delta: number | null;
  improved: number;
  regressed: number;
  unchanged: number;
  test: string;
  p_value: number | null;
  ci_low: number | null;
  ci_high: number | null;
  significant: boolean;
}

export interface Alert {
  id: number;
  job_id: number;
  attempt: number;
  rule: string;
  key: string;
  step: number | null;
  value: number | null;
  severity: string;
  message: string;
  action: string;
  action_result: string | null;
  created_at: string;
  acknowledged_at: string | null;
  acknowledged_by: string | null;
}

export interface Webhook {
  name: string;
  url: string;
  format: string;
  events: string[];
  deliveries: Record<"pending" | "sent" | "failed", number>;
  last_error: string | null;
  created_at: string;
}

export interface GpuDevice {
  index: number;
  name: string;
  uuid: string;
  memory_total_mb: number;
  memory_used_mb: number;
  memory_free_mb: number;
  utilization_pct: number | null;
  simulated: boolean;
  held_by_job: number | null;
  occupied_by: unknown[];
  state: "held" | "occupied" | "free";
  updated_at: string | null;
}

export interface HostInventory {
  name: string;
  gpu_source: string;
  simulated: boolean;
  info: Record<string, unknown>;
  last_seen_at: string | null;
  gpus: GpuDevice[];
  cpu_slots: { index: number; held_by_job: number | null }[];
  note: string | null;
}

export interface GpuInventory {
  hosts: HostInventory[];
  simulated: boolean;
  gpus: number;
}

export interface QueueDepths {
  waiting: { queue: string; priority: number; status: string; jobs: number }[];
  broker: Record<string, Record<string, number>> | null;
  broker_error?: string;
}

export interface GpuSample {
  host: string;
  device: number;
  attempt: number;
  taken_at: string;
  memory_used_mb: number | null;
  memory_total_mb: number | null;
  utilization_pct: number | null;
  power_w: number | null;
  temperature_c: number | null;
}

export interface GpuSamples {
  samples: GpuSample[];
  peak_memory_mb: number | null;
  note: string | null;
}

/** A job as live views send it (monitoring/schemas.py JobState). */
export interface JobState {
  id: number;
  name: string;
  status: string;
  attempt: number;
  version: number;
  progress_step: number | null;
  progress_total: number | null;
  error: string | null;
  updated_at: string | null;
  project_id: number | null;
}

// --- Settings and GPUs & hosts pages (SettingsPage.vue, GpusHostsPage.vue) -----------------
// Tokens and default alert rules come from the generated types; the webhook test and the
// 422 body are free-form answers, described after monitoring/webhooks.py and api/errors.py.

export type HostsList = S["HostsPublic"];
export type ApiToken = S["TokenPublic"];
export type TokensList = S["TokensPublic"];
export type TokenCreated = S["TokenCreated"];
export type AlertRules = S["AlertRulesPublic"];
export type WebhookCreate = S["WebhookCreate"];
export type WebhookEvent = NonNullable<WebhookCreate["events"]>[number];

/** POST /api/v1/webhooks/{name}/test (webhooks.send_test). */
export interface WebhookTestResult {
  delivered: boolean;
  error?: string; // only when the platform refused to send (an internal address)
}

/** One entry of a 422 answer: {"detail": [{"loc": [...], "msg": ...}]}. */
export interface ValidationIssue {
  loc: (string | number)[];
  msg: string;
  type?: string;
}
// --- end of Settings and GPUs & hosts block ---------------------------------------------
export type DatasetUploaded = S["DatasetUploaded"];
export type DatasetPreview = S["DatasetPreview"];
export type DatasetVersion = S["DatasetVersionPublic"];
export type DatasetDiff = S["DatasetDiff"];
export type RowsPage = S["RowsPage"];
export type DatasetAnalysis = S["AnalysisPublic"];
export type DatasetDedup = S["DedupPublic"];
export type RenderedSample = S["RenderedSample"];
export type SearchResult = S["SearchResult"];
export type MemoryEstimate = S["EstimatePublic"];
export type MemoryOption = S["OptionPublic"];
export type GpuAdvice = S["GpuAdvice"];
export type EstimatorAccuracy = S["AccuracyPublic"];
export type MemoryPrediction = S["PredictionPublic"];
export type Project = S["ProjectPublic"];
export type ProjectsList = S["ProjectsPublic"];
export type ProjectsUsage = S["UsagePublic"];

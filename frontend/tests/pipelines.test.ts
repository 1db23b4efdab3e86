import { flushPromises, mount } from "@vue/test-utils";
import { createPinia, setActivePinia } from "pinia";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { createMemoryHistory, createRouter } from "vue-router";
import type { Stage } from "@/api/types";
import PipelineDag from "@/components/PipelineDag.vue";
import PipelineDetailPage from "@/pages/PipelineDetailPage.vue";
import PipelineNewPage from "@/pages/PipelineNewPage.vue";

function stage(name: string, dependsOn: string[], extra: Partial<Stage> = {}): Stage {
  return {
    name,
    kind: "train",
    position: 0,
    depends_on: dependsOn,
    when: [],
    status: "pending",
    run: 1,
    job_id: null,
    job_status: null,
    jobs: [],
    outputs: null,
    reason: null,
    skipped_by_condition: false,
    key_metric: null,
    started_at: null,
    finished_at: null,
    duration_s: null,
    ...extra,
  };
}

/** The x offset of a stage box, from its transform. */
function xOf(wrapper: ReturnType<typeof mount>, name: string): number {
  const transform = wrapper.get(`[data-stage="${name}"]`).attributes("transform") ?? "";
  const match = /translate\(\s*([-\d.]+)/.exec(transform);
  expect(match, `stage ${name} has a position`).not.toBeNull();
  return Number(match![1]);
}

const diamond = (): Stage[] => [
  stage("a", [], { position: 0, status: "succeeded", job_id: 7, jobs: [7], duration_s: 12.5 }),
  stage("b", ["a"], { position: 1, status: "running", job_id: 8, jobs: [8] }),
  stage("c", ["a"], { position: 2, status: "failed", job_id: 9, jobs: [9], reason: "job 9 failed" }),
  stage("d", ["b", "c"], { position: 3, status: "skipped" }),
];

describe("PipelineDag", () => {
  it("lays out a diamond by dependency depth with one edge per dependency", () => {
    const wrapper = mount(PipelineDag, { props: { stages: diamond() } });

    const [a, b, c, d] = ["a", "b", "c", "d"].map((n) => xOf(wrapper, n));
    expect(b).toBeGreaterThan(a);
    expect(c).toBe(b); // same depth, same column
    expect(d).toBeGreaterThan(b);

    const edges = wrapper.findAll("[data-edge]").map((e) => e.attributes("data-edge"));
    expect(edges.sort()).toEqual(["a->b", "a->c", "b->d", "c->d"]);

    const statuses = Object.fromEntries(
      wrapper.findAll("[data-stage]").map((n) => [n.attributes("data-stage"), n.attributes("data-status")]),
    );
    expect(statuses).toEqual({ a: "succeeded", b: "running", c: "failed", d: "skipped" });
  });

  it("puts b and c in different rows of their column", () => {
    const wrapper = mount(PipelineDag, { props: { stages: diamond() } });
    const yOf = (name: string) =>
      Number(/translate\([^,]+,\s*([-\d.]+)/.exec(wrapper.get(`[data-stage="${name}"]`).attributes("transform")!)![1]);
    expect(yOf("b")).not.toBe(yOf("c"));
  });

  it("uses the longest path for depth, not the shortest", () => {
    // a -> b -> c and a -> c: c sits after b, not beside it.
    const wrapper = mount(PipelineDag, {
      props: { stages: [stage("a", []), stage("b", ["a"], { position: 1 }), stage("c", ["a", "b"], { position: 2 })] },
    });
    expect(xOf(wrapper, "c")).toBeGreaterThan(xOf(wrapper, "b"));
    expect(wrapper.findAll("[data-edge]")).toHaveLength(3);
  });

  it("links a stage that ran a job to that job, and no other", () => {
    const wrapper = mount(PipelineDag, { props: { stages: diamond() } });
    expect(wrapper.get('[data-stage="a"] a').attributes("href")).toBe("/jobs/7");
    expect(wrapper.get('[data-stage="c"] a').attributes("href")).toBe("/jobs/9");
    expect(wrapper.find('[data-stage="d"] a').exists()).toBe(false);
  });

  it("shows the key metric only when the API gave one", () => {
    const wrapper = mount(PipelineDag, {
      props: {
        stages: [
          stage("sft", [], { status: "succeeded", key_metric: { name: "loss", value: 0.4321 } }),
          stage("evaluate", ["sft"], { kind: "evaluate", position: 1 }),
        ],
      },
    });
    expect(wrapper.get('[data-stage="sft"]').text()).toContain("loss=0.4321");
    const evaluate = wrapper.get('[data-stage="evaluate"]');
    expect(evaluate.find('[data-test="metric"]').exists()).toBe(false);
    expect(evaluate.text()).not.toMatch(/=/);
    // No duration either: the API gave none.
    expect(evaluate.find('[data-test="duration"]').exists()).toBe(false);
  });

  it("ignores a dependency on a stage the API did not list", () => {
    const wrapper = mount(PipelineDag, { props: { stages: [stage("x", ["gone"])] } });
    expect(wrapper.findAll("[data-edge]")).toHaveLength(0);
    expect(wrapper.find('[data-stage="x"]').exists()).toBe(true);
  });
});

// --- pages, against a fake API ------------------------------------------------------------------

// The API client keeps the fetch it was created with, so the fake is installed before imports.
const fake = vi.hoisted(() => {
  const state = {
    sent: [] as { method: string; path: string; body: unknown; headers: Headers }[],
    answer: (_method: string, _path: string, _body: unknown): [number, unknown] => [404, { detail: "not found" }],
  };
  globalThis.fetch = (async (input: RequestInfo | URL, init?: RequestInit) => {
    const request = input instanceof Request ? input : new Request(input, init);
    const url = new URL(request.url);
    const text = await request.text();
    const body = text ? JSON.parse(text) : undefined;
    state.sent.push({ method: request.method, path: url.pathname + url.search, body, headers: request.headers });
    const [status, payload] = state.answer(request.method, url.pathname + url.search, body);
    return new Response(JSON.stringify(payload), { status, headers: { "content-type": "application/json" } });
  }) as typeof fetch;
  return state;
});

const TEMPLATE = {
  name: "sft-dpo",
  description: "SFT then DPO.",
  parameters: { model: "tiny-qwen2", sft_steps: 60 },
  stages: { sft: [], dpo: ["sft"] },
  yaml: "name: sft-dpo\nparameters:\n  model: tiny-qwen2\n  sft_steps: 60\nstages: {}\n",
};

function pipelineBody(status: string, stages: Stage[]) {
  return {
    id: 5,
    name: "sft-dpo",
    description: "",
    template: "sft-dpo",
    status,
    priority: 5,
    parameters: {},
    created_by: "token:admin",
    error: null,
    created_at: "2026-01-01T00:00:00Z",
    updated_at: "2026-01-01T00:00:00Z",
    finished_at: null,
    duration_s: 3,
    stages,
  };
}

async function withRouter(path: string) {
  const router = createRouter({
    history: createMemoryHistory(),
    routes: [
      { path: "/pipelines/new", component: PipelineNewPage },
      { path: "/pipelines/:id", component: PipelineDetailPage, props: true },
      { path: "/:rest(.*)*", component: { template: "<div />" } },
    ],
  });
  await router.push(path);
  await router.isReady();
  return router;
}

describe("PipelineNewPage", () => {
  beforeEach(() => {
    fake.sent = [];
    sessionStorage.clear();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it("submits the template with parameters while the YAML is unchanged, the YAML once edited", async () => {
    fake.answer = (method, path) => {
      if (path === "/api/v1/pipelines/templates") return [200, [TEMPLATE]];
      if (path === "/api/v1/pipelines/validate") return [200, { name: "sft-dpo", priority: 5, parameters: {}, order: ["sft", "dpo"], definition: {} }];
      if (method === "POST" && path === "/api/v1/pipelines") return [201, pipelineBody("running", [])];
      return [404, { detail: "not found" }];
    };
    const router = await withRouter("/pipelines/new?template=sft-dpo");
    const wrapper = mount(PipelineNewPage, { global: { plugins: [router] } });
    await flushPromises();

    const textarea = wrapper.get<HTMLTextAreaElement>('[data-test="yaml"]');
    expect(textarea.element.value).toBe(TEMPLATE.yaml);
    await wrapper.get('input[name="param-sft_steps"]').setValue("100");
    await wrapper.get('[data-test="submit-pipeline"]').trigger("submit");
    await flushPromises();

    const first = fake.sent.filter((s) => s.method === "POST" && s.path === "/api/v1/pipelines");
    expect(first).toHaveLength(1);
    expect(first[0].body).toEqual({ template: "sft-dpo", parameters: { sft_steps: 100 }, project: "default" });
    const key = first[0].headers.get("Idempotency-Key");
    expect(key).toBeTruthy();
    expect(router.currentRoute.value.path).toBe("/pipelines/5");

    // Edited YAML goes as text, under the same key for the page's life.
    await router.push("/pipelines/new?template=sft-dpo");
    await textarea.setValue(`${TEMPLATE.yaml}# mine\n`);
    await wrapper.get("form[data-test='pipeline-form']").trigger("submit");
    await flushPromises();
    const second = fake.sent.filter((s) => s.method === "POST" && s.path === "/api/v1/pipelines");
    expect(second).toHaveLength(2);
    expect(second[1].body).toEqual({ yaml: `${TEMPLATE.yaml}# mine\n`, project: "default" });
    expect(second[1].headers.get("Idempotency-Key")).toBe(key);
    wrapper.unmount();
  });

  it("keeps edited YAML and parameters across a reload, until the pipeline is submitted", async () => {
    fake.answer = (method, path) => {
      if (path === "/api/v1/pipelines/templates") return [200, [TEMPLATE]];
      if (path === "/api/v1/pipelines/validate") return [200, { name: "sft-dpo", priority: 5, parameters: {}, order: ["sft", "dpo"], definition: {} }];
      if (method === "POST" && path === "/api/v1/pipelines") return [201, pipelineBody("running", [])];
      return [404, { detail: "not found" }];
    };
    const mountAt = async () => {
      const router = await withRouter("/pipelines/new?template=sft-dpo");
      const wrapper = mount(PipelineNewPage, { global: { plugins: [router] } });
      await flushPromises();
      return wrapper;
    };
    const first = await mountAt();
    await first.get('[data-test="yaml"]').setValue(`${TEMPLATE.yaml}# draft\n`);
    await flushPromises();
    first.unmount();

    const second = await mountAt();
    expect(second.get<HTMLTextAreaElement>('[data-test="yaml"]').element.value).toBe(`${TEMPLATE.yaml}# draft\n`);
    await second.get("form[data-test='pipeline-form']").trigger("submit");
    await flushPromises();
    second.unmount();

    const third = await mountAt();
    expect(third.get<HTMLTextAreaElement>('[data-test="yaml"]').element.value).toBe(TEMPLATE.yaml);
    third.unmount();
  });

  it("lists the API's 422 messages with their location, validating after typing stops", async () => {
    vi.useFakeTimers();
    fake.answer = (_method, path) => {
      if (path === "/api/v1/pipelines/templates") return [200, [TEMPLATE]];
      if (path === "/api/v1/pipelines/validate")
        return [422, { detail: [{ loc: ["body", "definition", "stages", "a", "depends_on", 0], msg: "stage 'a': unknown stage 'zz'" }] }];
      return [404, { detail: "not found" }];
    };
    const router = await withRouter("/pipelines/new");
    const wrapper = mount(PipelineNewPage, { global: { plugins: [router] } });
    await flushPromises();
    await wrapper.get('[data-test="yaml"]').setValue("name: x\nstages:\n  a: {depends_on: [zz]}\n");
    expect(fake.sent.some((s) => s.path === "/api/v1/pipelines/validate")).toBe(false);
    await vi.advanceTimersByTimeAsync(700);
    await flushPromises();

    const validations = fake.sent.filter((s) => s.path === "/api/v1/pipelines/validate");
    expect(validations).toHaveLength(1);
    expect(validations[0].body).toEqual({ yaml: "name: x\nstages:\n  a: {depends_on: [zz]}\n" });
    const errors = wrapper.get('[data-test="validation-errors"]');
    expect(errors.text()).toContain("unknown stage 'zz'");
    expect(errors.text()).toContain("definition › stages › a › depends_on › 0");
    wrapper.unmount();
  });
});

// The overview socket, faked: the test opens it and hands the page its messages.
class FakeSocket {
  static made: FakeSocket[] = [];
  onopen: (() => void) | null = null;
  onmessage: ((event: { data: string }) => void) | null = null;
  onclose: ((event: { code: number }) => void) | null = null;
  sent: string[] = [];
  constructor(public url: string) {
    FakeSocket.made.push(this);
  }
  send(text: string) {
    this.sent.push(text);
  }
  close() {}
  deliver(message: Record<string, unknown>) {
    this.onmessage?.({ data: JSON.stringify(message) });
  }
}

describe("PipelineDetailPage", () => {
  beforeEach(() => {
    fake.sent = [];
    FakeSocket.made = [];
    vi.stubGlobal("WebSocket", FakeSocket);
    setActivePinia(createPinia());
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
    vi.unstubAllGlobals();
  });

  async function mounted(status: string) {
    fake.answer = (_method, path) => {
      if (path === "/api/v1/pipelines/5") return [200, pipelineBody(status, diamond())];
      if (path === "/api/v1/pipelines/5/events") return [200, []];
      return [404, { detail: "not found" }];
    };
    const router = await withRouter("/pipelines/5");
    const wrapper = mount(PipelineDetailPage, { props: { id: "5" }, global: { plugins: [router] } });
    await flushPromises();
    expect(wrapper.findAll("[data-stage]")).toHaveLength(4);
    return wrapper;
  }
  const reads = () => fake.sent.filter((s) => s.path === "/api/v1/pipelines/5").length;
  async function after(ms: number) {
    await vi.advanceTimersByTimeAsync(ms);
    await flushPromises();
  }

  it("reads the pipeline again when the overview socket says it, a stage or a stage's job moved", async () => {
    const wrapper = await mounted("running");
    const socket = FakeSocket.made[0];
    expect(socket.url).toContain("/api/v1/ws/overview");
    socket.onopen?.();
    socket.deliver({ type: "overview", counts: {}, jobs: [] }); // (re)connected: read once
    await after(100);
    let before = reads();
    await after(30_000);
    expect(reads()).toBe(before); // no polling while the socket is open
    for (const message of [
      { type: "pipeline", job_id: 0, pipeline: { id: 6, status: "running" } },
      { type: "status", job_id: 99, job: { id: 99, status: "running" } },
      { type: "progress", job_id: 99, job: { id: 99, progress_step: 3, progress_total: 9 } },
    ]) {
      socket.deliver(message); // another pipeline's, a job of no stage
      await after(500);
    }
    expect(reads()).toBe(before);
    socket.deliver({ type: "pipeline", job_id: 0, pipeline: { id: 5, status: "running" } });
    await after(500);
    expect(reads()).toBe(before + 1);
    before = reads();
    socket.deliver({ type: "status", job_id: 8, job: { id: 8, status: "succeeded" } }); // stage b's job
    socket.deliver({ type: "status", job_id: 9, job: { id: 9, status: "failed" } }); // a burst: one read
    await after(500);
    expect(reads()).toBe(before + 1);
    expect(wrapper.get('[data-test="live-state"]').text()).toBe("live");
    wrapper.unmount();
  });

  it("reads every 15 s while the socket is down", async () => {
    const wrapper = await mounted("running");
    const before = reads();
    await after(15_100);
    expect(reads()).toBe(before + 1);
    expect(wrapper.get('[data-test="live-state"]').text()).toBe("reconnecting…");
    wrapper.unmount();
  });

  it("offers retry from the stages whose upstream all succeeded", async () => {
    fake.answer = (_method, path) => {
      if (path === "/api/v1/pipelines/5") return [200, pipelineBody("failed", diamond())];
      if (path === "/api/v1/pipelines/5/events") return [200, []];
      if (path === "/api/v1/pipelines/5/retry")
        return [422, { detail: [{ loc: ["body", "from_stage"], msg: "stage 'd' depends on 'c', which is failed" }] }];
      return [404, { detail: "not found" }];
    };
    const router = await withRouter("/pipelines/5");
    const wrapper = mount(PipelineDetailPage, { props: { id: "5" }, global: { plugins: [router] } });
    await flushPromises();
    const options = wrapper.findAll('[data-test="retry-stage"] option').map((o) => o.attributes("value"));
    expect(options).toEqual(["a", "b", "c"]);
    await wrapper.get('[data-test="retry-stage"]').setValue("c");
    await wrapper.get('[data-test="retry-from-form"]').trigger("submit");
    await flushPromises();
    const retry = fake.sent.find((s) => s.path === "/api/v1/pipelines/5/retry");
    expect(retry?.body).toEqual({ from_stage: "c" });
    expect(wrapper.get('[data-test="action-error"]').text()).toContain("which is failed");
    wrapper.unmount();
  });
});

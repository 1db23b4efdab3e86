import { flushPromises, mount } from "@vue/test-utils";
import { createPinia, setActivePinia } from "pinia";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { createMemoryHistory, createRouter } from "vue-router";
import JobNewPage from "@/pages/JobNewPage.vue";
import { useAuth } from "@/stores/auth";

const backends = [
  {
    backend: "trl", algorithm: "sft", description: "TRL SFT", hosts: "any", requires_gpu: false, data_task: "sft",
    dataset_formats: ["messages"],
    parameters: {
      properties: {
        max_steps: { anyOf: [{ minimum: 1, type: "integer" }, { type: "null" }], default: null, description: "Optimizer steps" },
        learning_rate: { default: 2e-5, exclusiveMinimum: 0, maximum: 1, type: "number", description: "Peak LR" },
        lr_scheduler_type: { default: "linear", enum: ["linear", "cosine"], type: "string" },
        assistant_only_loss: { default: true, type: "boolean" },
        lora: { anyOf: [{ $ref: "#/$defs/LoraParameters" }, { type: "null" }], default: null },
      },
      $defs: {
        LoraParameters: {
          properties: {
            rank: { default: 8, maximum: 1024, minimum: 1, type: "integer" },
            target_modules: {
              anyOf: [{ const: "all-linear", type: "string" }, { items: { pattern: "^[A-Za-z_][A-Za-z0-9_.]*$", type: "string" }, type: "array" }],
              default: "all-linear",
            },
          },
          type: "object",
        },
      },
    },
  },
  {
    backend: "trl", algorithm: "dpo", description: "TRL DPO", hosts: "any", requires_gpu: false, data_task: "preference",
    dataset_formats: ["preference"], parameters: { properties: { beta: { default: 0.1, type: "number" } } },
  },
];
// By name, a pipeline's output comes first: the form must not take it for the user's choice.
const models = [
  { id: 2, name: "pipeline-1.grpo", source: "job", description: "final model of stage grpo of pipeline 1", parameters: null, job_id: 7, created_at: "" },
  { id: 1, name: "tiny-qwen2", source: "builtin", description: "", parameters: null, job_id: null, created_at: "" },
];
const datasets = [
  { id: 1, name: "tiny-sft", format: "messages", rows: 400, source: "builtin", task: "sft", size_bytes: 1, sha256: "", description: "", created_at: "" },
  { id: 2, name: "tiny-prefs", format: "preference", rows: 200, source: "builtin", task: "preference", size_bytes: 1, sha256: "", description: "", created_at: "" },
];
const gpus = { hosts: [{ name: "vm", gpus: [], cpu_slots: [{ index: 0, held_by_job: null }], simulated: false, gpu_source: "none", info: {}, last_seen_at: null, note: null }], simulated: false, gpus: 0 };

const json = (body: unknown, status = 200) =>
  new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });

let posted: { url: string; body: Record<string, unknown>; headers: Headers }[] = [];
let jobAnswer: () => Response;

beforeEach(() => {
  sessionStorage.clear();
  localStorage.clear();
  setActivePinia(createPinia());
  useAuth().login("secret-token");
  posted = [];
  jobAnswer = () => json({ id: 42 }, 201);
  vi.stubGlobal("fetch", vi.fn(async (input: Request) => {
    const url = new URL(input.url);
    expect(input.headers.get("Authorization")).toBe("Bearer secret-token");
    if (input.method === "POST") {
      posted.push({ url: url.pathname, body: await input.json(), headers: input.headers });
      return url.pathname === "/api/v1/jobs" ? jobAnswer() : json({ runner: "local", run_dir: "/r", argv: ["python", "-m", "x"], env: {}, files: {}, backend: "trl", algorithm: "sft" });
    }
    const answers: Record<string, unknown> = { "/api/v1/backends": backends, "/api/v1/models": models, "/api/v1/datasets": datasets, "/api/v1/gpus": gpus, "/api/v1/projects": { items: [{ name: "default" }, { name: "vision" }] } };
    return json(answers[url.pathname] ?? {}, answers[url.pathname] ? 200 : 404);
  }));
});
afterEach(() => vi.unstubAllGlobals());

async function mountForm() {
  const router = createRouter({
    history: createMemoryHistory(),
    routes: [
      { path: "/jobs/new", component: JobNewPage },
      { path: "/jobs/:id", component: { template: "<div>job</div>" } },
    ],
  });
  await router.push("/jobs/new");
  const wrapper = mount(JobNewPage, { global: { plugins: [router] } });
  await flushPromises();
  return { wrapper, router };
}

describe("the new-job form", () => {
  it("shows the chosen backend's parameters with defaults and limits, and datasets it can read", async () => {
    const { wrapper } = await mountForm();
    const params = wrapper.get("[data-test=params]");
    expect(params.text()).toContain("max_steps");
    expect(params.text()).toContain("Peak LR (> 0, ≤ 1)");
    expect(wrapper.get("input[name=param-learning_rate]").attributes("placeholder")).toBe("0.00002");
    expect(wrapper.findAll("select[name=dataset] option").map((o) => o.text())).toEqual(["tiny-sft (400 rows, messages)"]);

    await wrapper.get("select[name=engine]").setValue("trl/dpo");
    await flushPromises();
    expect(wrapper.get("[data-test=params]").text()).toContain("beta");
    expect(wrapper.get("[data-test=params]").text()).not.toContain("max_steps");
    expect((wrapper.get("select[name=dataset]").element as HTMLSelectElement).value).toBe("tiny-prefs");
  });

  it("sends only the parameters the user set, with an idempotency key, then opens the job", async () => {
    const { wrapper, router } = await mountForm();
    await wrapper.get("input[name=name]").setValue("my sft");
    await wrapper.get("input[name=param-max_steps]").setValue("40");
    await wrapper.get("form").trigger("submit");
    await flushPromises();
    expect(posted).toHaveLength(1);
    expect(posted[0].body).toEqual({
      name: "my sft", backend: "trl", algorithm: "sft", model: "tiny-qwen2", dataset: "tiny-sft",
      hyperparameters: { max_steps: 40 }, priority: 5, project: "default", resources: { gpus: 0 },
    });
    expect(posted[0].headers.get("Idempotency-Key")).toMatch(/^[0-9a-f-]{36}$/);
    expect(router.currentRoute.value.fullPath).toBe("/jobs/42");
  });

  it("refuses out-of-limit values before sending, and shows the server's 422 next to its field", async () => {
    const { wrapper } = await mountForm();
    await wrapper.get("input[name=name]").setValue("x");
    await wrapper.get("input[name=param-learning_rate]").setValue("5");
    await wrapper.get("form").trigger("submit");
    await flushPromises();
    expect(posted).toHaveLength(0);
    expect(wrapper.text()).toContain("must be ≤ 1");

    await wrapper.get("input[name=param-learning_rate]").setValue("");
    jobAnswer = () => json({ detail: [{ loc: ["body", "hyperparameters", "max_steps"], msg: "too many for this dataset", type: "value_error" }] }, 422);
    await wrapper.get("form").trigger("submit");
    await flushPromises();
    expect(wrapper.get("[data-test=form-error]").text()).toContain("hyperparameters.max_steps: too many for this dataset");
    const field = wrapper.get("input[name=param-max_steps]").element.closest("label")!;
    expect(field.textContent).toContain("too many for this dataset");
  });

  it("keeps the draft across a reload of the page, and forgets it once the job is submitted", async () => {
    const first = await mountForm();
    await first.wrapper.get("select[name=engine]").setValue("trl/dpo");
    await flushPromises();
    await first.wrapper.get("input[name=name]").setValue("draft job");
    await first.wrapper.get("input[name=param-beta]").setValue("0.2");
    await flushPromises();
    first.wrapper.unmount();

    const second = await mountForm();
    expect((second.wrapper.get("input[name=name]").element as HTMLInputElement).value).toBe("draft job");
    expect((second.wrapper.get("select[name=engine]").element as HTMLSelectElement).value).toBe("trl/dpo");
    expect((second.wrapper.get("input[name=param-beta]").element as HTMLInputElement).value).toBe("0.2");
    await second.wrapper.get("form").trigger("submit");
    await flushPromises();
    expect(posted[0].body).toMatchObject({ name: "draft job", algorithm: "dpo", hyperparameters: { beta: 0.2 } });
    second.wrapper.unmount();

    const third = await mountForm();
    expect((third.wrapper.get("input[name=name]").element as HTMLInputElement).value).toBe("");
  });

  it("preselects the bundled model, then the one last submitted with, and says where each came from", async () => {
    const first = await mountForm();
    const select = first.wrapper.get("select[name=model]");
    expect((select.element as HTMLSelectElement).value).toBe("tiny-qwen2");
    expect(select.findAll("option").map((o) => o.text())).toEqual(["pipeline-1.grpo · output of job #7", "tiny-qwen2 · bundled"]);
    await select.setValue("pipeline-1.grpo");
    expect(first.wrapper.get("[data-test=model-origin]").text()).toBe("output of job #7: final model of stage grpo of pipeline 1");
    await first.wrapper.get("input[name=name]").setValue("on the output");
    await first.wrapper.get("form").trigger("submit");
    await flushPromises();
    expect(posted[0].body).toMatchObject({ model: "pipeline-1.grpo" });
    first.wrapper.unmount();

    const second = await mountForm();
    expect((second.wrapper.get("select[name=model]").element as HTMLSelectElement).value).toBe("pipeline-1.grpo");
  });

  it("shows every choice of an enum or boolean parameter, its default selected", async () => {
    const { wrapper } = await mountForm();
    for (const [name, options] of [
      ["lr_scheduler_type", ["default (linear)", "linear", "cosine"]],
      ["assistant_only_loss", ["default (true)", "true", "false"]],
    ] as const) {
      const select = wrapper.get(`select[name=param-${name}]`).element as HTMLSelectElement;
      expect([...select.options].map((o) => o.text.trim())).toEqual(options);
      expect(select.selectedIndex).toBe(0);
    }
    await wrapper.get("select[name=param-assistant_only_loss]").setValue("false");
    await wrapper.get("input[name=name]").setValue("x");
    await wrapper.get("form").trigger("submit");
    await flushPromises();
    expect(posted[0].body.hyperparameters).toEqual({ assistant_only_loss: false });
  });

  it("gives LoRA fields of its own, checked as typed, and drops a server error once the value changes", async () => {
    const { wrapper } = await mountForm();
    expect(wrapper.find("input[name=param-lora\\.rank]").exists()).toBe(false);
    await wrapper.get("input[name=param-lora]").setValue(true);
    const rank = wrapper.get("input[name=param-lora\\.rank]");
    expect(rank.attributes("placeholder")).toBe("8");
    await rank.setValue("0");
    expect(wrapper.get("[data-test=error-lora\\.rank]").text()).toBe("must be ≥ 1");
    await rank.setValue("8");
    expect(wrapper.find("[data-test=error-lora\\.rank]").exists()).toBe(false);

    await wrapper.get("input[name=name]").setValue("lora job");
    jobAnswer = () => json({ detail: [{ loc: ["body", "hyperparameters", "lora", "rank"], msg: "too large for this model", type: "value_error" }] }, 422);
    await wrapper.get("form").trigger("submit");
    await flushPromises();
    expect(posted[0].body.hyperparameters).toEqual({ lora: { rank: 8 } });
    expect(wrapper.get("[data-test=error-lora\\.rank]").text()).toBe("too large for this model");
    await rank.setValue("4");
    await flushPromises();
    expect(wrapper.find("[data-test=error-lora\\.rank]").exists()).toBe(false);
  });
});

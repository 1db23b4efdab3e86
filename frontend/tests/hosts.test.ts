import { flushPromises, type VueWrapper } from "@vue/test-utils";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { Router } from "vue-router";
import { number } from "@/lib/format";
import GpusHostsPage from "@/pages/GpusHostsPage.vue";
import { fakeApi, json, mountPage } from "./support/fakeApi";

const server = fakeApi();

const FP = "SHA256:3q1Xy9Zr0aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456+"; // 43 characters after SHA256:
const NEW_FP = "SHA256:9zYxWvUtSrQpOnMlKjIhGfEdCbA9876543210abcd/";

function host(overrides: Record<string, unknown> = {}) {
  return {
    id: 1,
    name: "gpu1",
    runner: "ssh",
    address: "10.0.0.5",
    port: 22,
    user: "trainer",
    auth: "password",
    host_key_type: "ssh-ed25519",
    host_key_fingerprint: FP,
    work_root: "/home/trainer/training_platform",
    python: "/home/trainer/training_platform/venv/bin/python",
    environment: {},
    labels: ["a100"],
    cpu_slots: 0,
    ray_address: null,
    last_check: { ready: true, checked_at: "2026-01-01T00:00:00Z" },
    bootstrap: null,
    last_error: null,
    created_at: "2026-01-01T00:00:00Z",
    updated_at: "2026-01-01T00:00:00Z",
    ...overrides,
  };
}

let wrapper: VueWrapper | null = null;

async function mountAt(url: string): Promise<{ wrapper: VueWrapper; router: Router }> {
  const mounted = await mountPage(GpusHostsPage, url, ["/jobs/:id"]);
  wrapper = mounted.wrapper;
  return mounted;
}

const SECRET_FIELDS = ["password", "private_key", "user"];

beforeEach(() => {
  server.routes.clear();
  server.calls.length = 0;
  server.routes.set("GET /api/v1/gpus", () => json(200, { hosts: [], simulated: false, gpus: 0 }));
  server.routes.set("GET /api/v1/hosts", () => json(200, { hosts: [] }));
});

afterEach(() => {
  wrapper?.unmount();
  wrapper = null;
  vi.restoreAllMocks();
});

describe("register a host", () => {
  it("sends no credential before the host key is confirmed, then the scanned fingerprint", async () => {
    server.routes.set("POST /api/v1/hosts/host-key", (body) => {
      const { address, port } = body as { address: string; port: number };
      return json(200, { address, port, key_type: "ssh-ed25519", fingerprint: FP });
    });
    server.routes.set("POST /api/v1/hosts", (body) => json(201, host({ name: (body as { name: string }).name })));
    const { wrapper, router } = await mountAt("/gpus?tab=register");

    const form = wrapper.get('[data-test="register-host"]');
    // Step 1 only: nowhere to type a credential yet.
    expect(form.find('[name="password"]').exists()).toBe(false);
    expect(form.find('[name="private_key"]').exists()).toBe(false);
    expect(form.find('[data-test="step-2"]').exists()).toBe(false);

    await form.get('[name="address"]').setValue("10.0.0.5");
    await form.get('[data-test="step-1"]').trigger("submit");
    await flushPromises();

    expect(form.get('[data-test="fingerprint"]').text()).toBe(FP);
    expect(form.text()).toContain("ssh-ed25519");
    // Read, but not confirmed: still no credential fields.
    expect(form.find('[data-test="step-2"]').exists()).toBe(false);
    expect(form.find('[name="password"]').exists()).toBe(false);

    const scan = server.calls.find((c) => c.path === "/api/v1/hosts/host-key");
    expect(scan?.body).toEqual({ address: "10.0.0.5", port: 22 });
    for (const call of server.calls) {
      for (const field of SECRET_FIELDS) expect(call.body ?? {}).not.toHaveProperty(field);
    }
    expect(server.calls.some((c) => c.method === "POST" && c.path === "/api/v1/hosts")).toBe(false);

    await form.get('[data-test="confirm-key"]').trigger("click");
    const step2 = form.get('[data-test="step-2"]');
    await step2.get('[name="name"]').setValue("gpu1");
    await step2.get('[name="user"]').setValue("trainer");
    await step2.get('input[type="radio"][value="password"]').setValue(true);
    await step2.get('[name="password"]').setValue("s3cret-pass");
    await step2.get('[name="labels"]').setValue("a100, lab");
    await step2.trigger("submit");
    await flushPromises();

    const registers = server.calls.filter((c) => c.method === "POST" && c.path === "/api/v1/hosts");
    expect(registers).toHaveLength(1);
    expect(registers[0].body).toMatchObject({
      name: "gpu1",
      runner: "ssh",
      address: "10.0.0.5",
      port: 22,
      user: "trainer",
      password: "s3cret-pass",
      host_key_fingerprint: FP,
      labels: ["a100", "lab"],
      cpu_slots: 0,
    });
    expect(registers[0].body).not.toHaveProperty("private_key");
    // Done: on to the hosts tab; the secret is gone from the page and the URL.
    expect(router.currentRoute.value.query.tab).toBe("hosts");
    expect(router.currentRoute.value.fullPath).not.toContain("s3cret");
    expect(wrapper.html()).not.toContain("s3cret-pass");
  });

  it("forgets a read key when the address changes, and shows 422 errors by field", async () => {
    server.routes.set("POST /api/v1/hosts/host-key", () => json(200, { address: "10.0.0.5", port: 22, key_type: "ssh-ed25519", fingerprint: FP }));
    server.routes.set("POST /api/v1/hosts", () =>
      json(422, { detail: [{ loc: ["body", "password"], msg: "authentication failed for trainer@10.0.0.5", type: "value_error" }] }),
    );
    const { wrapper } = await mountAt("/gpus?tab=register");
    const form = wrapper.get('[data-test="register-host"]');
    await form.get('[name="address"]').setValue("10.0.0.5");
    await form.get('[data-test="step-1"]').trigger("submit");
    await flushPromises();
    await form.get('[name="address"]').setValue("10.0.0.6");
    expect(form.find('[data-test="scanned-key"]').exists()).toBe(false);

    await form.get('[name="address"]').setValue("10.0.0.5");
    await form.get('[data-test="step-1"]').trigger("submit");
    await flushPromises();
    await form.get('[data-test="confirm-key"]').trigger("click");
    const step2 = form.get('[data-test="step-2"]');
    await step2.get('[name="name"]').setValue("gpu1");
    await step2.get('[name="user"]').setValue("trainer");
    await step2.get('input[type="radio"][value="password"]').setValue(true);
    await step2.get('[name="password"]').setValue("wrong-pass");
    await step2.trigger("submit");
    await flushPromises();

    expect(form.get('[data-field-error="password"]').text()).toBe("authentication failed for trainer@10.0.0.5");
    // The credential does not stay in the form after the request that sent it.
    expect((form.get('[name="password"]').element as HTMLInputElement).value).toBe("");
  });
});

describe("registered hosts", () => {
  it("shows both fingerprints of a changed key and trusts the new one only after a confirm", async () => {
    server.routes.set("GET /api/v1/hosts", () => json(200, { hosts: [host()] }));
    server.routes.set("POST /api/v1/hosts/gpu1/check", () =>
      json(409, {
        detail: `the host key of gpu1 changed: recorded ${FP}, presented ${NEW_FP}. This may be an attack; if the server was reinstalled, check the new fingerprint out of band and accept it with \`tp hosts trust-key\``,
      }),
    );
    server.routes.set("POST /api/v1/hosts/gpu1/trust-key", () => json(200, host({ host_key_fingerprint: NEW_FP })));
    const { wrapper } = await mountAt("/gpus?tab=hosts");

    const table = wrapper.get('[data-test="hosts-table"]');
    expect(table.text()).toContain("gpu1");
    expect(table.text()).toContain(FP);
    await table.get('[data-test="check"]').trigger("click");
    await flushPromises();

    const changed = wrapper.get('[data-test="key-changed"]');
    expect(changed.text()).toContain(FP);
    expect(changed.text()).toContain(NEW_FP);
    await changed.get('[data-test="trust"]').trigger("click");
    expect(server.calls.some((c) => c.path.endsWith("/trust-key"))).toBe(false);
    const confirm = wrapper.get('[data-test="trust-confirm"]');
    expect(confirm.text()).toContain(NEW_FP);
    await confirm.get('[data-test="trust-yes"]').trigger("click");
    await flushPromises();

    const trust = server.calls.find((c) => c.path === "/api/v1/hosts/gpu1/trust-key");
    expect(trust?.body).toEqual({ fingerprint: NEW_FP });
    expect(wrapper.get('[data-test="check-result"]').text()).toContain("trusted");
  });
});

describe("inventory", () => {
  it("labels simulated devices and links holders to their jobs", async () => {
    server.routes.set("GET /api/v1/gpus", () =>
      json(200, {
        simulated: true,
        gpus: 1,
        hosts: [
          {
            name: "vm",
            gpu_source: "simulated",
            simulated: true,
            info: {},
            last_seen_at: "2026-01-01T00:00:00Z",
            note: null,
            gpus: [
              {
                index: 0, name: "Simulated GPU", uuid: "sim-0", memory_total_mb: 24576, memory_used_mb: 1024,
                memory_free_mb: 23552, utilization_pct: null, simulated: true, held_by_job: 7, occupied_by: [],
                state: "held", fits: {}, updated_at: "2026-01-01T00:00:00Z",
              },
            ],
            cpu_slots: [{ index: 0, held_by_job: null }],
          },
        ],
      }),
    );
    const { wrapper } = await mountAt("/gpus");
    const inventory = wrapper.get('[data-test="inventory"]');
    expect(inventory.get('[data-test="simulated"]').text()).toBe("simulated");
    expect(inventory.text()).toContain(`${number(1024)} / ${number(24576)} MiB`);
    expect(inventory.get('a[href="/jobs/7"]').text()).toBe("job #7");
    expect(inventory.text()).toContain("CPU slot 0");
  });
});

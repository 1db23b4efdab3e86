import { flushPromises, type VueWrapper } from "@vue/test-utils";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { Router } from "vue-router";
import SettingsPage from "@/pages/SettingsPage.vue";
import { fakeApi, json, mountPage } from "./support/fakeApi";

const server = fakeApi();

const ADMIN = { name: "admin", role: "admin", created_at: "2026-01-01T00:00:00Z", revoked_at: null, current: true };
const SECRET = "tp_9f8e7d6c5b4a39281706f5e4d3c2b1a0";

let wrapper: VueWrapper | null = null;

async function mountAt(url: string): Promise<{ wrapper: VueWrapper; router: Router }> {
  const mounted = await mountPage(SettingsPage, url, ["/elsewhere"]);
  wrapper = mounted.wrapper;
  return mounted;
}

beforeEach(() => {
  server.routes.clear();
  server.calls.length = 0;
  server.routes.set("GET /api/v1/tokens", () => json(200, { items: [ADMIN] }));
  server.routes.set("GET /api/v1/webhooks", () => json(200, []));
  server.routes.set("GET /api/v1/alert-rules", () =>
    json(200, {
      items: [
        { rule: "nan", key: "*loss*", threshold: null, action: "notify" },
        { rule: "above", key: "kl", threshold: 5, action: "pause" },
      ],
      updated_at: "2026-01-01T00:00:00Z",
    }),
  );
});

afterEach(() => {
  wrapper?.unmount();
  wrapper = null;
});

describe("default alert rules", () => {
  it("hides the threshold of nan rules and shows a 422 next to the right row", async () => {
    server.routes.set("PUT /api/v1/alert-rules", () =>
      json(422, {
        detail: [{ loc: ["body", "items", 2], msg: "Value error, rule 'below' needs a threshold", type: "value_error" }],
      }),
    );
    const { wrapper } = await mountAt("/settings?tab=alerts");
    const editor = wrapper.get('[data-test="alert-rules"]');
    expect(editor.text()).toContain("copied into every job submitted without alert rules of its own");
    expect(editor.text()).toContain("NaN loss");

    const row = (i: number) => editor.get(`[data-row="${i}"]`);
    expect(row(0).find('[data-field="threshold"]').exists()).toBe(false);
    expect(row(1).find('[data-field="threshold"]').exists()).toBe(true);

    // Switching a rule to nan removes its threshold input; back to above shows it again.
    await row(1).get('[data-field="rule"]').setValue("nan");
    expect(row(1).find('[data-field="threshold"]').exists()).toBe(false);
    await row(1).get('[data-field="rule"]').setValue("above");
    expect(row(1).find('[data-field="threshold"]').exists()).toBe(true);

    await editor.get('[data-test="add-rule"]').trigger("click");
    await row(2).get('[data-field="rule"]').setValue("below");
    await row(2).get('[data-field="key"]').setValue("reward/mean");
    await editor.get('[data-test="save-rules"]').trigger("click");
    await flushPromises();

    const put = server.calls.find((c) => c.method === "PUT");
    expect(put?.body).toEqual({
      items: [
        { rule: "nan", key: "*loss*", action: "notify" },
        { rule: "above", key: "kl", threshold: 5, action: "pause" },
        { rule: "below", key: "reward/mean", threshold: null, action: "notify" },
      ],
    });
    expect(editor.find('[data-row-error="0"]').exists()).toBe(false);
    expect(editor.find('[data-row-error="1"]').exists()).toBe(false);
    expect(editor.get('[data-row-error="2"]').text()).toContain("rule 'below' needs a threshold");
    // The message sits right under row 2.
    expect(row(2).element.nextElementSibling?.getAttribute("data-row-error")).toBe("2");
  });

  it("a field error inside a row names the field and follows the row when another is removed", async () => {
    server.routes.set("PUT /api/v1/alert-rules", () =>
      json(422, { detail: [{ loc: ["body", "items", 1, "key"], msg: "String should have at least 1 character", type: "string_too_short" }] }),
    );
    const { wrapper } = await mountAt("/settings?tab=alerts");
    const editor = wrapper.get('[data-test="alert-rules"]');
    await editor.get('[data-row="1"] [data-field="key"]').setValue("");
    await editor.get('[data-test="save-rules"]').trigger("click");
    await flushPromises();
    expect(editor.get('[data-row-error="1"]').text()).toContain("key: String should have at least 1 character");

    await editor.get('[data-row="0"] [data-test="remove-rule"]').trigger("click");
    expect(editor.get('[data-row-error="0"]').text()).toContain("key:");
    expect(editor.find('[data-row-error="1"]').exists()).toBe(false);
  });
});

describe("API tokens", () => {
  it("shows a new token once and forgets it on dismiss", async () => {
    server.routes.set("POST /api/v1/tokens", (body) =>
      json(201, { name: (body as { name: string }).name, role: "user", created_at: "2026-01-02T00:00:00Z", token: SECRET }),
    );
    const { wrapper, router } = await mountAt("/settings");
    expect(wrapper.get('[data-test="session"]').text()).toContain("Logged in with token admin");
    expect(wrapper.get('[data-token="admin"]').text()).toContain("this session");

    await wrapper.get('[name="token-name"]').setValue("ci-runner");
    await wrapper.get('[data-test="create-token"]').trigger("submit");
    await flushPromises();

    expect(server.calls.find((c) => c.method === "POST")?.body).toEqual({ name: "ci-runner" });
    const field = wrapper.get('[data-test="new-token-value"]');
    expect((field.element as HTMLInputElement).value).toBe(SECRET);
    expect(wrapper.get('[data-test="new-token"]').text()).toContain("shown this once");
    expect((wrapper.get('[name="token-name"]').element as HTMLInputElement).value).toBe("");
    expect(router.currentRoute.value.fullPath).not.toContain(SECRET);
    expect(JSON.stringify({ ...sessionStorage })).not.toContain(SECRET);
    expect(JSON.stringify({ ...localStorage })).not.toContain(SECRET);

    await wrapper.get('[data-test="dismiss-token"]').trigger("click");
    expect(wrapper.find('[data-test="new-token"]').exists()).toBe(false);
    expect(wrapper.html()).not.toContain(SECRET);
  });

  it("forgets a new token when the user switches to another tab", async () => {
    server.routes.set("POST /api/v1/tokens", () =>
      json(201, { name: "ci", role: "user", created_at: "2026-01-02T00:00:00Z", token: SECRET }),
    );
    const { wrapper, router } = await mountAt("/settings?tab=tokens");
    await wrapper.get('[name="token-name"]').setValue("ci");
    await wrapper.get('[data-test="create-token"]').trigger("submit");
    await flushPromises();
    expect(wrapper.html()).toContain(SECRET);

    await wrapper.get('[data-tab="webhooks"]').trigger("click");
    await flushPromises();
    expect(router.currentRoute.value.query.tab).toBe("webhooks");
    await wrapper.get('[data-tab="tokens"]').trigger("click");
    await flushPromises();
    expect(wrapper.find('[data-test="new-token"]').exists()).toBe(false);
    expect(wrapper.html()).not.toContain(SECRET);
  });
});

describe("webhooks", () => {
  it("offers every event the API allows and empties the URL after sending it", async () => {
    server.routes.set("POST /api/v1/webhooks", () =>
      json(422, { detail: [{ loc: ["body", "url"], msg: "must be an http:// or https:// URL with a host", type: "value_error" }] }),
    );
    const { wrapper } = await mountAt("/settings?tab=webhooks");
    const events = wrapper.findAll("[data-event]").map((e) => e.attributes("data-event"));
    expect(events).toEqual(["job.succeeded", "job.failed", "job.stalled", "job.cancelled", "alert"]);

    await wrapper.get('[name="webhook-name"]').setValue("team");
    await wrapper.get('[name="webhook-url"]').setValue("ftp://hooks.example.org/T0/secret");
    await wrapper.get('[data-event="job.cancelled"]').setValue(true);
    await wrapper.get('[data-test="add-webhook"]').trigger("submit");
    await flushPromises();

    const sent = server.calls.find((c) => c.method === "POST")?.body as { events: string[]; url: string };
    expect(sent.url).toBe("ftp://hooks.example.org/T0/secret");
    expect(sent.events).toEqual(["job.succeeded", "job.failed", "job.stalled", "alert", "job.cancelled"]);
    expect(wrapper.get('[data-field-error="url"]').text()).toContain("http:// or https://");
    expect((wrapper.get('[name="webhook-url"]').element as HTMLInputElement).value).toBe("");
    expect(wrapper.html()).not.toContain("T0/secret");
  });
});

import { flushPromises, mount } from "@vue/test-utils";
import { describe, expect, it } from "vitest";
import { defineComponent, h } from "vue";
import { createMemoryHistory, createRouter } from "vue-router";
import { useQueryParam } from "@/lib/urlState";

describe("useQueryParam", () => {
  it("keeps both of two writes made one after the other", async () => {
    const router = createRouter({
      history: createMemoryHistory(),
      routes: [{ path: "/list", component: { render: () => null } }],
    });
    await router.push("/list?page=3");
    let setters: { status: (v: string) => void; page: (v: string) => void } | null = null;
    const Probe = defineComponent({
      setup() {
        const status = useQueryParam("status");
        const page = useQueryParam("page", "1");
        setters = {
          status: (v) => (status.value = v),
          page: (v) => (page.value = v),
        };
        return () => h("span", `${status.value}|${page.value}`);
      },
    });
    const wrapper = mount(Probe, { global: { plugins: [router] } });
    expect(wrapper.text()).toBe("|3");
    // A filter, then back to the first page: what the pipelines and jobs lists do.
    setters!.status("failed");
    setters!.page("1");
    await flushPromises();
    expect(router.currentRoute.value.query).toEqual({ status: "failed" });
    expect(wrapper.text()).toBe("failed|1");
  });
});

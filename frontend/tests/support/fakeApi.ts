import { flushPromises, mount, type VueWrapper } from "@vue/test-utils";
import { createPinia, setActivePinia } from "pinia";
import { vi } from "vitest";
import type { Component } from "vue";
import { createMemoryHistory, createRouter, type Router } from "vue-router";

// A stand-in for the API's HTTP side in component tests: routes answered by handlers, every
// call recorded. The client looks `fetch` up at each call, so stubbing it here is enough.

export type Handler = (body: unknown) => Response | Promise<Response>;

export interface FakeApi {
  routes: Map<string, Handler>; // "METHOD /path" -> handler
  calls: { method: string; path: string; body: unknown }[];
}

export function fakeApi(): FakeApi {
  const state: FakeApi = { routes: new Map(), calls: [] };
  vi.stubGlobal("fetch", async (input: Request) => {
    const url = new URL(input.url);
    const text = input.method === "GET" ? "" : await input.clone().text();
    const body = text ? JSON.parse(text) : undefined;
    state.calls.push({ method: input.method, path: url.pathname, body });
    const handler = state.routes.get(`${input.method} ${url.pathname}`);
    if (!handler) return new Response(JSON.stringify({ detail: "Not Found" }), { status: 404 });
    return handler(body);
  });
  return state;
}

export const json = (status: number, body: unknown) =>
  new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });

/**
 * Mount `page` at `url` with a fresh Pinia and a memory router that knows the page's own path
 * (the url's) plus `others` (stand-ins for where the page may navigate to).
 */
export async function mountPage(
  page: Component,
  url: string,
  others: string[] = [],
): Promise<{ wrapper: VueWrapper; router: Router }> {
  const pinia = createPinia();
  setActivePinia(pinia);
  const path = url.split("?")[0];
  const router = createRouter({
    history: createMemoryHistory(),
    routes: [
      { path, component: page },
      ...others.map((other) => ({ path: other, component: { render: () => null } })),
    ],
  });
  await router.push(url);
  await router.isReady();
  const wrapper = mount(page, { global: { plugins: [router, pinia] }, attachTo: document.body });
  await flushPromises();
  return { wrapper, router };
}

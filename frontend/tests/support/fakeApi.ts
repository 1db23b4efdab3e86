import { vi } from "vitest";

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

import createClient, { type Middleware } from "openapi-fetch";
import type { paths } from "./schema";
import type { ValidationIssue } from "./types";
import { TOKEN_KEY } from "@/stores/auth";

// One typed client for the whole API; its types are generated from the OpenAPI document
// (`make frontend-api`), so a changed route or field is a compile error here.

// The token the auth store keeps for this browser session.
let currentToken: () => string | null = () => sessionStorage.getItem(TOKEN_KEY);
let onUnauthorized: () => void = () => {};

export function configureAuth(token: () => string | null, unauthorized: () => void) {
  currentToken = token;
  onUnauthorized = unauthorized;
}

export function authToken(): string | null {
  return currentToken();
}

const auth: Middleware = {
  onRequest({ request }) {
    const token = currentToken();
    if (token) request.headers.set("Authorization", `Bearer ${token}`);
    return request;
  },
  onResponse({ response }) {
    if (response.status === 401) onUnauthorized();
    return response;
  },
};

// `fetch` is looked up at each call (not captured once), so tests can stand in for the network.
export const api = createClient<paths>({
  baseUrl: window.location.origin,
  fetch: (request: Request) => globalThis.fetch(request),
});
api.use(auth);

/** A readable sentence from an API error body (FastAPI's `detail`, ours, or a 422 list). */
export function describeError(error: unknown, status?: number): string {
  if (error === undefined || error === null) return status ? `HTTP ${status}` : "request failed";
  if (typeof error === "string") return error;
  if (error instanceof Error) return error.message;
  const body = error as { detail?: unknown; message?: unknown; errors?: unknown };
  const detail = body.detail ?? body.message;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((item) => {
        const entry = item as { loc?: unknown[]; msg?: string };
        const where = (entry.loc ?? []).filter((p) => p !== "body").join(".");
        return where ? `${where}: ${entry.msg ?? "invalid"}` : (entry.msg ?? "invalid");
      })
      .join("; ");
  }
  return JSON.stringify(error);
}

/** A 422 answer's entries, or none for any other answer. */
export function validationIssues(error: unknown, status: number): ValidationIssue[] | null {
  const detail = (error as { detail?: unknown } | undefined)?.detail;
  return status === 422 && Array.isArray(detail) ? (detail as ValidationIssue[]) : null;
}

/** Per-field messages of a 422 (the first loc after "body"), and the rest as one sentence. */
export function fieldMessages(found: ValidationIssue[]): { fields: Record<string, string>; general: string | null } {
  const fields: Record<string, string> = {};
  const general: string[] = [];
  for (const item of found) {
    const loc = (item.loc ?? []).filter((p) => p !== "body");
    const key = loc.length ? String(loc[0]) : "";
    if (key) fields[key] = fields[key] ? `${fields[key]}; ${item.msg}` : item.msg;
    else general.push(item.msg);
  }
  return { fields, general: general.length ? general.join("; ") : null };
}

export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
  ) {
    super(message);
  }
}

/** Unwrap an openapi-fetch result: the data, or an ApiError with the API's own message. */
export async function call<T>(
  request: Promise<{ data?: T; error?: unknown; response: Response }>,
): Promise<T> {
  let result;
  try {
    result = await request;
  } catch (err) {
    throw new ApiError(`cannot reach the API (${(err as Error).message})`, 0);
  }
  const { data, error, response } = result;
  if (!response.ok) throw new ApiError(describeError(error, response.status), response.status);
  return data as T;
}

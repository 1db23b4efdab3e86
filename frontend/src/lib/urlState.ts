import { computed, type WritableComputedRef } from "vue";
import { type LocationQuery, useRoute, useRouter } from "vue-router";

// Page state that lives in the URL (filters, sort, tabs, selections), so a reload or a
// shared link shows the same view. Writing replaces the history entry.

// The query a navigation now on its way will set: writes that follow before it lands (a
// filter, then the page back to 1) build on it, not on the route they started from, so the
// first write is not undone by the second.
let pending: LocationQuery | null = null;

export function useQueryParam(key: string, fallback = ""): WritableComputedRef<string> {
  const route = useRoute();
  const router = useRouter();
  return computed({
    get() {
      const value = route.query[key];
      return typeof value === "string" ? value : fallback;
    },
    set(value: string) {
      const query: LocationQuery = { ...(pending ?? route.query) };
      if (value === fallback || value === "") delete query[key];
      else query[key] = value;
      pending = query;
      void router.replace({ query }).finally(() => {
        if (pending === query) pending = null;
      });
    },
  });
}

export function useQueryList(key: string): WritableComputedRef<string[]> {
  const raw = useQueryParam(key);
  return computed({
    get: () => (raw.value ? raw.value.split(",").filter(Boolean) : []),
    set: (values: string[]) => {
      raw.value = values.join(",");
    },
  });
}

/** The page's tab, kept in ?tab=; anything not among `keys` reads as the first key. */
export function useTab<K extends string>(keys: readonly K[]): WritableComputedRef<K> {
  const raw = useQueryParam("tab", keys[0]);
  return computed({
    get: () => (keys.includes(raw.value as K) ? (raw.value as K) : keys[0]),
    set: (value: K) => {
      raw.value = value;
    },
  });
}

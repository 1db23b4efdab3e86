import { computed, type WritableComputedRef } from "vue";
import { useRoute, useRouter } from "vue-router";

// Page state that lives in the URL (filters, sort, tabs, selections), so a reload or a
// shared link shows the same view. Writing replaces the history entry.

export function useQueryParam(key: string, fallback = ""): WritableComputedRef<string> {
  const route = useRoute();
  const router = useRouter();
  return computed({
    get() {
      const value = route.query[key];
      return typeof value === "string" ? value : fallback;
    },
    set(value: string) {
      const query = { ...route.query };
      if (value === fallback || value === "") delete query[key];
      else query[key] = value;
      void router.replace({ query });
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

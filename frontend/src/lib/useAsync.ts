import { ref, shallowRef, type Ref } from "vue";

export interface AsyncData<T> {
  data: Ref<T | null>;
  error: Ref<string | null>;
  loading: Ref<boolean>;
  reload: () => Promise<void>;
}

/** Load data once now and again on `reload()`: loading, error and data are all explicit. */
export function useAsync<T>(load: () => Promise<T>, immediate = true): AsyncData<T> {
  const data = shallowRef<T | null>(null) as Ref<T | null>;
  const error = ref<string | null>(null);
  const loading = ref(false);
  let generation = 0;
  const reload = async () => {
    const mine = ++generation;
    loading.value = true;
    try {
      const value = await load();
      if (mine !== generation) return;
      data.value = value;
      error.value = null;
    } catch (err) {
      if (mine !== generation) return;
      error.value = (err as Error).message;
    } finally {
      if (mine === generation) loading.value = false;
    }
  };
  if (immediate) void reload();
  return { data, error, loading, reload };
}

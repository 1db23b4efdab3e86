import { onBeforeUnmount, onMounted } from "vue";

/** Call `tick` every `ms` while the component is mounted (and the tab visible). */
export function usePolling(tick: () => unknown, ms: number) {
  let timer: ReturnType<typeof setInterval> | null = null;
  onMounted(() => {
    timer = setInterval(() => {
      if (typeof document === "undefined" || document.visibilityState !== "hidden") void tick();
    }, ms);
  });
  onBeforeUnmount(() => {
    if (timer) clearInterval(timer);
  });
}

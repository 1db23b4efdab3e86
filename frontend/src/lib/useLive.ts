import { onBeforeUnmount } from "vue";
import { openLive, type LiveOptions } from "@/api/live";
import { authToken } from "@/api/client";
import { useAuth } from "@/stores/auth";
import { useRouter } from "vue-router";

/** A live socket tied to the component's life; a refused token sends the user to log in. */
export function useLive(options: Omit<LiveOptions, "token" | "onRefused">) {
  const auth = useAuth();
  const router = useRouter();
  const live = openLive({
    ...options,
    token: authToken,
    onRefused: () => {
      auth.logout();
      void router.replace({ name: "login", query: { next: router.currentRoute.value.fullPath } });
    },
  });
  onBeforeUnmount(live.close);
  return live;
}

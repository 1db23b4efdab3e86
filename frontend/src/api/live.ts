import { ref, type Ref } from "vue";

// A WebSocket to /api/v1/ws/... that reconnects by itself (after an API restart, a network
// blip, or a 4008 "too far behind") with backoff from 0.5 s to 10 s. The token goes in the
// first `hello` message, never in the URL; `hello()` also says where to resume.

// "gone": the server closed with 4404 (no such job, or not the caller's to see): no retry.
export type LiveState = "connecting" | "open" | "reconnecting" | "closed" | "refused" | "gone";

export interface LiveOptions {
  path: string; // e.g. /api/v1/ws/jobs/3
  token: () => string | null;
  hello?: () => Record<string, unknown>;
  onMessage: (message: Record<string, unknown>) => void;
  onRefused?: () => void;
}

export interface Live {
  state: Ref<LiveState>;
  close: () => void;
}

const AUTH_FAILED = 4401;
const NOT_FOUND = 4404;

export function socketUrl(path: string): string {
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${window.location.host}${path}`;
}

export function openLive(options: LiveOptions): Live {
  const state = ref<LiveState>("connecting");
  let socket: WebSocket | null = null;
  let delay = 500;
  let timer: ReturnType<typeof setTimeout> | null = null;
  let stopped = false;

  const connect = () => {
    if (stopped) return;
    const ws = new WebSocket(socketUrl(options.path));
    socket = ws;
    ws.onopen = () => {
      ws.send(JSON.stringify({ type: "hello", token: options.token(), ...(options.hello?.() ?? {}) }));
    };
    ws.onmessage = (event) => {
      let message: Record<string, unknown>;
      try {
        message = JSON.parse(String(event.data));
      } catch {
        return;
      }
      if (state.value !== "open") {
        state.value = "open";
        delay = 500;
      }
      options.onMessage(message);
    };
    ws.onclose = (event) => {
      if (socket !== ws) return;
      socket = null;
      if (stopped) return;
      if (event.code === AUTH_FAILED) {
        state.value = "refused";
        options.onRefused?.();
        return;
      }
      if (event.code === NOT_FOUND) {
        state.value = "gone";
        return;
      }
      state.value = "reconnecting";
      timer = setTimeout(connect, delay);
      delay = Math.min(delay * 2, 10_000);
    };
  };

  connect();
  return {
    state,
    close() {
      stopped = true;
      state.value = "closed";
      if (timer) clearTimeout(timer);
      socket?.close(1000);
      socket = null;
    },
  };
}

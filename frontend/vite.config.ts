/// <reference types="vitest/config" />
import { fileURLToPath, URL } from "node:url";
import vue from "@vitejs/plugin-vue";
import { defineConfig } from "vite";

// `npm run dev` (make dev-frontend): hot reload, with /api, /healthz and /readyz sent to the
// API that `make up` started (TP_API_URL, default http://127.0.0.1:8000). WebSockets included.
const api = process.env.TP_API_URL ?? "http://127.0.0.1:8000";

export default defineConfig({
  plugins: [vue()],
  resolve: { alias: { "@": fileURLToPath(new URL("./src", import.meta.url)) } },
  server: {
    host: "127.0.0.1",
    port: 5173,
    strictPort: true,
    proxy: {
      "/api": { target: api, ws: true, changeOrigin: true },
      "/healthz": { target: api },
      "/readyz": { target: api },
    },
  },
  build: {
    outDir: process.env.TP_DASHBOARD_OUT ?? "../training_platform/dashboard",
    emptyOutDir: true,
    chunkSizeWarningLimit: 1200,
  },
  test: {
    environment: "happy-dom",
    include: ["tests/**/*.test.ts"],
  },
});

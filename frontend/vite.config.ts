/// <reference types="vitest/config" />
import { readFileSync } from "node:fs";
import { basename, join } from "node:path";
import { fileURLToPath, URL } from "node:url";
import vue from "@vitejs/plugin-vue";
import { defineConfig, type Plugin } from "vite";

// `npm run dev` (make dev-frontend): hot reload, with /api, /healthz and /readyz sent to the
// API that `make up` started (TP_API_URL, default http://127.0.0.1:8000). WebSockets included.
const api = process.env.TP_API_URL ?? "http://127.0.0.1:8000";

// The API documentation (/docs: Swagger UI, /redoc: ReDoc) is served by the API from these
// files, so that it works without internet (FastAPI's own pages load them from a CDN). They are
// copied from the pinned npm packages into the build's vendor/, in a folder named by package
// and version (the API serves vendor/ cached for a year, like assets/), with their licences;
// vendor/docs.json tells the API where each one is (training_platform/api/apidocs.py).
const DOCS_PACKAGES: Record<string, string[]> = {
  "swagger-ui-dist": [
    "swagger-ui-bundle.js",
    "swagger-ui-bundle.js.LICENSE.txt",
    "swagger-ui.css",
    "favicon-32x32.png",
    "LICENSE",
    "NOTICE",
  ],
  redoc: ["bundles/redoc.standalone.js", "bundles/redoc.standalone.js.LICENSE.txt", "LICENSE"],
};

function apiDocsAssets(): Plugin {
  const modules = fileURLToPath(new URL("./node_modules", import.meta.url));
  return {
    name: "api-docs-assets",
    apply: "build",
    generateBundle() {
      const folder: Record<string, string> = {};
      for (const [name, files] of Object.entries(DOCS_PACKAGES)) {
        const root = join(modules, name);
        const { version } = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as {
          version: string;
        };
        folder[name] = `${name}-${version}`;
        for (const file of files) {
          const fileName = `vendor/${folder[name]}/${basename(file)}`;
          this.emitFile({ type: "asset", fileName, source: readFileSync(join(root, file)) });
        }
      }
      const manifest = {
        swagger_ui_js: `${folder["swagger-ui-dist"]}/swagger-ui-bundle.js`,
        swagger_ui_css: `${folder["swagger-ui-dist"]}/swagger-ui.css`,
        favicon: `${folder["swagger-ui-dist"]}/favicon-32x32.png`,
        redoc_js: `${folder.redoc}/redoc.standalone.js`,
      };
      const source = `${JSON.stringify(manifest, null, 2)}\n`;
      this.emitFile({ type: "asset", fileName: "vendor/docs.json", source });
    },
  };
}

export default defineConfig({
  plugins: [vue(), apiDocsAssets()],
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

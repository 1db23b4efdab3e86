import { createRouter, createWebHistory, type RouteRecordRaw } from "vue-router";
import { useAuth } from "./stores/auth";

export const routes: RouteRecordRaw[] = [
  { path: "/login", name: "login", component: () => import("./pages/LoginPage.vue"), meta: { public: true } },
  { path: "/", name: "overview", component: () => import("./pages/OverviewPage.vue") },
  { path: "/jobs", name: "jobs", component: () => import("./pages/JobsPage.vue") },
  { path: "/jobs/new", name: "job-new", component: () => import("./pages/JobNewPage.vue") },
  { path: "/jobs/:id(\\d+)", name: "job", component: () => import("./pages/JobDetailPage.vue"), props: true },
  { path: "/pipelines", name: "pipelines", component: () => import("./pages/PipelinesPage.vue") },
  { path: "/pipelines/new", name: "pipeline-new", component: () => import("./pages/PipelineNewPage.vue") },
  {
    path: "/pipelines/:id(\\d+)",
    name: "pipeline",
    component: () => import("./pages/PipelineDetailPage.vue"),
    props: true,
  },
  { path: "/evaluations", name: "evaluations", component: () => import("./pages/EvaluationsPage.vue") },
  {
    path: "/evaluations/compare",
    name: "evaluation-compare",
    component: () => import("./pages/EvaluationComparePage.vue"),
  },
  {
    path: "/evaluations/suites",
    name: "evaluation-suites",
    component: () => import("./pages/EvaluationSuitesPage.vue"),
  },
  {
    path: "/evaluations/rank",
    name: "evaluation-rank",
    component: () => import("./pages/EvaluationRankPage.vue"),
  },
  {
    path: "/evaluations/:id(\\d+)",
    name: "evaluation",
    component: () => import("./pages/EvaluationDetailPage.vue"),
    props: true,
  },
  { path: "/datasets", name: "datasets", component: () => import("./pages/DatasetsPage.vue") },
  { path: "/models", name: "models", component: () => import("./pages/ModelsPage.vue") },
  { path: "/surgery", name: "surgery", component: () => import("./pages/SurgeryPage.vue") },
  { path: "/serving", name: "serving", component: () => import("./pages/ServingPage.vue") },
  { path: "/compute", name: "compute", component: () => import("./pages/ConfiguratorPage.vue") },
  { path: "/gpus", name: "gpus", component: () => import("./pages/GpusHostsPage.vue") },
  { path: "/projects", name: "projects", component: () => import("./pages/ProjectsPage.vue") },
  { path: "/settings", name: "settings", component: () => import("./pages/SettingsPage.vue") },
  { path: "/:rest(.*)*", name: "not-found", component: () => import("./pages/NotFoundPage.vue") },
];

export function createAppRouter() {
  const router = createRouter({ history: createWebHistory(), routes });
  router.beforeEach((to) => {
    const auth = useAuth();
    if (!to.meta.public && !auth.loggedIn) return { name: "login", query: { next: to.fullPath } };
    return true;
  });
  return router;
}

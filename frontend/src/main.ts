import { createPinia } from "pinia";
import { createApp } from "vue";
import App from "./App.vue";
import { configureAuth } from "./api/client";
import { createAppRouter } from "./router";
import { useAuth } from "./stores/auth";
import "./style.css";

const app = createApp(App);
const pinia = createPinia();
app.use(pinia);
const router = createAppRouter();
const auth = useAuth(pinia);
configureAuth(
  () => auth.token,
  () => {
    // The token was revoked or is wrong: back to the login page, keeping where the user was.
    if (!auth.loggedIn) return;
    auth.logout();
    void router.replace({ name: "login", query: { next: router.currentRoute.value.fullPath } });
  },
);
app.use(router);
app.mount("#app");

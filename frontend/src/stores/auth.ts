import { defineStore } from "pinia";
import { computed, ref } from "vue";

// The API token lives in sessionStorage: it survives reloads of this tab and is gone when
// the browser session ends (or on logout). It is never put in a URL the user can share.
export const TOKEN_KEY = "tp.token";

export const useAuth = defineStore("auth", () => {
  const token = ref<string | null>(sessionStorage.getItem(TOKEN_KEY));
  const loggedIn = computed(() => token.value !== null);

  function login(value: string) {
    token.value = value;
    sessionStorage.setItem(TOKEN_KEY, value);
  }

  function logout() {
    token.value = null;
    sessionStorage.removeItem(TOKEN_KEY);
  }

  return { token, loggedIn, login, logout };
});

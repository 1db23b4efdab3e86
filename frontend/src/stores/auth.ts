import { defineStore } from "pinia";
import { computed, ref } from "vue";

// The API token lives in sessionStorage: it survives reloads of this tab and is gone when
// the browser session ends (or on logout). It is never put in a URL the user can share.
export const TOKEN_KEY = "tp.token";

// Each role may do what the ones before it may (the API's order, auth/models.py).
export const ROLES = ["viewer", "member", "admin"] as const;
export type Role = (typeof ROLES)[number];

export interface Me {
  user: string;
  token: string;
  role: string;
  can_run_code: boolean;
}

export const useAuth = defineStore("auth", () => {
  const token = ref<string | null>(sessionStorage.getItem(TOKEN_KEY));
  const loggedIn = computed(() => token.value !== null);
  // Who the token belongs to (GET /users/me, loaded by App.vue); null until known.
  const me = ref<Me | null>(null);

  function login(value: string) {
    token.value = value;
    me.value = null;
    sessionStorage.setItem(TOKEN_KEY, value);
  }

  function logout() {
    token.value = null;
    me.value = null;
    sessionStorage.removeItem(TOKEN_KEY);
  }

  // Whether the dashboard offers what needs `role`: hidden once the caller is known to act
  // below it (the API refuses it anyway, with 403).
  function may(role: Role): boolean {
    if (me.value === null) return true;
    return ROLES.indexOf(me.value.role as Role) >= ROLES.indexOf(role);
  }

  return { token, loggedIn, me, login, logout, may };
});

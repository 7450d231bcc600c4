// Signing in: a bearer token, checked against the API, kept in sessionStorage.
import { api, setToken, token } from './api.js';
import { t } from './i18n.js';

/** Ask for a token; resolves true once a valid one is kept. */
export function askLogin() {
  const dialog = document.getElementById('login-dialog');
  const form = document.getElementById('login-form');
  const input = document.getElementById('login-token');
  const error = document.getElementById('login-error');
  error.hidden = true;
  input.value = '';
  return new Promise((resolve) => {
    const done = (ok) => {
      form.removeEventListener('submit', submit);
      dialog.removeEventListener('cancel', cancel);
      document.getElementById('login-cancel').removeEventListener('click', cancel);
      dialog.close();
      resolve(ok);
    };
    const cancel = () => done(false);
    dialog.addEventListener('cancel', cancel, { once: true }); // Escape
    const submit = async (event) => {
      event.preventDefault();
      const value = input.value.trim();
      if (!value) return;
      // A token is valid when a read that needs one answers (subscriptions need a viewer).
      const previous = token();
      setToken(value);
      try {
        await api('/api/v1/subscriptions/?limit=1', { check: true });
        done(true);
      } catch (err) {
        setToken(previous);
        error.textContent = `${t('login.bad')}: ${err.message}`;
        error.hidden = false;
        input.focus();
      }
    };
    form.addEventListener('submit', submit);
    document.getElementById('login-cancel').addEventListener('click', cancel);
    dialog.showModal();
    input.focus();
  });
}

/** A token, asking for one when none is kept. */
export async function ensureLogin() {
  if (token()) return true;
  return askLogin();
}

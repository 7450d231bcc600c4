// Start-up and the hash router: #/board, #/location/<loc_id>, #/alerts, #/thresholds.
import { errorText, setToken, token } from './api.js';
import { askLogin } from './login.js';
import { lang, setLang, t, translateStatic } from './i18n.js';
import {
  loadActiveAlerts, loadConfig, loadLocations, loadRealtime, on, reportError, startLive, store,
} from './store.js';
import { renderBoard } from './board.js';
import { renderLocation } from './location.js';
import { renderAlerts } from './alerts.js';
import { renderThresholds } from './thresholds.js';
import { el, fill, message } from './dom.js';

const main = document.getElementById('main');
let cleanup = null;
// Notices that outlive a view: a failed background load, a token the API no longer takes.
const notice = el('div', { id: 'notice', class: 'notice' });
main.before(notice);

function showNotice(text, withLogin) {
  fill(notice, message('error', text),
    withLogin ? el('button', {
      type: 'button', class: 'button primary', text: t('login'),
      onclick: async () => { if (await askLogin()) notice.replaceChildren(); },
    }) : null,
    el('button', { type: 'button', class: 'button', text: t('close'), onclick: () => notice.replaceChildren() }));
}

function parseHash() {
  const raw = window.location.hash.replace(/^#\/?/, '');
  const [path, search] = raw.split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { name: parts[0] || 'board', args: parts.slice(1), params: new URLSearchParams(search || '') };
}

const VIEWS = {
  board: renderBoard,
  location: renderLocation,
  alerts: renderAlerts,
  thresholds: renderThresholds,
};

function route() {
  if (cleanup) cleanup();
  cleanup = null;
  main.replaceChildren();
  try {
    const { name, args, params } = parseHash();
    const view = VIEWS[name] || renderBoard;
    for (const link of document.querySelectorAll('#nav a')) {
      if (link.dataset.route === name) link.setAttribute('aria-current', 'page');
      else link.removeAttribute('aria-current');
    }
    cleanup = view(main, args, params) || null;
  } catch (err) {
    const what = err instanceof URIError ? t('error.route') : String(err);
    fill(main, message('error', err instanceof URIError ? `${what}: ${window.location.hash}` : what));
  }
}

function showLive() {
  const node = document.getElementById('live');
  const states = Object.values(store.live);
  const state = states.every((s) => s === 'open') ? 'open'
    : states.includes('retrying') ? 'retrying' : states.includes('closed') ? 'closed' : 'connecting';
  node.className = `live live-${state}`;
  node.textContent = t(`live.${state}`);
}

function showLogin() {
  const button = document.getElementById('login-button');
  const who = document.getElementById('who');
  button.textContent = token() ? t('logout') : t('login');
  who.textContent = token() ? t('login.signed') : '';
}

async function boot() {
  const picker = document.getElementById('lang');
  picker.value = lang();
  translateStatic();
  picker.addEventListener('change', () => setLang(picker.value));
  document.getElementById('skip').addEventListener('click', () => main.focus());
  document.getElementById('login-button').addEventListener('click', async () => {
    if (token()) setToken(null);
    else await askLogin();
  });
  window.addEventListener('iotmon:token', () => { showLogin(); loadActiveAlerts().catch(reportError); });
  window.addEventListener('iotmon:lang', () => { showLogin(); showLive(); route(); });
  on('live', showLive);
  on('notice', (err) => showNotice(`${t('error.live')}: ${errorText(err)}`, false));
  window.addEventListener('iotmon:signedout', () => showNotice(t('error.signedOut'), true));
  showLogin();
  showLive();
  fill(main, el('p', { class: 'loading', text: t('loading') }));
  await loadConfig();
  // The live streams open while the first answers are fetched and shown; once they are open,
  // the current values and alerts are asked for again, so that whatever happened between
  // the first answers and the streams' start is not missed (the newer value always wins).
  const live = startLive();
  try {
    await Promise.all([loadLocations(), loadRealtime(), loadActiveAlerts()]);
    performance.mark('data-loaded');
  } catch (err) {
    fill(main, message('error', `${t('error.load')}: ${err.message}`));
    if (err.status === 401 || err.status === 403) {
      // This deployment closes reads: sign in, then start again with the token.
      main.append(el('button', {
        type: 'button', class: 'button primary', text: t('login'),
        onclick: async () => { if (await askLogin()) window.location.reload(); },
      }));
    }
    return;
  }
  live.then(async () => {
    performance.mark('live-open');
    await Promise.all([loadRealtime().catch(reportError), loadActiveAlerts().catch(reportError)]);
    performance.mark('live-reloaded'); // what happened while the streams opened is in
  });
  window.addEventListener('hashchange', route);
  route();
}

boot();

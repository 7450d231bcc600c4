// Silences (/api/v1/silences/): the current ones (active or pending) listed, created, ended
// early.  Reading them needs a token (who muted what is on record); the section stays hidden
// on an API without them.
import { api, apiAll, ApiError, errorText, token } from './api.js';
import { t } from './i18n.js';
import { el, field, fill, message, select } from './dom.js';
import { dateTime, zonedTime } from './time.js';
import { zoneOf } from './store.js';
import { askLogin, ensureLogin } from './login.js';

const SCOPE = ['plant', 'factory', 'building', 'floor', 'area', 'sensor_id'];

function zoneFor(factory) {
  return zoneOf({ factory });
}

/** A datetime-local value read as the wall clock of tz, as an ISO instant. */
function instant(value, tz) {
  const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})/.exec(value || '');
  if (!m) return null;
  return new Date(zonedTime(+m[1], +m[2], +m[3], +m[4], +m[5], tz)).toISOString();
}

export function renderSilences(section) {
  const status = el('div', { 'aria-live': 'polite' });
  const list = el('div', { class: 'table-wrap' });
  const controls = {};
  for (const k of SCOPE) controls[k] = el('input', { type: k === 'floor' ? 'number' : 'text' });
  controls.threshold_type = select([['', t('metric.any')], ...['pcv_temperature', 'temperature', 'humidity']
    .map((m) => [m, t(`metric.${m}`)])], '');
  controls.starts_at = el('input', { type: 'datetime-local' });
  controls.ends_at = el('input', { type: 'datetime-local', required: true });
  controls.reason = el('input', { type: 'text', maxlength: '500', required: true });
  const error = el('div', { 'aria-live': 'assertive' });
  const form = el('form', {}, el('h3', { text: t('sil.new') }),
    el('div', { class: 'grid-form' }, ...SCOPE.map((k) => field(t(`scope.${k}`), controls[k])),
      field(t('alerts.metric'), controls.threshold_type), field(t('sil.starts'), controls.starts_at),
      field(t('sil.ends'), controls.ends_at), field(t('sil.reason'), controls.reason)),
    error, el('div', { class: 'actions' }, el('button', { type: 'submit', class: 'button primary', text: t('create') })));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (!(await ensureLogin())) return;
    const tz = zoneFor(controls.factory.value.trim());
    const body = {
      threshold_type: controls.threshold_type.value || null,
      starts_at: instant(controls.starts_at.value, tz),
      ends_at: instant(controls.ends_at.value, tz),
      reason: controls.reason.value.trim(),
    };
    if (!body.starts_at) delete body.starts_at; // from now
    for (const k of SCOPE) {
      const v = controls[k].value.trim();
      body[k] = v === '' ? null : (k === 'floor' ? Number(v) : v);
    }
    try {
      await api('/api/v1/silences/', { method: 'POST', body });
      fill(error);
      fill(status, message('ok', t('th.saved')));
      load();
    } catch (err) {
      fill(error, message('error', errorText(err)));
    }
  });

  const load = async () => {
    let rows;
    section.hidden = false;
    if (!token()) {
      fill(list, el('p', { text: t('sil.login') }),
        el('button', { type: 'button', class: 'button', text: t('login'), onclick: () => askLogin() }));
      return;
    }
    try {
      rows = await apiAll('/api/v1/silences/', { key: 'silence_id' });
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) {
        section.hidden = true; // this API has no silences
        return;
      }
      section.hidden = false;
      fill(list, message('error', errorText(err)));
      return;
    }
    section.hidden = false;
    if (!Array.isArray(rows) || !rows.length) {
      fill(list, el('p', { class: 'empty', text: t('sil.none') }));
      return;
    }
    const body = el('tbody');
    for (const s of rows) {
      const id = s.silence_id ?? s.id;
      const tz = zoneFor(s.factory);
      const scope = SCOPE.filter((k) => s[k] !== null && s[k] !== undefined).map((k) => `${k}=${s[k]}`).join(', ') || t('subs.any');
      const end = el('button', { type: 'button', class: 'button danger', text: t('sil.end') });
      end.addEventListener('click', async () => {
        if (!(await ensureLogin())) return;
        try {
          await api(`/api/v1/silences/${encodeURIComponent(id)}`, { method: 'DELETE' });
          fill(status, message('ok', t('alerts.done')));
        } catch (err) {
          fill(status, message('error', errorText(err)));
        }
        load();
      });
      body.append(el('tr', { dataset: { silence: String(id) } }, el('td', { text: id }), el('td', { text: scope }),
        el('td', { text: s.threshold_type ? t(`metric.${s.threshold_type}`) : t('metric.any') }),
        el('td', { text: s.active ? t('sil.active') : t('sil.pending') }),
        el('td', { text: dateTime(s.starts_at, tz) }), el('td', { text: dateTime(s.ends_at, tz) }),
        el('td', { text: s.reason || '' }), el('td', { text: s.created_by || '' }), el('td', {}, end)));
    }
    const head = ['#', t('subs.scope'), t('alerts.metric'), t('alerts.state'), t('sil.starts'), t('sil.ends'),
      t('sil.reason'), t('sil.by'), t('alerts.actions')];
    fill(list, el('table', {}, el('thead', {}, el('tr', {}, head.map((h) => el('th', { scope: 'col', text: h })))), body));
  };
  fill(section, el('h2', { id: 'sil-h', text: t('sil.title') }), el('p', { class: 'note', text: t('sil.about') }),
    status, list, form);
  load();
  const onToken = () => load();
  window.addEventListener('iotmon:token', onToken);
  return () => window.removeEventListener('iotmon:token', onToken);
}

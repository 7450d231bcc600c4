// The alert console: active alerts first (live), acknowledge and resolve with a note, the
// history with the API's filters, the subscriptions, and the silences where the API has them.
import { api, apiAll, errorText, query, token } from './api.js';
import { t } from './i18n.js';
import { el, field, fill, message, select } from './dom.js';
import { parseIsoDate, zonedTime } from './time.js';
import {
  levelRank, loadActiveAlerts, on, reportError, store, updateAlert, zoneOf,
} from './store.js';
import { alertTable } from './alert-table.js';
import { ensureLogin } from './login.js';
import { renderSubscriptions } from './subscriptions.js';
import { renderSilences } from './silences.js';

const METRIC_OPTIONS = () => [['', t('board.all')], ...['pcv_temperature', 'temperature', 'humidity'].map((m) => [m, t(`metric.${m}`)])];

/** A modal asking for a note; resolves with the API's answer, or null when cancelled. */
function noteDialog(title, submit) {
  return new Promise((resolve) => {
    const note = el('textarea', { id: 'action-note', maxlength: '2000' });
    const error = el('p', { class: 'msg msg-error', role: 'alert', hidden: true });
    const ok = el('button', { type: 'submit', class: 'button primary', text: title });
    const cancel = el('button', { type: 'button', class: 'button', text: t('cancel') });
    const form = el('form', { method: 'dialog' }, el('h2', { id: 'action-title', text: title }),
      field(t('alerts.note'), note), error, el('div', { class: 'actions' }, ok, cancel));
    const dialog = el('dialog', { 'aria-labelledby': 'action-title' }, form);
    document.body.append(dialog);
    const done = (value) => { dialog.close(); dialog.remove(); resolve(value); };
    cancel.addEventListener('click', () => done(null));
    dialog.addEventListener('cancel', () => done(null));
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      ok.disabled = true;
      try {
        done(await submit(note.value.trim() || null));
      } catch (err) {
        error.textContent = errorText(err);
        error.hidden = false;
        ok.disabled = false;
      }
    });
    dialog.showModal();
    note.focus();
  });
}

async function act(alert, kind, status) {
  if (!(await ensureLogin())) return;
  const title = kind === 'ack' ? t('alerts.ackTitle') : t('alerts.resolveTitle');
  const row = await noteDialog(title, (note) => api(`/api/v1/alerts/${encodeURIComponent(alert.alert_id)}/${kind}`, {
    method: 'POST', body: note ? { note } : {},
  }));
  if (row) {
    updateAlert(row);
    fill(status, message('ok', t('alerts.done')));
    // Keyboard focus stays in place: the same row's next button, else the status line.
    const list = status.parentNode && status.parentNode.querySelector('.table-wrap');
    const sel = `tr[data-alert="${CSS.escape(String(alert.alert_id))}"] button`;
    const button = list && [...list.querySelectorAll(sel)].find((b) => !b.disabled);
    if (button) button.focus();
    else status.focus();
  }
}

function activeSection() {
  const status = el('div', { 'aria-live': 'polite', tabindex: '-1' });
  const list = el('div', { class: 'table-wrap' });
  const section = el('section', { 'aria-labelledby': 'active-h', class: 'panel' },
    el('h2', { id: 'active-h', text: t('alerts.active') }), status, list);
  let rows = [];
  const draw = () => {
    const byId = new Map(rows.filter((r) => !store.resolved.has(r.alert_id)).map((r) => [r.alert_id, r]));
    // Raised by an event the API has not stored yet: shown from the event.
    for (const a of store.alerts.values()) {
      if (!byId.has(a.alert_id)) {
        byId.set(a.alert_id, {
          alert_id: a.alert_id, alert_level: a.level, loc_id: a.loc_id, alert_type: a.metric, kind: a.kind,
          measured_value: a.value, alert_time: a.since, state: 'active', acknowledged_at: a.acknowledged_at,
          acknowledged_by: a.acknowledged_by,
        });
      } else {
        let held = byId.get(a.alert_id);
        if (a.level !== held.alert_level) held = { ...held, alert_level: a.level, measured_value: a.value };
        // Acknowledged here a moment ago: shown before the list is asked for again.
        if (a.acknowledged_at && !held.acknowledged_at) {
          held = { ...held, acknowledged_at: a.acknowledged_at, acknowledged_by: a.acknowledged_by };
        }
        byId.set(a.alert_id, held);
      }
    }
    const shown = [...byId.values()].sort((a, b) => levelRank(b.alert_level) - levelRank(a.alert_level)
      || String(b.alert_time).localeCompare(String(a.alert_time)));
    if (!shown.length) {
      fill(list, el('p', { class: 'empty', text: t('alerts.none') }));
      return;
    }
    // A redraw keeps keyboard focus on the same row's button.
    const focused = list.contains(document.activeElement) ? document.activeElement : null;
    const keep = focused && focused.closest('tr[data-alert]')
      ? [focused.closest('tr[data-alert]').dataset.alert, focused.dataset.action] : null;
    fill(list, alertTable(shown, {
      state: false,
      anonymous: !token(),
      actions: (a) => [
        el('button', {
          type: 'button', class: 'button', text: t('alerts.ack'), disabled: Boolean(a.acknowledged_at),
          dataset: { action: 'ack' }, onclick: () => act(a, 'ack', status),
        }),
        el('button', {
          type: 'button', class: 'button', text: t('alerts.resolve'), dataset: { action: 'resolve' },
          onclick: () => act(a, 'resolve', status),
        }),
      ],
    }));
    if (keep) {
      const again = [...list.querySelectorAll(`tr[data-alert="${CSS.escape(keep[0])}"] button`)]
        .filter((b) => !b.disabled);
      const target = again.find((b) => b.dataset.action === keep[1]) || again[0];
      if (target) target.focus();
      else status.focus();
    }
  };
  let timer = 0;
  const reload = async () => {
    try {
      rows = await apiAll('/api/v1/alerts/?state=active', { key: 'alert_id' });
      draw();
    } catch (err) {
      fill(status, message('error', errorText(err)));
    }
  };
  reload();
  const off = on('alerts', () => {
    draw();
    clearTimeout(timer);
    timer = setTimeout(reload, 1500); // the sink writes the row a moment after the event
  });
  const tokenChanged = () => reload();
  window.addEventListener('iotmon:token', tokenChanged);
  return [section, () => { off(); clearTimeout(timer); window.removeEventListener('iotmon:token', tokenChanged); }];
}

function historySection(params) {
  const factories = [...new Set([...store.locations.values()].map((l) => l.factory))].sort();
  const controls = {
    factory: select([['', t('board.all')], ...factories.map((f) => [f, f])], ''),
    building: el('input', { type: 'text', maxlength: '100' }),
    loc_id: el('input', { type: 'text', maxlength: '32', value: (params.get('loc_id') || '').slice(0, 32) }),
    metric: select(METRIC_OPTIONS(), ''),
    level: select([['', t('board.all')], ['warning', t('level.warning')], ['critical', t('level.critical')]], ''),
    kind: select([['', t('board.all')], ['threshold', t('alerts.kindThreshold')], ['sensor_silent', t('alerts.silent')]], ''),
    state: select([['', t('board.all')], ['active', t('alerts.stateActive')], ['resolved', t('alerts.stateResolved')]], ''),
    acknowledged: select([['', t('board.all')], ['true', t('alerts.yes')], ['false', t('alerts.no')]], ''),
    from: el('input', { type: 'date' }),
    to: el('input', { type: 'date' }),
  };
  const labels = {
    factory: t('board.factory'), building: t('board.building'), loc_id: t('alerts.loc_id'), metric: t('alerts.metric'),
    level: t('alerts.severity'), kind: t('alerts.kind'), state: t('alerts.state'),
    acknowledged: t('alerts.acknowledged'), from: t('alerts.from'), to: t('alerts.to'),
  };
  const form = el('form', { class: 'grid-form' }, Object.entries(controls).map(([k, c]) => field(labels[k], c)),
    el('div', { class: 'field' }, el('button', { type: 'submit', class: 'button primary', text: t('alerts.search') })));
  const zoneNote = el('p', { class: 'note' });
  const status = el('div', { 'aria-live': 'polite', tabindex: '-1' });
  const list = el('div', { class: 'table-wrap' });
  const pager = el('div', { class: 'actions' });
  const limit = 50;
  let skip = 0;
  const load = async () => {
    // Dates are days of the chosen location's or factory's zone (said on the page).
    const tz = zoneOf({ loc_id: controls.loc_id.value.trim(), factory: controls.factory.value });
    zoneNote.textContent = t('alerts.daysIn', { tz });
    const instant = (value, plusDay) => {
      const d = parseIsoDate(value);
      return d ? new Date(zonedTime(d.y, d.m, d.d + (plusDay ? 1 : 0), 0, 0, tz)).toISOString() : null;
    };
    const params = {
      factory: controls.factory.value, building: controls.building.value.trim(), loc_id: controls.loc_id.value.trim(),
      metric: controls.metric.value, level: controls.level.value, kind: controls.kind.value,
      state: controls.state.value, acknowledged: controls.acknowledged.value,
      from: instant(controls.from.value, false), to: instant(controls.to.value, true), skip, limit,
    };
    fill(status, el('p', { class: 'loading', text: t('loading') }));
    try {
      const rows = await api(`/api/v1/alerts/${query(params)}`);
      fill(status);
      fill(list, rows.length ? alertTable(rows, { anonymous: !token() }) : el('p', { class: 'empty', text: t('alerts.none') }));
      const prev = el('button', { type: 'button', class: 'button', text: t('alerts.prev'), disabled: skip === 0 });
      const next = el('button', { type: 'button', class: 'button', text: t('alerts.next'), disabled: rows.length < limit });
      prev.addEventListener('click', () => { skip = Math.max(0, skip - limit); load(); });
      next.addEventListener('click', () => { skip += limit; load(); });
      fill(pager, prev, el('span', { class: 'note', text: t('alerts.page', { from: skip + 1, to: skip + rows.length }) }), next);
    } catch (err) {
      fill(status, message('error', errorText(err)));
    }
  };
  form.addEventListener('submit', (event) => { event.preventDefault(); skip = 0; load(); });
  load();
  return el('section', { 'aria-labelledby': 'history-h', class: 'panel' },
    el('h2', { id: 'history-h', text: t('alerts.history') }), form, zoneNote, status, list, pager);
}

export function renderAlerts(main, _args, params) {
  const [active, stopActive] = activeSection();
  const subscriptions = el('section', { class: 'panel', 'aria-labelledby': 'subs-h' });
  const silences = el('section', { class: 'panel', 'aria-labelledby': 'sil-h', hidden: true });
  fill(main, el('h1', { text: t('alerts.title') }), active, historySection(params), subscriptions, silences);
  const stops = [stopActive, renderSubscriptions(subscriptions), renderSilences(silences)];
  loadActiveAlerts().catch(reportError);
  return () => { for (const stop of stops) if (stop) stop(); };
}


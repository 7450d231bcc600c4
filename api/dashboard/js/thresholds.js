// The threshold editor: list, create, edit and delete bands; the API validates every
// change and its message is shown as it is.  Presets add known sets of bands.
import { api, apiAll, errorText } from './api.js';
import { t } from './i18n.js';
import { el, field, fill, message, select } from './dom.js';
import { dateTime } from './time.js';
import { store, zoneOf } from './store.js';
import { ensureLogin } from './login.js';

const TYPES = ['pcv_temperature', 'temperature', 'humidity'];
const LEVELS = ['green', 'low', 'info', 'yellow', 'medium', 'warning', 'high', 'orange', 'red', 'critical'];
const LEVEL_STATUS = {
  green: 'normal', low: 'normal', info: 'normal', yellow: 'warning', high: 'warning',
  medium: 'warning', warning: 'warning', orange: 'critical', red: 'critical', critical: 'critical',
};

// The original system's production bands of perceived temperature (original-system.md,
// infra/examples/thresholds.yaml), and the Ministry of Employment and Labor's heat-stress
// stages by perceived temperature: 31 attention, 33 caution, 35 warning, 38 danger.
export const PRESETS = {
  original: [
    { threshold_type: 'pcv_temperature', level: 'green', min_value: '0.00', max_value: '30.90' },
    { threshold_type: 'pcv_temperature', level: 'yellow', min_value: '31.00', max_value: '32.90' },
    { threshold_type: 'pcv_temperature', level: 'orange', min_value: '33.00', max_value: null },
  ],
  heat: [
    { threshold_type: 'pcv_temperature', level: 'yellow', min_value: '31.00', max_value: '32.90' },
    { threshold_type: 'pcv_temperature', level: 'orange', min_value: '33.00', max_value: '34.90' },
    { threshold_type: 'pcv_temperature', level: 'red', min_value: '35.00', max_value: '37.90' },
    { threshold_type: 'pcv_temperature', level: 'critical', min_value: '38.00', max_value: null },
  ],
};

const SCOPE = ['factory', 'building', 'floor', 'loc_id'];

function scopeText(b) {
  const parts = SCOPE.filter((k) => b[k] !== null && b[k] !== undefined).map((k) => `${k}=${b[k]}`);
  return parts.length ? parts.join(', ') : t('th.anyScope');
}

const bound = (v) => (v === null || v === undefined ? t('th.open') : v);

export function renderThresholds(main) {
  const status = el('div', { id: 'th-status', 'aria-live': 'polite' });
  const list = el('div', { class: 'table-wrap' });
  const formBox = el('section', { class: 'panel', 'aria-labelledby': 'th-form-h' });
  const presetBox = el('section', { class: 'panel', 'aria-labelledby': 'th-presets-h' });
  let editing = null;

  const buildForm = (band) => {
    editing = band;
    const c = {
      threshold_type: select(TYPES.map((m) => [m, t(`metric.${m}`)]), band ? band.threshold_type : 'pcv_temperature', { id: 'th-type' }),
      level: select(LEVELS.map((l) => [l, `${l} (${t(`status.${LEVEL_STATUS[l]}`)})`]), band ? band.level : 'yellow', { id: 'th-level' }),
      min_value: el('input', { id: 'th-min', type: 'number', step: '0.01', value: band && band.min_value !== null ? band.min_value : '' }),
      max_value: el('input', { id: 'th-max', type: 'number', step: '0.01', value: band && band.max_value !== null ? band.max_value : '' }),
      factory: el('input', { id: 'th-factory', type: 'text', maxlength: '100', value: band && band.factory ? band.factory : '' }),
      building: el('input', { id: 'th-building', type: 'text', maxlength: '100', value: band && band.building ? band.building : '' }),
      floor: el('input', { id: 'th-floor', type: 'number', step: '1', value: band && band.floor !== null ? band.floor : '' }),
      loc_id: el('input', { id: 'th-loc', type: 'text', maxlength: '32', value: band && band.loc_id ? band.loc_id : '' }),
      // Required (checked on submit; the form leaves the rest to the API's messages): an
      // emptied field must become neither 0 (an alert on the first reading out of band) nor
      // the old value.
      hold_seconds: el('input', {
        id: 'th-hold', type: 'number', min: '0', step: '1', required: true, value: band ? band.hold_seconds : 60,
      }),
      clear_seconds: el('input', {
        id: 'th-clear', type: 'number', min: '0', step: '1', required: true, value: band ? band.clear_seconds : 60,
      }),
      clear_margin: el('input', { id: 'th-margin', type: 'number', min: '0', step: '0.01', value: band ? band.clear_margin : 0 }),
    };
    const labels = {
      threshold_type: t('th.type'), level: t('th.level'), min_value: t('th.min'), max_value: t('th.max'),
      factory: t('board.factory'), building: t('board.building'), floor: t('board.floor'), loc_id: t('th.loc_id'),
      hold_seconds: t('th.hold'), clear_seconds: t('th.clear'), clear_margin: t('th.margin'),
    };
    const error = el('div', { id: 'th-error', 'aria-live': 'assertive' });
    const form = el('form', { id: 'th-form', novalidate: true },
      el('div', { class: 'grid-form' }, Object.entries(c).map(([k, node]) => field(labels[k], node))),
      error,
      el('div', { class: 'actions' },
        el('button', { type: 'submit', class: 'button primary', id: 'th-save', text: band ? t('save') : t('create') }),
        band ? el('button', { type: 'button', class: 'button', text: t('cancel'), onclick: () => buildForm(null) }) : null));
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      fill(status); // an earlier "Saved." must not stand beside this attempt's error
      // Numbers are sent as the text typed (decimal strings, as the API answers them).
      const text = (node) => node.value.trim();
      const missing = ['hold_seconds', 'clear_seconds'].filter((k) => text(c[k]) === '');
      if (missing.length) {
        fill(error, message('error', t('th.required', { fields: missing.map((k) => labels[k]).join(', ') })));
        c[missing[0]].focus();
        return;
      }
      if (!(await ensureLogin())) return;
      const body = {
        threshold_type: c.threshold_type.value, level: c.level.value,
        min_value: text(c.min_value) === '' ? null : text(c.min_value),
        max_value: text(c.max_value) === '' ? null : text(c.max_value),
        factory: text(c.factory) || null, building: text(c.building) || null,
        floor: text(c.floor) === '' ? null : Number(text(c.floor)), loc_id: text(c.loc_id) || null,
        hold_seconds: Number(text(c.hold_seconds)), clear_seconds: Number(text(c.clear_seconds)),
        clear_margin: text(c.clear_margin) || '0',
      };
      try {
        if (editing) await api(`/api/v1/thresholds/${editing.threshold_id}`, { method: 'PUT', body });
        else await api('/api/v1/thresholds/', { method: 'POST', body });
        fill(error);
        fill(status, message('ok', t('th.saved')));
        buildForm(null);
        load();
      } catch (err) {
        fill(error, message('error', errorText(err)));
      }
    });
    fill(formBox, el('h2', { id: 'th-form-h', text: band ? t('th.editing', { id: band.threshold_id }) : t('th.new') }), form);
  };

  const load = async () => {
    try {
      const rows = await apiAll('/api/v1/thresholds/', { key: 'threshold_id' });
      const body = el('tbody');
      for (const b of rows) {
        const s = LEVEL_STATUS[b.level] || 'normal';
        const edit = el('button', { type: 'button', class: 'button', text: t('edit') });
        edit.addEventListener('click', () => { buildForm(b); document.getElementById('th-type').focus(); });
        const remove = el('button', { type: 'button', class: 'button danger', text: t('delete') });
        remove.addEventListener('click', async () => {
          if (!window.confirm(t('th.confirmDelete', { id: b.threshold_id }))) return;
          if (!(await ensureLogin())) return;
          try {
            await api(`/api/v1/thresholds/${b.threshold_id}`, { method: 'DELETE' });
            fill(status, message('ok', t('th.deleted')));
          } catch (err) {
            fill(status, message('error', errorText(err)));
          }
          load();
        });
        body.append(el('tr', { dataset: { threshold: String(b.threshold_id) } },
          el('td', { text: b.threshold_id }), el('td', { text: t(`metric.${b.threshold_type}`) }),
          el('td', {}, el('span', { class: `level level-${s}`, text: b.level })),
          el('td', { class: 'num', text: bound(b.min_value) }), el('td', { class: 'num', text: bound(b.max_value) }),
          el('td', { text: scopeText(b) }), el('td', { class: 'num', text: b.hold_seconds }),
          el('td', { class: 'num', text: b.clear_seconds }), el('td', { class: 'num', text: b.clear_margin }),
          el('td', { text: dateTime(b.upd_dt, zoneOf(b)) }),
          el('td', {}, el('div', { class: 'actions' }, edit, remove))));
      }
      const head = ['#', t('th.type'), t('th.level'), t('th.min'), t('th.max'), t('th.scope'), t('th.hold'),
        t('th.clear'), t('th.margin'), t('th.updated'), t('alerts.actions')];
      fill(list, el('table', { id: 'th-table' }, el('thead', {}, el('tr', {}, head.map((h) => el('th', { scope: 'col', text: h })))), body));
    } catch (err) {
      fill(list, message('error', errorText(err)));
    }
  };

  // Presets: preview, optionally narrowed to one factory, then add.
  const factories = [...new Set([...store.locations.values()].map((l) => l.factory))].sort();
  const presetPick = select([['original', t('th.presetOriginal')], ['heat', t('th.presetHeat')]], 'original', { id: 'preset' });
  const presetFactory = select([['', t('th.anyScope')], ...factories.map((f) => [f, f])], '', { id: 'preset-factory' });
  const preview = el('div', { class: 'table-wrap' });
  const presetStatus = el('div', { 'aria-live': 'polite' });
  const applyButton = el('button', { type: 'button', class: 'button primary' });
  const showPreset = () => {
    const bands = PRESETS[presetPick.value];
    fill(preview, el('p', { class: 'note', text: t('th.presetPreview') }), el('table', {},
      el('thead', {}, el('tr', {}, [t('th.type'), t('th.level'), t('th.min'), t('th.max')].map((h) => el('th', { scope: 'col', text: h })))),
      el('tbody', {}, bands.map((b) => el('tr', {}, el('td', { text: t(`metric.${b.threshold_type}`) }),
        el('td', {}, el('span', { class: `level level-${LEVEL_STATUS[b.level]}`, text: b.level })),
        el('td', { text: bound(b.min_value) }), el('td', { text: bound(b.max_value) }))))));
    applyButton.textContent = t('th.presetApply', { n: bands.length });
  };
  presetPick.addEventListener('change', showPreset);
  applyButton.addEventListener('click', async () => {
    if (!(await ensureLogin())) return;
    const bands = PRESETS[presetPick.value];
    let added = 0;
    try {
      for (const band of bands) {
        // eslint-disable-next-line no-await-in-loop
        await api('/api/v1/thresholds/', { method: 'POST', body: { ...band, factory: presetFactory.value || null } });
        added += 1;
      }
      fill(presetStatus, message('ok', t('th.presetDone', { n: added })));
    } catch (err) {
      fill(presetStatus, message('error', `${t('th.presetDone', { n: added })} ${errorText(err)}`));
    }
    load();
  });
  fill(presetBox, el('h2', { id: 'th-presets-h', text: t('th.presets') }),
    el('div', { class: 'grid-form' }, field(t('th.presets'), presetPick), field(t('board.factory'), presetFactory)),
    preview, presetStatus, el('div', { class: 'actions' }, applyButton));
  showPreset();

  fill(main, el('h1', { text: t('th.title') }), status, list, formBox, presetBox);
  buildForm(null);
  load();
  return null;
}

// Alert subscriptions (personal data: listed only with a token), editable in place.
import { api, apiAll, errorText, token } from './api.js';
import { t } from './i18n.js';
import { el, field, fill, message, select } from './dom.js';
import { askLogin } from './login.js';

const CHANNELS = ['email', 'kakao', 'sms', 'app', 'webhook', 'slack', 'mqtt'];
const TRANSITIONS = ['raised', 'escalated', 'deescalated', 'resolved'];
const SCOPE = ['plant', 'factory', 'building', 'floor', 'area', 'sensor_id'];

function scopeText(s) {
  const parts = SCOPE.filter((k) => s[k] !== null && s[k] !== undefined).map((k) => `${k}=${s[k]}`);
  return parts.length ? parts.join(', ') : t('subs.any');
}

export function renderSubscriptions(section) {
  const status = el('div', { 'aria-live': 'polite' });
  const list = el('div', { class: 'table-wrap' });
  const formBox = el('div');
  let editing = null;

  const controls = {};
  const buildForm = (sub) => {
    editing = sub;
    controls.subscriber = el('input', { type: 'text', required: true, maxlength: '100', value: sub ? sub.subscriber : '' });
    controls.notify_type = select(CHANNELS.map((c) => [c, c]), sub ? sub.notify_type : 'email');
    controls.notify_id = el('input', { type: 'text', required: true, maxlength: '500', value: sub ? sub.notify_id : '' });
    for (const k of SCOPE) {
      controls[k] = el('input', { type: k === 'floor' ? 'number' : 'text', value: sub && sub[k] !== null ? sub[k] : '' });
    }
    controls.threshold_type = select([['', t('metric.any')], ...['pcv_temperature', 'temperature', 'humidity']
      .map((m) => [m, t(`metric.${m}`)])], sub ? sub.threshold_type || '' : '');
    controls.min_level = select([['warning', t('level.warning')], ['critical', t('level.critical')]], sub ? sub.min_level : 'warning');
    controls.enabled = el('input', { type: 'checkbox', id: 'sub-enabled' });
    controls.enabled.checked = sub ? sub.enabled : true;
    controls.include_silent = el('input', { type: 'checkbox', id: 'sub-silent' });
    controls.include_silent.checked = sub ? sub.include_silent : false;
    controls.transitions = TRANSITIONS.map((tr) => {
      const box = el('input', { type: 'checkbox', id: `sub-tr-${tr}`, value: tr });
      box.checked = sub ? sub.transitions.includes(tr) : tr !== 'deescalated';
      return box;
    });
    controls.secret = el('input', { type: 'password', autocomplete: 'new-password', maxlength: '200' });
    const error = el('div', { 'aria-live': 'assertive' });
    const form = el('form', {},
      el('h3', { text: sub ? t('subs.editing', { id: sub.subscription_id }) : t('subs.new') }),
      el('div', { class: 'grid-form' },
        field(t('subs.subscriber'), controls.subscriber), field(t('subs.channel'), controls.notify_type),
        field(t('subs.target'), controls.notify_id),
        ...SCOPE.map((k) => field(t(`scope.${k}`), controls[k])),
        field(t('alerts.metric'), controls.threshold_type), field(t('subs.minLevel'), controls.min_level),
        field(t('subs.secret'), controls.secret)),
      el('fieldset', {}, el('legend', { text: t('subs.transitions') }),
        controls.transitions.map((box) => el('label', { class: 'check', for: box.id }, box, t(`tr.${box.value}`)))),
      el('label', { class: 'check', for: 'sub-enabled' }, controls.enabled, t('subs.enabled')),
      el('label', { class: 'check', for: 'sub-silent' }, controls.include_silent, t('subs.includeSilent')),
      error,
      el('div', { class: 'actions' }, el('button', { type: 'submit', class: 'button primary', text: t('save') }),
        sub ? el('button', { type: 'button', class: 'button', text: t('cancel'), onclick: () => buildForm(null) }) : null));
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const body = {
        subscriber: controls.subscriber.value.trim(), notify_type: controls.notify_type.value,
        notify_id: controls.notify_id.value.trim(), threshold_type: controls.threshold_type.value || null,
        min_level: controls.min_level.value, enabled: controls.enabled.checked,
        include_silent: controls.include_silent.checked,
        transitions: controls.transitions.filter((b) => b.checked).map((b) => b.value),
      };
      for (const k of SCOPE) {
        const v = controls[k].value.trim();
        body[k] = v === '' ? null : (k === 'floor' ? Number(v) : v);
      }
      if (controls.secret.value) body.secret = controls.secret.value;
      try {
        if (editing) await api(`/api/v1/subscriptions/${editing.subscription_id}`, { method: 'PUT', body });
        else await api('/api/v1/subscriptions/', { method: 'POST', body });
        fill(status, message('ok', t('th.saved')));
        buildForm(null);
        load();
      } catch (err) {
        fill(error, message('error', errorText(err)));
      }
    });
    fill(formBox, form);
  };

  const load = async () => {
    if (!token()) {
      fill(list, el('p', { text: t('subs.login') }),
        el('button', { type: 'button', class: 'button', text: t('login'), onclick: () => askLogin() }));
      fill(formBox);
      return;
    }
    try {
      const rows = await apiAll('/api/v1/subscriptions/', { key: 'subscription_id' });
      const body = el('tbody');
      for (const s of rows) {
        const toggle = el('button', { type: 'button', class: 'button', text: s.enabled ? t('subs.disable') : t('subs.enable') });
        toggle.addEventListener('click', () => run(api(`/api/v1/subscriptions/${s.subscription_id}/${s.enabled ? 'disable' : 'enable'}`, { method: 'POST' })));
        const edit = el('button', { type: 'button', class: 'button', text: t('edit'), onclick: () => { buildForm(s); formBox.querySelector('input').focus(); } });
        const remove = el('button', { type: 'button', class: 'button danger', text: t('delete') });
        remove.addEventListener('click', () => {
          if (window.confirm(`${t('delete')} #${s.subscription_id}?`)) run(api(`/api/v1/subscriptions/${s.subscription_id}`, { method: 'DELETE' }));
        });
        body.append(el('tr', { dataset: { subscription: String(s.subscription_id) } },
          el('td', { text: s.subscription_id }), el('td', { text: s.subscriber }), el('td', { text: s.notify_type }),
          el('td', { text: s.notify_id }), el('td', { text: scopeText(s) }),
          el('td', { text: s.threshold_type ? t(`metric.${s.threshold_type}`) : t('metric.any') }),
          el('td', { text: t(`level.${s.min_level}`) }),
          el('td', { text: s.enabled ? t('alerts.yes') : t('alerts.no') }),
          el('td', {}, el('div', { class: 'actions' }, edit, toggle, remove))));
      }
      const head = ['#', t('subs.subscriber'), t('subs.channel'), t('subs.target'), t('subs.scope'), t('alerts.metric'),
        t('subs.minLevel'), t('subs.enabled'), t('alerts.actions')];
      fill(list, rows.length
        ? el('table', {}, el('thead', {}, el('tr', {}, head.map((h) => el('th', { scope: 'col', text: h })))), body)
        : el('p', { class: 'empty', text: t('subs.none') }));
      if (!formBox.firstChild) buildForm(null);
    } catch (err) {
      fill(list, message('error', errorText(err)));
    }
  };

  const run = async (request) => {
    try {
      await request;
      fill(status, message('ok', t('th.saved')));
    } catch (err) {
      fill(status, message('error', errorText(err)));
    }
    load();
  };

  fill(section, el('h2', { id: 'subs-h', text: t('subs.title') }), status, list, formBox);
  load();
  const onToken = () => load();
  window.addEventListener('iotmon:token', onToken);
  return () => window.removeEventListener('iotmon:token', onToken);
}

// One table of alerts (the console's active list and history, a location's history).
import { t } from './i18n.js';
import { el } from './dom.js';
import { dateTime } from './time.js';
import { store, tzOf } from './store.js';

export function metricName(alert) {
  const metric = alert.alert_type !== undefined ? alert.alert_type : alert.metric;
  if (alert.kind === 'sensor_silent') return t('alerts.silent');
  return metric ? t(`metric.${metric}`) : '–';
}

export function placeName(locId) {
  const loc = store.locations.get(locId);
  if (!loc) return locId;
  const floor = loc.floor !== null && loc.floor !== undefined ? t('board.floorName', { floor: loc.floor }) : null;
  return [loc.factory, loc.building, floor, loc.name].filter(Boolean).join(' › ');
}

function who(name, hiddenAnon) {
  if (name) return name;
  return hiddenAnon ? t('alerts.hidden') : '–';
}

/**
 * rows: alerts as the API answers them.  options.withLocation adds the location column;
 * options.actions(row) returns the cells' buttons; options.state shows state columns.
 */
export function alertTable(rows, { withLocation = true, actions = null, state = true, anonymous = false } = {}) {
  const head = [t('alerts.severity')];
  if (withLocation) head.push(t('alerts.location'));
  head.push(t('alerts.metric'), t('alerts.value'), t('alerts.since'));
  if (state) head.push(t('alerts.state'));
  head.push(t('alerts.ackBy'));
  if (state) head.push(t('alerts.resolvedBy'));
  if (actions) head.push(t('alerts.actions'));
  const body = el('tbody');
  for (const a of rows) {
    const tz = tzOf(a.loc_id);
    const level = a.alert_level;
    const cells = [el('td', {}, el('span', { class: `level level-${level}`, text: t(`level.${level}`) }))];
    if (withLocation) {
      cells.push(el('td', {}, el('a', { href: `#/location/${encodeURIComponent(a.loc_id)}`, text: placeName(a.loc_id) })));
    }
    cells.push(
      el('td', { text: metricName(a) }),
      el('td', { class: 'num', text: a.measured_value ?? '–' }),
      el('td', {}, el('time', { datetime: a.alert_time, text: dateTime(a.alert_time, tz) })),
    );
    if (state) {
      cells.push(el('td', {
        text: a.state === 'active' ? t('alerts.stateActive')
          : `${t('alerts.stateResolved')} ${a.resolved_at ? dateTime(a.resolved_at, tz) : ''}`,
      }));
    }
    const acked = a.acknowledged_at
      ? `${who(a.acknowledged_by, anonymous)} · ${dateTime(a.acknowledged_at, tz)}`
      : '–';
    cells.push(el('td', { class: 'ack', text: acked }));
    if (state) cells.push(el('td', { text: a.resolved_at ? who(a.resolved_by, anonymous) : '–' }));
    if (actions) cells.push(el('td', {}, el('div', { class: 'actions' }, actions(a))));
    body.append(el('tr', { class: `row-${level}`, dataset: { alert: a.alert_id } }, cells));
  }
  return el('table', {}, el('thead', {}, el('tr', {}, head.map((h) => el('th', { scope: 'col', text: h })))), body);
}

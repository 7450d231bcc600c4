// A location: its current values (live), hourly max/avg charts of the three measures for a
// range in the factory's time zone, threshold bands on the perceived temperature, the open
// hour marked provisional, and the location's alert history.
import { api, apiAll, errorText, query, token } from './api.js';
import { t } from './i18n.js';
import { el, fill, message } from './dom.js';
import {
  addDays, daysBetween, isoDate, parseIsoDate, partsIn, today, ymd,
} from './time.js';
import { on, store } from './store.js';
import { Tile } from './board.js';
import { alertTable } from './alert-table.js';

const METRICS = [
  ['pcv_temperature', '°C', '#b3261e', '#e8710a'],
  ['temperature', '°C', '#0b57d0', '#4f8fe8'],
  ['humidity', '%', '#14706b', '#34a39b'],
];
const BAND_COLOURS = {
  normal: 'rgba(27, 110, 47, 0.12)',
  warning: 'rgba(232, 170, 0, 0.22)',
  critical: 'rgba(179, 38, 30, 0.18)',
};
const LEVEL_STATUS = {
  green: 'normal', low: 'normal', info: 'normal', yellow: 'warning', high: 'warning',
  medium: 'warning', warning: 'warning', orange: 'critical', red: 'critical', critical: 'critical',
};

/** Threshold bands drawn behind the lines, from the y scale's pixels (Chart.js plugin). */
const bandsPlugin = {
  id: 'iotmonBands',
  beforeDatasetsDraw(chart, _args, options) {
    const bands = (options && options.bands) || [];
    const { ctx, chartArea, scales } = chart;
    if (!bands.length || !chartArea || !scales.y) return;
    const { left, right, top, bottom } = chartArea;
    ctx.save();
    for (const band of bands) {
      const y1 = band.max === null ? top : Math.max(top, scales.y.getPixelForValue(band.max));
      const y2 = band.min === null ? bottom : Math.min(bottom, scales.y.getPixelForValue(band.min));
      if (y2 <= y1) continue;
      ctx.fillStyle = BAND_COLOURS[band.status] || BAND_COLOURS.normal;
      ctx.fillRect(left, y1, right - left, y2 - y1);
      ctx.fillStyle = '#333';
      ctx.font = '11px system-ui, sans-serif';
      ctx.textAlign = 'right';
      ctx.fillText(band.level, right - 4, Math.max(y1 + 12, top + 12));
    }
    ctx.restore();
  },
};

function appliesTo(band, loc) {
  return (band.factory === null || band.factory === loc.factory)
    && (band.building === null || band.building === loc.building)
    && (band.floor === null || band.floor === loc.floor)
    && (band.loc_id === null || band.loc_id === loc.loc_id);
}

function rangeOf(kind, params, tz) {
  const end = today(tz);
  if (kind === 'week') return [addDays(end, -6), end];
  if (kind === 'month') return [addDays(end, -29), end];
  if (kind === 'custom') {
    const from = parseIsoDate(params.get('from'));
    const to = parseIsoDate(params.get('to'));
    if (from && to) return [from, to];
    return [addDays(end, -6), end];
  }
  return [end, end];
}

/** Every local hour of the range up to now: [{key: 'yyyyMMddHH', label}] */
function hoursOf(start, end, tz) {
  const now = partsIn(Date.now(), tz);
  const nowKey = `${ymd(now)}${String(now.h).padStart(2, '0')}`;
  const oneDay = daysBetween(start, end) === 0;
  const hours = [];
  for (let day = start; daysBetween(day, end) >= 0; day = addDays(day, 1)) {
    for (let h = 0; h < 24; h += 1) {
      const hh = String(h).padStart(2, '0');
      const key = `${ymd(day)}${hh}`;
      if (key > nowKey) return hours;
      const md = `${String(day.m).padStart(2, '0')}-${String(day.d).padStart(2, '0')}`;
      hours.push({ key, label: oneDay ? `${hh}:00` : `${md} ${hh}:00` });
    }
  }
  return hours;
}

/** "31–32.9", "≥ 33" or "≤ 10" (a band open on one side). */
function bandRange(b) {
  if (b.min !== null && b.max !== null) return `${b.min}–${b.max}`;
  if (b.min !== null) return `≥ ${b.min}`;
  return b.max !== null ? `≤ ${b.max}` : '';
}

function chartFor(canvas, metric, unit, colours, hours, buckets, bands) {
  const points = (field) => hours.map((h) => {
    const b = buckets.get(h.key);
    const v = b ? b.metrics[`${metric}_${field}`] : null;
    return v === null || v === undefined ? null : Number(v);
  });
  const provisional = hours.map((h) => Boolean(buckets.get(h.key) && buckets.get(h.key).provisional));
  const max = points('max');
  const avg = points('avg');
  const values = [...max, ...avg].filter((v) => v !== null);
  let low = values.length ? Math.min(...values) : 0;
  let high = values.length ? Math.max(...values) : 1;
  for (const band of bands) {
    for (const edge of [band.min, band.max]) {
      if (edge !== null && edge >= low - 4 && edge <= high + 4) {
        low = Math.min(low, edge);
        high = Math.max(high, edge);
      }
    }
  }
  const dataset = (label, data, colour, dash) => ({
    label,
    data,
    borderColor: colour,
    backgroundColor: colour,
    borderDash: dash,
    borderWidth: 2,
    spanGaps: false,
    pointRadius: data.map((_, i) => (provisional[i] ? 6 : (hours.length > 48 ? 0 : 2))),
    pointStyle: data.map((_, i) => (provisional[i] ? 'triangle' : 'circle')),
    pointBackgroundColor: data.map((_, i) => (provisional[i] ? '#fff' : colour)),
    segment: { borderDash: (ctx) => (provisional[ctx.p1DataIndex] ? [4, 4] : dash) },
  });
  // eslint-disable-next-line no-undef
  return new Chart(canvas, {
    type: 'line',
    data: {
      labels: hours.map((h) => h.label),
      datasets: [
        dataset(t('loc.max'), max, colours[0], []),
        dataset(t('loc.avg'), avg, colours[1], [6, 3]),
      ],
    },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      interaction: { mode: 'index', intersect: false },
      scales: {
        x: { ticks: { autoSkip: true, maxTicksLimit: 12, maxRotation: 0 } },
        y: {
          suggestedMin: Math.floor(low - 1), suggestedMax: Math.ceil(high + 1),
          title: { display: true, text: unit },
        },
      },
      plugins: {
        legend: { position: 'bottom', labels: { boxWidth: 28, boxHeight: 3 } },
        tooltip: {
          callbacks: {
            footer: (items) => (items.length && provisional[items[0].dataIndex] ? t('loc.provisionalLegend') : ''),
          },
        },
        iotmonBands: { bands },
      },
    },
    plugins: [bandsPlugin],
  });
}

export function renderLocation(main, args, params) {
  const locId = args[0] || '';
  const loc = store.locations.get(locId);
  const back = el('a', { href: '#/board', text: `← ${t('loc.back')}` });
  if (!loc) {
    fill(main, back, el('h1', { text: t('loc.title', { id: locId }) }), message('error', t('loc.unknown')));
    return null;
  }
  const tz = loc.tz;
  const kind = ['day', 'week', 'month', 'custom'].includes(params.get('range')) ? params.get('range') : 'day';
  const [start, end] = rangeOf(kind, params, tz);
  const tile = new Tile(loc);
  const charts = [];
  const chartArea = el('div', { class: 'charts' });
  const status = el('div', { 'aria-live': 'polite' });
  const history = el('div', { class: 'table-wrap' });

  // The range picker: radio buttons, dates for a custom range.
  const form = el('form', { class: 'range' });
  const radios = el('fieldset', {}, el('legend', { text: t('loc.range') }));
  for (const k of ['day', 'week', 'month', 'custom']) {
    const input = el('input', { type: 'radio', name: 'range', value: k, id: `range-${k}` });
    input.checked = k === kind;
    radios.append(el('label', { class: 'check', for: `range-${k}` }, input, t(`loc.${k}`)));
  }
  const from = el('input', { type: 'date', id: 'range-from', value: isoDate(start) });
  const to = el('input', { type: 'date', id: 'range-to', value: isoDate(end) });
  const dates = el('div', { class: 'range' },
    el('div', { class: 'field' }, el('label', { for: 'range-from', text: t('loc.from') }), from),
    el('div', { class: 'field' }, el('label', { for: 'range-to', text: t('loc.to') }), to));
  dates.hidden = kind !== 'custom';
  form.append(radios, dates, el('button', { type: 'submit', class: 'button primary', text: t('loc.show') }));
  form.addEventListener('change', (event) => {
    if (event.target.name === 'range') dates.hidden = event.target.value !== 'custom';
  });
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const picked = form.querySelector('input[name=range]:checked').value;
    const q = new URLSearchParams({ range: picked });
    if (picked === 'custom') { q.set('from', from.value); q.set('to', to.value); }
    window.location.hash = `#/location/${encodeURIComponent(locId)}?${q}`;
  });

  const place = [loc.factory, loc.building, loc.floor !== null ? t('board.floorName', { floor: loc.floor }) : null, loc.area]
    .filter((p) => p !== null && p !== undefined && p !== '').join(' › ');
  fill(main, back,
    el('h1', { text: `${loc.name} (${loc.loc_id})` }),
    el('p', { class: 'note' }, place, ' · ', t('loc.tz', { tz })),
    el('section', { 'aria-labelledby': 'now-h' }, el('h2', { id: 'now-h', text: t('loc.current') }),
      el('div', { class: 'current' }, tile.node)),
    form, status, chartArea,
    el('section', { 'aria-labelledby': 'hist-h' }, el('h2', { id: 'hist-h', text: t('loc.history') }), history));

  const controller = new AbortController();
  const load = async () => {
    fill(status, el('p', { class: 'loading', text: t('loading') }));
    let agg;
    let bands = [];
    try {
      [agg, bands] = await Promise.all([
        api(`/api/v1/aggregation/pcv_temperature/location/${encodeURIComponent(locId)}${query({
          start_date: ymd(start), end_date: ymd(end),
        })}`, { signal: controller.signal }),
        apiAll('/api/v1/thresholds/', { key: 'threshold_id', signal: controller.signal }),
      ]);
    } catch (err) {
      if (err.name === 'AbortError') return;
      fill(status, message('error', `${t('error.load')}: ${errorText(err)}`));
      return;
    }
    const series = agg.locations[0];
    const buckets = new Map();
    for (const b of series ? series.date : []) buckets.set(`${b.ymd}${b.hour}`, b);
    const hours = hoursOf(start, end, tz);
    const open = hours.filter((h) => buckets.get(h.key) && buckets.get(h.key).provisional);
    const notes = [];
    if (!buckets.size) notes.push(message('info', t('loc.nodata')));
    if (open.length) {
      notes.push(el('p', { class: 'note provisional', text: t('loc.provisional', { time: open.map((h) => h.label).join(', ') }) }));
    }
    fill(status, notes);
    const chartLib = typeof window.Chart === 'function';
    if (!chartLib) fill(status, message('error', t('loc.nocharts')));
    for (const [metric, unit, ...colours] of METRICS) {
      const metricBands = metric === 'pcv_temperature'
        ? bands.filter((b) => b.threshold_type === metric && appliesTo(b, loc)).map((b) => ({
          level: b.level, status: LEVEL_STATUS[b.level] || 'normal',
          min: b.min_value === null ? null : Number(b.min_value),
          max: b.max_value === null ? null : Number(b.max_value),
        }))
        : [];
      const title = t('loc.hourly', { metric: t(`metric.${metric}`) });
      const canvas = el('canvas', { role: 'img', 'aria-label': `${title}: ${isoDate(start)} – ${isoDate(end)}` });
      const box = el('section', { class: 'chart', dataset: { metric } },
        el('h2', { text: title }), el('div', { class: 'chart-box' }, canvas));
      if (metricBands.length) {
        box.append(el('p', { class: 'note bands' }, `${t('loc.bands')}: `, metricBands.map((b) => `${b.level} ${bandRange(b)}`).join(', ')));
      }
      chartArea.append(box);
      if (chartLib) charts.push(chartFor(canvas, metric, unit, colours, hours, buckets, metricBands));
    }
    main.dataset.charts = String(charts.length);
  };
  const loadHistory = async () => {
    try {
      const newest = 100;
      const rows = await api(`/api/v1/alerts/?loc_id=${encodeURIComponent(locId)}&limit=${newest}`, { signal: controller.signal });
      fill(history, rows.length ? alertTable(rows, { withLocation: false, anonymous: !token() }) : el('p', { class: 'empty', text: t('loc.noalerts') }),
        rows.length >= newest ? el('p', { class: 'note' }, el('a', {
          href: `#/alerts?loc_id=${encodeURIComponent(locId)}`, text: t('loc.historyCut', { n: newest }),
        })) : null);
    } catch (err) {
      if (err.name !== 'AbortError') fill(history, message('error', errorText(err)));
    }
  };
  load();
  loadHistory();
  let historyTimer = 0;
  const offs = [
    on('readings', (ids) => { if (ids.has(locId)) tile.update(); }),
    on('tick', (locs) => { if (locs.has(locId)) tile.update(); }),
    on('alerts', ({ locs, event }) => {
      if (!locs.has(locId)) return;
      tile.update();
      if (event) {
        // A burst of events asks for the history once (the sink writes a moment later).
        clearTimeout(historyTimer);
        historyTimer = setTimeout(loadHistory, 1500);
      }
    }),
  ];
  return () => {
    controller.abort();
    clearTimeout(historyTimer);
    for (const off of offs) off();
    for (const chart of charts) chart.destroy();
  };
}


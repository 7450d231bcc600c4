// The plant board: factories, buildings, floors; one tile per location, coloured by its
// status and updated live.  Tiles are built once and then changed in place, so that a
// reading repaints one tile, not a thousand.
import { t } from './i18n.js';
import { el, fill, select } from './dom.js';
import { clock } from './time.js';
import {
  alertsAt, locationStatus, newestReading, on, store,
} from './store.js';

export const STATUSES = ['critical', 'warning', 'normal', 'none', 'stale'];
const METRICS = [
  ['temperature', '°C'], ['humidity', '%'], ['pcv_temperature', '°C'],
];

const byText = (a, b) => String(a ?? '').localeCompare(String(b ?? ''), undefined, { numeric: true });

function sortedLocations() {
  return [...store.locations.values()].sort((a, b) => byText(a.factory, b.factory)
    || byText(a.building, b.building) || (a.floor ?? 0) - (b.floor ?? 0)
    || byText(a.loc_id, b.loc_id));
}

function valueText(metric) {
  return metric && metric.value !== null && metric.value !== undefined ? metric.value : '–';
}

export class Tile {
  constructor(loc) {
    this.loc = loc;
    this.status = null;
    this.values = {};
    this.node = el('a', {
      class: 'tile', href: `#/location/${encodeURIComponent(loc.loc_id)}`,
      dataset: { loc: loc.loc_id },
    });
    this.name = el('span', { class: 'tile-name', text: loc.name });
    this.badge = el('span', { class: 'tile-alert', hidden: true });
    this.statusText = el('span', { class: 'tile-status' });
    const list = el('dl', { class: 'tile-values' });
    for (const [metric, unit] of METRICS) {
      const dd = el('dd', { dataset: { metric } });
      this.values[metric] = { dd, unit };
      list.append(el('div', {}, el('dt', { text: t(`metric.${metric}`) }), dd));
    }
    this.time = el('span', { class: 'tile-time' });
    this.node.append(
      el('span', { class: 'tile-head' }, this.name, el('span', { class: 'tile-id', text: loc.loc_id })),
      this.badge, list, el('span', { class: 'tile-foot' }, this.statusText, this.time),
    );
    this.update();
  }

  update() {
    const status = locationStatus(this.loc);
    const reading = newestReading(this.loc);
    if (status !== this.status) {
      this.node.classList.remove(`st-${this.status}`);
      this.node.classList.add(`st-${status}`);
      this.node.dataset.status = status;
      this.status = status;
    }
    this.statusText.textContent = reading ? t(`status.${status}`) : t('board.nodata');
    for (const [metric, { dd, unit }] of Object.entries(this.values)) {
      const text = reading ? valueText(reading.metrics[metric]) : '–';
      dd.textContent = text === '–' ? text : `${text} ${unit}`;
      const s = reading && reading.metrics[metric] ? reading.metrics[metric].status : null;
      dd.className = s ? `m-${s}` : '';
    }
    this.time.textContent = reading ? clock(reading.capture, this.loc.tz) : '';
    const alerts = alertsAt(this.loc.loc_id);
    if (alerts.length) {
      this.badge.hidden = false;
      this.badge.className = `tile-alert a-${alerts[0].level}`;
      this.badge.textContent = `⚠ ${t(`level.${alerts[0].level}`)}${alerts.length > 1 ? ` ×${alerts.length}` : ''}`;
      this.node.classList.add('has-alert');
    } else {
      this.badge.hidden = true;
      this.badge.textContent = '';
      this.node.classList.remove('has-alert');
    }
    const parts = [this.loc.name, this.loc.loc_id, this.statusText.textContent];
    for (const [metric, { dd }] of Object.entries(this.values)) parts.push(`${t(`metric.${metric}`)} ${dd.textContent}`);
    if (alerts.length) parts.push(t('board.alerts', { n: alerts.length }));
    this.node.setAttribute('aria-label', parts.join(', '));
  }
}

export function renderBoard(main, _args, params) {
  const filters = {
    factory: params.get('factory') || '', building: params.get('building') || '', floor: params.get('floor') || '',
  };
  const tiles = new Map();
  const counts = {};
  const countList = el('ul', { class: 'counts', 'aria-label': t('board.counts') });
  for (const s of [...STATUSES, 'alerts']) {
    const n = el('strong', { text: '0' });
    counts[s] = n;
    countList.append(el('li', { class: `count c-${s}`, dataset: { status: s } },
      el('span', { class: 'swatch', 'aria-hidden': 'true' }),
      el('span', { text: s === 'alerts' ? t('board.activeAlerts') : t(`status.${s}`) }), n));
  }
  const filterBox = el('form', { class: 'filters', 'aria-label': t('board.filters') });
  const plant = el('div', { class: 'plant' });
  const empty = el('p', { class: 'empty', text: t('board.empty'), hidden: true });
  fill(main, el('div', { class: 'view-head' }, el('h1', { text: t('board.title') }), countList), filterBox, empty, plant);

  function pickers() {
    const locs = [...store.locations.values()];
    const distinct = (key, where) => [...new Set(locs.filter(where).map((l) => l[key]))]
      .filter((v) => v !== null && v !== undefined).sort(byText);
    const any = [['', t('board.all')]];
    const factory = select([...any, ...distinct('factory', () => true).map((f) => [f, f])], filters.factory, { id: 'f-factory' });
    const building = select([...any, ...distinct('building', (l) => !filters.factory || l.factory === filters.factory)
      .map((b) => [b, b])], filters.building, { id: 'f-building' });
    const floor = select([...any, ...distinct('floor', (l) => (!filters.factory || l.factory === filters.factory)
      && (!filters.building || l.building === filters.building)).map((f) => [f, t('board.floorName', { floor: f })])],
    filters.floor, { id: 'f-floor' });
    const onChange = (key, node) => node.addEventListener('change', () => {
      filters[key] = node.value;
      if (key === 'factory') { filters.building = ''; filters.floor = ''; }
      if (key === 'building') filters.floor = '';
      const q = new URLSearchParams(Object.entries(filters).filter(([, v]) => v));
      window.history.replaceState(null, '', `#/board${q.toString() ? `?${q}` : ''}`);
      pickers();
      applyFilters();
      document.getElementById(`f-${key}`).focus();
    });
    onChange('factory', factory);
    onChange('building', building);
    onChange('floor', floor);
    fill(filterBox,
      el('div', { class: 'field' }, el('label', { for: 'f-factory', text: t('board.factory') }), factory),
      el('div', { class: 'field' }, el('label', { for: 'f-building', text: t('board.building') }), building),
      el('div', { class: 'field' }, el('label', { for: 'f-floor', text: t('board.floor') }), floor));
  }

  function build() {
    tiles.clear();
    const tree = new Map();
    for (const loc of sortedLocations()) {
      const f = tree.get(loc.factory) || new Map();
      tree.set(loc.factory, f);
      const b = f.get(loc.building ?? '') || new Map();
      f.set(loc.building ?? '', b);
      const floorKey = loc.floor ?? '';
      if (!b.has(floorKey)) b.set(floorKey, []);
      b.get(floorKey).push(loc);
    }
    const sections = [];
    for (const [factory, buildings] of tree) {
      const fs = el('section', { class: 'factory', dataset: { factory } }, el('h2', { text: factory }));
      for (const [building, floors] of buildings) {
        const bs = el('section', { class: 'building', dataset: { building } }, el('h3', { text: building || '—' }));
        for (const [floor, locs] of floors) {
          const grid = el('div', { class: 'tiles' });
          for (const loc of locs) {
            const tile = new Tile(loc);
            tiles.set(loc.loc_id, tile);
            grid.append(tile.node);
          }
          bs.append(el('section', { class: 'floor', dataset: { floor: String(floor) } },
            el('h4', { text: floor === '' ? '—' : t('board.floorName', { floor }) }), grid));
        }
        fs.append(bs);
      }
      sections.push(fs);
    }
    fill(plant, sections);
    applyFilters();
  }

  function visible(loc) {
    return (!filters.factory || loc.factory === filters.factory)
      && (!filters.building || (loc.building ?? '') === filters.building)
      && (!filters.floor || String(loc.floor) === filters.floor);
  }

  function applyFilters() {
    for (const section of plant.querySelectorAll('section')) section.hidden = true;
    let shown = 0;
    for (const tile of tiles.values()) {
      const show = visible(tile.loc);
      tile.node.hidden = !show;
      if (show) {
        shown += 1;
        for (let s = tile.node.closest('section'); s; s = s.parentElement.closest('section')) s.hidden = false;
      }
    }
    empty.hidden = shown > 0;
    count();
  }

  function count() {
    const n = Object.fromEntries([...STATUSES, 'alerts'].map((s) => [s, 0]));
    for (const tile of tiles.values()) {
      if (tile.node.hidden) continue;
      n[tile.status] += 1;
    }
    // Unfiltered, every active alert counts, also one at a location not on the board.
    const filtered = filters.factory || filters.building || filters.floor;
    if (!filtered) n.alerts = store.alerts.size;
    else {
      for (const a of store.alerts.values()) {
        const loc = store.locations.get(a.loc_id);
        if (loc && visible(loc)) n.alerts += 1;
      }
    }
    for (const [s, node] of Object.entries(counts)) node.textContent = String(n[s]);
  }

  // Live updates: changed tiles are repainted once per animation frame.
  const dirty = new Set();
  let frame = 0;
  const schedule = (ids) => {
    for (const id of ids) dirty.add(id);
    if (!frame) {
      frame = requestAnimationFrame(() => {
        frame = 0;
        for (const id of dirty) if (tiles.has(id)) tiles.get(id).update();
        dirty.clear();
        count();
      });
    }
  };
  pickers();
  build();
  let relayout = 0;
  const offs = [
    on('readings', (ids) => schedule(ids)),
    on('alerts', ({ locs }) => schedule(locs)),
    on('tick', (locs) => schedule(locs)),
    // Locations arriving one after another are laid out once.
    on('locations', () => {
      clearTimeout(relayout);
      relayout = setTimeout(() => { pickers(); build(); }, 300);
    }),
  ];
  main.dataset.rendered = String(performance.now());
  performance.mark('board-rendered');
  return () => {
    for (const off of offs) off();
    if (frame) cancelAnimationFrame(frame);
    clearTimeout(relayout);
  };
}

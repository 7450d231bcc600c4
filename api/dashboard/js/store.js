// What every view shares: the locations, each sensor's newest measurement and the active
// alerts, kept current by the two live streams of the API.  Views subscribe with on().
import { api, setOpenReads } from './api.js';
import { EventStream } from './sse.js';

const LEVELS = { critical: 3, warning: 2, normal: 1 };
export const DEFAULT_TZ = 'Asia/Seoul';

export const store = {
  config: { stale_after_s: 300, charts: false, open_reads: true },
  locations: new Map(), // loc_id -> {loc_id, plant, factory, building, floor, area, name, tz, sensors}
  readings: new Map(), // sensor_id -> {sensor_id, loc_id, metrics, capture, age_s, seen}
  alerts: new Map(), // alert_id -> active alert (see normalAlert)
  resolved: new Set(), // alert ids resolved by an event (a list fetched earlier is older)
  live: { realtime: 'connecting', alerts: 'connecting' },
};

const listeners = new Map();

export function on(name, fn) {
  if (!listeners.has(name)) listeners.set(name, new Set());
  listeners.get(name).add(fn);
  return () => listeners.get(name).delete(fn);
}

function emit(name, detail) {
  for (const fn of listeners.get(name) || []) fn(detail);
}

/** A failed background load: shown as a notice by the page (never swallowed). */
export function reportError(err) {
  emit('notice', err);
}

export function tzOf(locId) {
  const loc = store.locations.get(locId);
  return (loc && loc.tz) || DEFAULT_TZ;
}

export async function loadConfig() {
  try {
    Object.assign(store.config, await api('/dashboard/config.json'));
  } catch {
    // defaults
  }
  setOpenReads(store.config.open_reads);
}

export async function loadLocations() {
  const found = new Map();
  for (let skip = 0; ; skip += 1000) {
    // eslint-disable-next-line no-await-in-loop
    const rows = await api(`/api/v1/location/?limit=1000&skip=${skip}`);
    for (const r of rows) {
      if (!r.is_active) continue;
      let loc = found.get(r.loc_id);
      if (!loc) {
        loc = {
          loc_id: r.loc_id, plant: r.plant, factory: r.factory, building: r.building,
          floor: r.floor, area: r.area, name: r.location_name || r.area || r.loc_id,
          tz: r.timezone || DEFAULT_TZ, sensors: [],
        };
        found.set(r.loc_id, loc);
      }
      loc.sensors.push(r.sensor_id);
    }
    if (rows.length < 1000) break;
  }
  store.locations = found;
  emit('locations');
}

/** Apply one measurement (a /realtime entry or a stream event); the newer one wins. */
function applyMeasurement(m) {
  const capture = Date.parse(m.capture_dt);
  const held = store.readings.get(m.sensor_id);
  if (held && held.capture > capture) return null;
  const locId = m.location && m.location.loc_id;
  store.readings.set(m.sensor_id, {
    sensor_id: m.sensor_id, loc_id: locId, metrics: m.metrics, capture,
    age_s: m.age_seconds, seen: performance.now(),
  });
  if (locId && !store.locations.has(locId) && m.location.factory) {
    store.locations.set(locId, {
      loc_id: locId, factory: m.location.factory, building: m.location.building,
      floor: m.location.floor, area: m.location.area, name: m.location.area || locId,
      tz: DEFAULT_TZ, sensors: [m.sensor_id],
    });
    emit('locations');
  }
  return locId;
}

export async function loadRealtime() {
  const body = await api('/api/v1/realtime/');
  const changed = new Set();
  for (const m of body.measurements) changed.add(applyMeasurement(m));
  emit('readings', changed);
}

export function normalAlert(a) {
  return {
    alert_id: a.alert_id, loc_id: a.loc_id, sensor_id: a.sensor_id, kind: a.kind,
    level: a.alert_level || a.level, metric: a.alert_type !== undefined ? a.alert_type : a.metric,
    value: a.measured_value, since: a.alert_time || a.decided_at,
    acknowledged_by: a.acknowledged_by || null, acknowledged_at: a.acknowledged_at || null,
    message: a.message, factory: a.factory,
  };
}

export async function loadActiveAlerts() {
  const started = performance.now();
  const rows = await api('/api/v1/alerts/?state=active&limit=1000');
  const next = new Map();
  for (const a of rows) if (!store.resolved.has(a.alert_id)) next.set(a.alert_id, normalAlert(a));
  // Raised by an event after this list was asked for: the sink may not have written it yet.
  for (const [id, a] of store.alerts) if (!next.has(id) && a.eventAt > started) next.set(id, a);
  store.alerts = next;
  emit('alerts');
}

/** Forget an alert that someone resolved here (the list changes at once). */
export function dropAlert(alertId) {
  store.alerts.delete(alertId);
  store.resolved.add(alertId);
  emit('alerts');
}

export function updateAlert(row) {
  if (row.state === 'resolved') {
    dropAlert(row.alert_id);
    return;
  }
  store.alerts.set(row.alert_id, normalAlert(row));
  emit('alerts');
}

function applyAlertEvent(e) {
  if (e.transition === 'resolved') {
    store.alerts.delete(e.alert_id);
    store.resolved.add(e.alert_id);
  } else {
    const held = store.alerts.get(e.alert_id);
    const next = normalAlert(e);
    next.eventAt = performance.now();
    if (held) {
      next.since = held.since;
      next.acknowledged_by = held.acknowledged_by;
      next.acknowledged_at = held.acknowledged_at;
    }
    store.alerts.set(e.alert_id, next);
  }
  emit('alerts', e);
}

/** Whether a measurement is stale now (the API's own rule: older than stale_after_s). */
export function isStale(reading) {
  if (!reading) return true;
  const age = reading.age_s + (performance.now() - reading.seen) / 1000;
  return age > store.config.stale_after_s;
}

/**
 * A location's status: 'stale' (no measurement, or none recent), else the worst metric
 * status of its recent measurements ('critical', 'warning', 'normal'), or 'none' when no
 * metric has a threshold.
 */
export function locationStatus(loc) {
  const fresh = [];
  for (const id of loc.sensors) {
    const r = store.readings.get(id);
    if (r && !isStale(r)) fresh.push(r);
  }
  if (!fresh.length) return 'stale';
  let worst = 'none';
  for (const r of fresh) {
    for (const metric of Object.values(r.metrics)) {
      const s = metric.status;
      if (s && (worst === 'none' || LEVELS[s] > LEVELS[worst])) worst = s;
    }
  }
  return worst;
}

/** The newest measurement of a location (its values are shown). */
export function newestReading(loc) {
  let best = null;
  for (const id of loc.sensors) {
    const r = store.readings.get(id);
    if (r && (!best || r.capture > best.capture)) best = r;
  }
  return best;
}

export function alertsAt(locId) {
  const found = [];
  for (const a of store.alerts.values()) if (a.loc_id === locId) found.push(a);
  found.sort((a, b) => (LEVELS[b.level] || 0) - (LEVELS[a.level] || 0));
  return found;
}

export const levelRank = (level) => LEVELS[level] || 0;

let streams = null;

/** Open both live streams; resolves once both are open (or after 5 s). */
export function startLive() {
  if (streams) return Promise.resolve();
  let waiting = 2;
  let done;
  const opened = new Promise((resolve) => { done = resolve; setTimeout(resolve, 5000); });
  const once = () => {
    let called = false;
    return () => {
      if (!called) { called = true; waiting -= 1; if (waiting === 0) done(); }
    };
  };
  const realtimeReady = once();
  const alertsReady = once();
  const state = (name) => (s) => {
    store.live[name] = s;
    emit('live', store.live);
  };
  const realtime = new EventStream('/api/v1/stream/realtime', (type, data) => {
    if (type === 'ready') {
      realtimeReady();
      if (data && data.replay_cut) loadRealtime().catch(reportError);
    } else if (type === 'reading') {
      const locId = applyMeasurement(data);
      if (locId) emit('readings', new Set([locId]));
    }
  }, state('realtime'));
  const alerts = new EventStream('/api/v1/stream/alerts', (type, data) => {
    if (type === 'alert') applyAlertEvent(data);
    else if (type === 'ready') {
      alertsReady();
      if (data && data.replay_cut) loadActiveAlerts().catch(reportError);
    }
  }, state('alerts'));
  streams = [realtime, alerts];
  realtime.start();
  alerts.start();
  // Ages go on while nothing arrives: re-judge staleness every few seconds.
  setInterval(() => emit('tick'), 5000);
  return opened;
}

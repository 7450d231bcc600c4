// What every view shares: the locations, each sensor's newest measurement and the active
// alerts, kept current by the two live streams of the API.  Views subscribe with on().
import { api, apiAll, setOpenReads } from './api.js';
import { EventStream } from './sse.js';

const LEVELS = { critical: 3, warning: 2, normal: 1 };
export const DEFAULT_TZ = 'Asia/Seoul';

export const store = {
  config: { stale_after_s: 300, charts: false, open_reads: true },
  locations: new Map(), // loc_id -> {loc_id, plant, factory, building, floor, area, name, tz, sensors}
  readings: new Map(), // sensor_id -> {sensor_id, loc_id, metrics, capture, age_s, seen}
  alerts: new Map(), // alert_id -> active alert (see normalAlert)
  alertsByLoc: new Map(), // loc_id -> Map(alert_id -> active alert): what a tile asks for
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

/**
 * The zone of a scope ({loc_id, factory}, either may be empty): the location's, else the
 * factory's (its first location's), else the one zone all locations share; the default
 * zone when they do not share one.
 */
export function zoneOf({ loc_id: locId, factory } = {}) {
  const loc = locId ? store.locations.get(locId) : null;
  if (loc) return loc.tz;
  const zones = new Set();
  for (const l of store.locations.values()) {
    if (!factory || l.factory === factory) {
      if (factory) return l.tz;
      zones.add(l.tz);
    }
  }
  return zones.size === 1 ? [...zones][0] : DEFAULT_TZ;
}

export async function loadConfig() {
  try {
    Object.assign(store.config, await api('/dashboard/config.json'));
  } catch {
    // defaults
  }
  setOpenReads(store.config.open_reads);
}

// sensor_id -> loc_id of every sensor at an active location, as the API registered it.
const sensorLoc = new Map();
// Sensors the API says are not at an active location (or not registered): their readings
// are kept but not drawn, and the API is asked again after a while.
const ignored = new Map(); // sensor_id -> performance.now() of the answer
const ASK_AGAIN_MS = 60_000;
let placedAll = false; // the whole list of locations has been read once
const BATCH = 200; // the API's most ids in one /location/batch request
// The API's pattern of a sensor id: anything else cannot be asked about (and is not drawn).
const SENSOR_ID = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$/;
// sensor_id -> {loc, at}: the location the stream named when the API was last asked where
// the sensor is.  A stream that keeps naming another location than the API's (the two are
// updated apart) does not make the page ask again on every reading.
const asked = new Map();

function locationOf(r) {
  return {
    loc_id: r.loc_id, plant: r.plant, factory: r.factory, building: r.building,
    floor: r.floor, area: r.area, name: r.location_name || r.area || r.loc_id,
    tz: r.timezone || DEFAULT_TZ, sensors: [],
  };
}

/**
 * Take the API's rows for some sensors: each is (re)placed at its location, or ignored
 * when its location is inactive.  Returns the ids of the locations that changed and
 * whether a location was added (the board is then laid out again).
 */
function placeSensors(rows) {
  const changed = new Set();
  let added = false;
  for (const r of rows) {
    const before = sensorLoc.get(r.sensor_id);
    if (before !== undefined && (before !== r.loc_id || !r.is_active)) {
      const old = store.locations.get(before);
      if (old) {
        old.sensors = old.sensors.filter((id) => id !== r.sensor_id);
        changed.add(before);
        // Its last sensor moved away: the location leaves the board, as on a reload.
        if (!old.sensors.length) {
          store.locations.delete(before);
          added = true;
        }
      }
    }
    if (!r.is_active) {
      sensorLoc.delete(r.sensor_id);
      ignored.set(r.sensor_id, performance.now());
      continue;
    }
    ignored.delete(r.sensor_id);
    let loc = store.locations.get(r.loc_id);
    if (!loc) {
      loc = locationOf(r);
      store.locations.set(r.loc_id, loc);
      added = true;
    }
    if (!loc.sensors.includes(r.sensor_id)) loc.sensors.push(r.sensor_id);
    sensorLoc.set(r.sensor_id, r.loc_id);
    changed.add(r.loc_id);
  }
  return { changed, added }; // added: the set of locations changed (laid out again)
}

export async function loadLocations() {
  const rows = await apiAll('/api/v1/location/', { key: 'sensor_id' });
  store.locations = new Map();
  sensorLoc.clear();
  ignored.clear();
  placeSensors(rows);
  // Measurements that arrived first, of sensors the list does not place: not drawn.
  const now = performance.now();
  for (const id of store.readings.keys()) if (!sensorLoc.has(id)) ignored.set(id, now);
  placedAll = true;
  emit('locations');
}

// Sensors heard on the live stream that the page does not know where to draw (registered,
// moved or re-activated after the page loaded): looked up in batches, a moment later.
const unknown = new Set();
let lookupTimer = 0;

async function lookUpSensors() {
  lookupTimer = 0;
  const ids = [...unknown].slice(0, BATCH);
  for (const id of ids) unknown.delete(id);
  if (unknown.size) lookupTimer = setTimeout(lookUpSensors, 0);
  if (!ids.length) return;
  let rows;
  try {
    rows = await api(`/api/v1/location/batch/${ids.join(',')}`);
  } catch (err) {
    // Asked again after a while, not on every reading.
    const now = performance.now();
    for (const id of ids) ignored.set(id, now);
    reportError(err);
    return;
  }
  const answered = new Set(rows.map((r) => r.sensor_id));
  for (const id of ids) if (!answered.has(id)) ignored.set(id, performance.now());
  const { changed, added } = placeSensors(rows);
  if (added) emit('locations');
  if (changed.size) emit('readings', changed);
}

function lookUp(sensorId, streamLoc) {
  const now = performance.now();
  if (!SENSOR_ID.test(sensorId)) {
    ignored.set(sensorId, now);
    return;
  }
  const since = ignored.get(sensorId);
  if (since !== undefined && now - since < ASK_AGAIN_MS) return;
  const last = asked.get(sensorId);
  if (last && last.loc === streamLoc && now - last.at < ASK_AGAIN_MS) return;
  asked.set(sensorId, { loc: streamLoc, at: now });
  unknown.add(sensorId);
  if (!lookupTimer) lookupTimer = setTimeout(lookUpSensors, 250);
}

/**
 * Apply one measurement (a /realtime entry or a stream event); the newer one wins.
 * Returns the id of the location whose tile shows it, or null.
 */
function applyMeasurement(m) {
  const capture = Date.parse(m.capture_dt);
  const held = store.readings.get(m.sensor_id);
  if (held && held.capture > capture) return null;
  const locId = m.location ? m.location.loc_id : undefined;
  store.readings.set(m.sensor_id, {
    sensor_id: m.sensor_id, loc_id: locId, metrics: m.metrics, capture,
    age_s: m.age_seconds, seen: performance.now(),
  });
  const placed = sensorLoc.get(m.sensor_id);
  if (placed === undefined || (locId !== undefined && locId !== placed)) {
    if (placedAll) lookUp(m.sensor_id, locId); // before that, the list will place it
  }
  // Drawn where the API placed it (until a lookup says otherwise).
  return placed === undefined ? null : placed;
}

export async function loadRealtime() {
  const body = await api('/api/v1/realtime/');
  const changed = new Set();
  for (const m of body.measurements) {
    const locId = applyMeasurement(m);
    if (locId) changed.add(locId);
  }
  emit('readings', changed);
}

export function normalAlert(a) {
  return {
    alert_id: a.alert_id, loc_id: a.loc_id, sensor_id: a.sensor_id, kind: a.kind,
    level: a.alert_level || a.level, metric: a.alert_type !== undefined ? a.alert_type : a.metric,
    value: a.measured_value, since: a.alert_time || a.decided_at, reading: a.reading_time || null,
    acknowledged_by: a.acknowledged_by || null, acknowledged_at: a.acknowledged_at || null,
    message: a.message, factory: a.factory,
  };
}

// The active alerts are kept twice: by id, and by location for the tiles.  Every change
// goes through these two functions and names the locations it touched, so that a view
// repaints those and no other.
function putAlert(a, touched) {
  const held = store.alerts.get(a.alert_id);
  if (held && held.loc_id !== a.loc_id) removeAlert(a.alert_id, touched);
  store.alerts.set(a.alert_id, a);
  let at = store.alertsByLoc.get(a.loc_id);
  if (!at) {
    at = new Map();
    store.alertsByLoc.set(a.loc_id, at);
  }
  at.set(a.alert_id, a);
  touched.add(a.loc_id);
}

function removeAlert(alertId, touched) {
  const held = store.alerts.get(alertId);
  if (!held) return;
  store.alerts.delete(alertId);
  const at = store.alertsByLoc.get(held.loc_id);
  if (at) {
    at.delete(alertId);
    if (!at.size) store.alertsByLoc.delete(held.loc_id);
  }
  touched.add(held.loc_id);
}

export async function loadActiveAlerts() {
  const started = performance.now();
  const rows = await apiAll('/api/v1/alerts/?state=active', { key: 'alert_id' });
  const touched = new Set(store.alertsByLoc.keys());
  const keep = [];
  // Raised by an event after this list was asked for: the sink may not have written it yet.
  for (const a of store.alerts.values()) if (a.eventAt > started) keep.push(a);
  store.alerts = new Map();
  store.alertsByLoc = new Map();
  for (const r of rows) if (!store.resolved.has(r.alert_id)) putAlert(normalAlert(r), touched);
  for (const a of keep) if (!store.alerts.has(a.alert_id)) putAlert(a, touched);
  emit('alerts', { locs: touched });
}

/** Forget an alert that someone resolved here (the list changes at once). */
export function dropAlert(alertId) {
  const touched = new Set();
  removeAlert(alertId, touched);
  store.resolved.add(alertId);
  emit('alerts', { locs: touched });
}

export function updateAlert(row) {
  if (row.state === 'resolved') {
    dropAlert(row.alert_id);
    return;
  }
  const touched = new Set();
  putAlert(normalAlert(row), touched);
  emit('alerts', { locs: touched });
}

function applyAlertEvent(e) {
  const touched = new Set();
  if (e.transition === 'resolved') {
    removeAlert(e.alert_id, touched);
    store.resolved.add(e.alert_id);
    if (e.loc_id) touched.add(e.loc_id);
  } else {
    if (e.transition === 'raised') {
      // One active alert per sensor, kind and metric: an older one (by the time of the
      // reading that raised it, as the sink judges) still held here was superseded; the
      // sink resolves it in the database, and no event says so.
      const newAt = Date.parse(e.reading_time || e.decided_at);
      for (const a of [...store.alerts.values()]) {
        if (a.alert_id !== e.alert_id && a.sensor_id === e.sensor_id && a.kind === e.kind
          && (a.metric ?? null) === (e.metric ?? null) && Date.parse(a.reading || a.since) < newAt) {
          removeAlert(a.alert_id, touched);
          store.resolved.add(a.alert_id);
        }
      }
    }
    const held = store.alerts.get(e.alert_id);
    const next = normalAlert(e);
    next.eventAt = performance.now();
    if (held) {
      next.since = held.since;
      next.acknowledged_by = held.acknowledged_by;
      next.acknowledged_at = held.acknowledged_at;
    }
    putAlert(next, touched);
  }
  emit('alerts', { locs: touched, event: e });
}

/** When (performance.now() time) a measurement turns stale: older than stale_after_s. */
function staleAt(reading) {
  return reading.seen + (store.config.stale_after_s - reading.age_s) * 1000;
}

/** Whether a measurement is stale now (the API's own rule: older than stale_after_s). */
export function isStale(reading, now = performance.now()) {
  return !reading || now > staleAt(reading);
}

/**
 * The locations whose status may have changed since `since` by time alone: those with a
 * measurement that turned stale in between.  Nothing else changes while nothing arrives.
 */
function turnedStale(since, now) {
  const locs = new Set();
  for (const r of store.readings.values()) {
    const at = staleAt(r);
    if (at > since && at <= now) {
      const locId = sensorLoc.get(r.sensor_id);
      if (locId !== undefined) locs.add(locId);
    }
  }
  return locs;
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
  const at = store.alertsByLoc.get(locId);
  const found = at ? [...at.values()] : [];
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
  // Ages go on while nothing arrives: every few seconds, the locations whose newest
  // measurement has just turned stale are named (and only they are repainted).
  let judged = performance.now();
  setInterval(() => {
    const now = performance.now();
    const locs = turnedStale(judged, now);
    judged = now;
    if (locs.size) emit('tick', locs);
  }, 5000);
  return opened;
}

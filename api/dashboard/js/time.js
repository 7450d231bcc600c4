// Times in the factory's time zone (a location's IANA zone), whatever the browser's zone.
import { locale } from './i18n.js';

const formatters = new Map();

function formatter(tz, options) {
  const key = `${locale()}|${tz}|${JSON.stringify(options)}`;
  let f = formatters.get(key);
  if (!f) {
    f = new Intl.DateTimeFormat(locale(), { timeZone: tz, hourCycle: 'h23', ...options });
    formatters.set(key, f);
  }
  return f;
}

const DATE_TIME = {
  year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit',
};
const TIME = { hour: '2-digit', minute: '2-digit', second: '2-digit' };

/**
 * "2026. 12. 05. 14:03" (Korean) or "2026-12-05 14:03" (English: ISO order, since
 * 05/12/2026 reads as a different day in the UK and in the US) in tz; '' for no time.
 */
export function dateTime(value, tz) {
  if (!value) return '';
  const f = formatter(tz, DATE_TIME);
  if (!locale().startsWith('en')) return f.format(new Date(value));
  const p = Object.fromEntries(f.formatToParts(new Date(value)).map((x) => [x.type, x.value]));
  return `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute}`;
}

export function clock(value, tz) {
  if (!value) return '';
  return formatter(tz, TIME).format(new Date(value));
}

/** {y, m, d, h, mi} of an instant in tz (numbers). */
export function partsIn(value, tz) {
  const parts = {};
  const f = new Intl.DateTimeFormat('en-US', {
    timeZone: tz, hourCycle: 'h23', year: 'numeric', month: 'numeric', day: 'numeric',
    hour: 'numeric', minute: 'numeric', second: 'numeric',
  });
  for (const p of f.formatToParts(new Date(value))) parts[p.type] = Number(p.value);
  return { y: parts.year, m: parts.month, d: parts.day, h: parts.hour % 24, mi: parts.minute };
}

/** The instant (ms) at which the wall clock of tz shows y-m-d h:mi. */
export function zonedTime(y, m, d, h = 0, mi = 0, tz = 'Asia/Seoul') {
  const wanted = Date.UTC(y, m - 1, d, h, mi);
  let guess = wanted;
  for (let i = 0; i < 3; i += 1) {
    const p = partsIn(guess, tz);
    const shown = Date.UTC(p.y, p.m - 1, p.d, p.h, p.mi);
    if (shown === wanted) break;
    guess += wanted - shown;
  }
  return guess;
}

/** Today's date in tz as {y, m, d}. */
export function today(tz) {
  const p = partsIn(Date.now(), tz);
  return { y: p.y, m: p.m, d: p.d };
}

export function addDays({ y, m, d }, days) {
  const t = new Date(Date.UTC(y, m - 1, d + days));
  return { y: t.getUTCFullYear(), m: t.getUTCMonth() + 1, d: t.getUTCDate() };
}

const pad = (n, w = 2) => String(n).padStart(w, '0');
export const ymd = ({ y, m, d }) => `${pad(y, 4)}${pad(m)}${pad(d)}`;
export const isoDate = ({ y, m, d }) => `${pad(y, 4)}-${pad(m)}-${pad(d)}`;
export function parseIsoDate(text) {
  const match = /^(\d{4})-(\d{2})-(\d{2})$/.exec(text || '');
  return match ? { y: Number(match[1]), m: Number(match[2]), d: Number(match[3]) } : null;
}
export function daysBetween(a, b) {
  return Math.round((Date.UTC(b.y, b.m - 1, b.d) - Date.UTC(a.y, a.m - 1, a.d)) / 86400000);
}

// A Server-Sent Events client over fetch: unlike EventSource it can send the bearer token
// (only when the API asks for one: an anonymous stream where reads are open), and it
// resumes with Last-Event-ID after every drop, so nothing the topic still holds is missed.
import { token } from './api.js';

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

export class EventStream {
  /**
   * @param {string} url
   * @param {(type: string, data: any, id: string|null) => void} onEvent
   * @param {(state: 'connecting'|'open'|'retrying'|'closed') => void} onState
   */
  constructor(url, onEvent, onState = () => {}) {
    this.url = url;
    this.onEvent = onEvent;
    this.onState = onState;
    this.lastId = null;
    this.withToken = false;
    this.stopped = true;
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    this.run();
  }

  stop() {
    this.stopped = true;
    if (this.controller) this.controller.abort();
    this.onState('closed');
  }

  async run() {
    let delay = 1000;
    while (!this.stopped) {
      this.controller = new AbortController();
      this.onState('connecting');
      try {
        const headers = { Accept: 'text/event-stream' };
        if (this.lastId) headers['Last-Event-ID'] = this.lastId;
        const bearer = token();
        if (this.withToken && bearer) headers.Authorization = `Bearer ${bearer}`;
        // eslint-disable-next-line no-await-in-loop
        const response = await fetch(this.url, {
          headers, signal: this.controller.signal, cache: 'no-store', credentials: 'omit',
        });
        if (response.status === 401 && bearer && !this.withToken) {
          this.withToken = true; // reads need a token here
          continue;
        }
        if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
        this.onState('open');
        delay = 1000;
        // eslint-disable-next-line no-await-in-loop
        await this.read(response.body);
      } catch (err) {
        if (this.stopped) return;
      }
      if (this.stopped) return;
      this.onState('retrying');
      // eslint-disable-next-line no-await-in-loop
      await sleep(delay + Math.random() * 500);
      delay = Math.min(delay * 2, 15000);
    }
  }

  async read(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    let event = { type: 'message', data: [], id: null };
    for (;;) {
      // eslint-disable-next-line no-await-in-loop
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      for (;;) {
        const end = buffer.search(/[\r\n]/);
        if (end < 0) break;
        // A CR at the very end may be the first half of a CRLF split across chunks.
        if (buffer[end] === '\r' && end === buffer.length - 1) break;
        const line = buffer.slice(0, end);
        buffer = buffer.slice(end + (buffer[end] === '\r' && buffer[end + 1] === '\n' ? 2 : 1));
        if (line === '') {
          if (event.data.length) {
            if (event.id !== null) this.lastId = event.id;
            let data;
            try {
              data = JSON.parse(event.data.join('\n'));
            } catch {
              data = event.data.join('\n');
            }
            this.onEvent(event.type, data, event.id);
          }
          event = { type: 'message', data: [], id: null };
        } else if (line[0] !== ':') {
          const colon = line.indexOf(':');
          const name = colon < 0 ? line : line.slice(0, colon);
          let text = colon < 0 ? '' : line.slice(colon + 1);
          if (text[0] === ' ') text = text.slice(1);
          if (name === 'event') event.type = text;
          else if (name === 'data') event.data.push(text);
          else if (name === 'id') event.id = text;
        }
      }
    }
  }
}

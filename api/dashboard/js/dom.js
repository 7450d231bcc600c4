// Building the document from data without ever parsing data as markup: every text goes
// through textContent (Node.append with a string), never innerHTML.

/**
 * el('a', {class: 'tile', href: '#/x', text: 'A011'}, child, ...)
 * Attributes named on* add listeners; `text` sets the text; booleans set or omit.
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = String(value);
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key.startsWith('on') && typeof value === 'function') {
      node.addEventListener(key.slice(2), value);
    } else node.setAttribute(key, value === true ? '' : String(value));
  }
  append(node, children);
  return node;
}

export function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** Replace a node's children. */
export function fill(node, ...children) {
  node.replaceChildren();
  return append(node, children);
}

/** A labelled form control: <div class="field"><label for=id>label</label>control</div>. */
export function field(label, control, hint) {
  if (!control.id) control.id = `f-${Math.random().toString(36).slice(2, 9)}`;
  const lab = el('label', { for: control.id, text: label });
  return el('div', { class: 'field' }, lab, control, hint ? el('small', { text: hint }) : null);
}

export function select(options, value, attrs = {}) {
  const node = el('select', attrs);
  for (const [v, label] of options) {
    const opt = el('option', { value: v, text: label });
    if (String(v) === String(value ?? '')) opt.selected = true;
    node.append(opt);
  }
  return node;
}

/** A polite status line for messages (role=status) or errors (role=alert). */
export function message(kind, text) {
  return el('p', { class: `msg msg-${kind}`, role: kind === 'error' ? 'alert' : 'status', text });
}

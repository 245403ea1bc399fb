// Injected by tools/docs_check.py into a copy of each built page and run by headless Chromium after the
// page's own scripts: measures every <pre> and <table> of the article and writes what it found into the DOM
// as JSON (div#docs-check-result), which `chromium --dump-dom` then prints.
(() => {
  const UNWRAP = 'docs-check-unwrapped';
  const style = document.createElement('style');
  style.textContent = `.${UNWRAP}, .${UNWRAP} * { white-space: pre !important; word-break: normal !important;
    overflow-wrap: normal !important; width: max-content !important; max-width: none !important; }`;
  document.head.appendChild(style);

  // distinct line boxes of an element's text, from the tops of its text rectangles
  const lineCount = el => {
    const range = document.createRange();
    range.selectNodeContents(el);
    const tops = [...range.getClientRects()].filter(r => r.width > 0 && r.height > 0).map(r => r.top);
    const cs = getComputedStyle(el), lh = parseFloat(cs.lineHeight) || 1.2 * parseFloat(cs.fontSize);
    let n = 0, last = -Infinity;
    for (const t of tops.sort((a, b) => a - b)) if (t - last > lh / 2) { n += 1; last = t; }
    return n;
  };

  // [lines on screen, lines of the same element laid out without wrapping]
  const wrapping = pre => {
    const copy = pre.cloneNode(true);
    copy.classList.add(UNWRAP);
    Object.assign(copy.style, {position: 'absolute', left: '-100000px', top: '0', visibility: 'hidden'});
    pre.parentElement.appendChild(copy);
    const counts = [lineCount(pre), lineCount(copy)];
    copy.remove();
    return counts;
  };

  const scrolls = el => {  // a scroll container with a scroll bar a reader can see
    const cs = getComputedStyle(el);
    return ['auto', 'scroll'].includes(cs.overflowX) && cs.scrollbarWidth !== 'none';
  };
  const clips = el => ['hidden', 'clip'].includes(getComputedStyle(el).overflowX);

  // pixels of `el`'s content hidden at the right: content wider than the box that shows it, with no scroll
  // container on the way (the element itself, or an ancestor up to the article column)
  const cutOff = el => {
    if (scrolls(el)) return 0;
    const right = el.getBoundingClientRect().left + el.scrollWidth;
    for (let a = el.parentElement; a; a = a.parentElement) {
      if (scrolls(a)) return 0;
      if (clips(a) || a.matches('.md-content, body')) {
        return Math.max(0, Math.round(right - a.getBoundingClientRect().right));
      }
    }
    return 0;
  };

  // which output: the notebook cell's prompt (In [3]) or the nearest heading above, and the first line
  const describe = el => {
    const prompt = el.closest('.jp-Cell')?.querySelector('.jp-InputPrompt')?.textContent.trim();
    let where = prompt ? `output of ${prompt.replace(/:$/, '').replace(/\s+/g, ' ')}` : '';
    if (!where) {
      const heads = [...document.querySelectorAll('.md-content h1, .md-content h2, .md-content h3')]
        .filter(h => h.compareDocumentPosition(el) & Node.DOCUMENT_POSITION_FOLLOWING);
      const head = heads.length ? heads[heads.length - 1].textContent.replace('¶', '').trim() : '';
      where = head ? `under "${head}"` : 'page';
    }
    const first = (el.innerText || '').split('\n').find(l => l.trim()) || '';
    return `${where} (${el.tagName.toLowerCase()} "${first.trim().replace(/\s+/g, ' ').slice(0, 50)}")`;
  };

  const visible = el => el.getClientRects().length > 0 && getComputedStyle(el).visibility !== 'hidden';
  const found = [], root = document.querySelector('.md-content') || document.body;
  const pres = [...root.querySelectorAll('pre')].filter(visible);
  const tables = [...root.querySelectorAll('table')].filter(visible);
  for (const pre of pres) {
    const [shown, lines] = wrapping(pre);
    if (shown > lines) found.push(`${describe(pre)}: text wraps (${lines} lines shown on ${shown})`);
  }
  for (const el of [...pres, ...tables]) {
    const px = cutOff(el);
    if (px > 1) found.push(`${describe(el)}: cut off at the right (${px} px out of view, no scroll bar)`);
  }
  const out = document.createElement('div');
  out.id = 'docs-check-result';
  out.hidden = true;
  out.textContent = JSON.stringify({pres: pres.length, tables: tables.length, found});
  document.body.appendChild(out);
})();

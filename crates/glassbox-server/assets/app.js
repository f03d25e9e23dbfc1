// glassbox feature dashboards. Draws every page from the JSON API when served by
// `glassbox serve`, or from the JSON embedded in the page in a static export.
// Vanilla JavaScript, no dependencies, no requests outside the server it came from.
(function () {
  'use strict';

  const dataEl = document.getElementById('gb-data');
  const STATIC = dataEl ? JSON.parse(dataEl.textContent) : null;
  const ROOT = document.body.getAttribute('data-root') ?? '/';
  const app = document.getElementById('app');

  // ---- small helpers -------------------------------------------------------------

  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else if (k === 'class') el.className = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    for (const kid of kids.flat(Infinity)) {
      if (kid === null || kid === undefined || kid === false) continue;
      el.appendChild(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return el;
  }

  // Replace an element's children; nested arrays flatten, null/undefined/false drop.
  function fill(el, ...kids) {
    el.replaceChildren(...kids.flat(Infinity).filter((k) => k !== null && k !== undefined && k !== false));
  }

  function qs(params) {
    const p = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {})) {
      if (v !== null && v !== undefined && v !== '') p.set(k, v);
    }
    const s = p.toString();
    return s ? '?' + s : '';
  }

  const link = {
    list: (params) => (STATIC ? ROOT + 'index.html' : '/') + qs(params),
    unit: (kind, id) => (STATIC ? `${ROOT}unit/${kind}/${id}.html` : `/unit/${kind}/${id}`),
    compare: () => (STATIC ? ROOT + 'compare.html' : '/compare'),
    prompt: (params) => (STATIC ? ROOT + 'prompt.html' : '/prompt') + qs(params),
    steer: (params) => (STATIC ? ROOT + 'steer.html' : '/steer') + qs(params),
  };

  async function api(path, body) {
    const opts = body === undefined ? {} : {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    };
    const r = await fetch(path, opts);
    let j = null;
    try { j = await r.json(); } catch (e) { /* not JSON */ }
    if (!r.ok) throw new Error((j && j.error) || `HTTP ${r.status}`);
    return j;
  }

  function fmt(x) {
    if (x === null || x === undefined || Number.isNaN(x)) return '–';
    const a = Math.abs(x);
    if (a === 0) return '0';
    if (a >= 10000 || a < 0.001) return x.toExponential(2);
    if (a >= 100) return x.toFixed(1);
    if (a >= 1) return x.toFixed(2);
    return x.toPrecision(3);
  }

  function pct(x) {
    if (x === null || x === undefined) return '–';
    if (x === 0) return '0%';
    const p = x * 100;
    return (p < 0.01 ? p.toExponential(1) : p.toPrecision(3)) + '%';
  }

  // Make whitespace visible inside highlighted tokens.
  function showTok(t) {
    if (t === '') return '∅';
    return String(t).replace(/\n/g, '⏎').replace(/\t/g, '⇥').replace(/\r/g, '');
  }

  function setUrl(url) {
    try { history.replaceState(null, '', url); } catch (e) { /* file:// may refuse */ }
  }

  function kindName(kind) { return kind === 'neuron' ? 'Neuron' : 'Feature'; }

  // One token, its background saturating with act / scale, the value on hover.
  function tokenSpan(text, act, scale, focus, extraTitle) {
    const a = scale > 0 && act > 0 ? Math.min(1, act / scale) : 0;
    const title = `${JSON.stringify(text)}  act ${fmt(act)}` + (extraTitle ? '\n' + extraTitle : '');
    const s = h('span', {
      class: 'tok' + (focus ? ' focus' : '') + (act > 0 ? ' on' : ''),
      title: title,
      'data-act': act === null || act === undefined ? '' : act,
    }, showTok(text));
    if (a > 0) s.style.backgroundColor = `rgba(232, 121, 12, ${(0.1 + 0.9 * a).toFixed(3)})`;
    return s;
  }

  function exampleRow(ex, scale) {
    return h('div', { class: 'example' },
      h('span', { class: 'ex-act', title: 'activation at the outlined token' }, fmt(ex.act)),
      h('span', { class: 'ex-text' },
        ex.tokens.map((t, i) => tokenSpan(t, ex.acts[i], scale, i === ex.focus))));
  }

  function show(...nodes) {
    fill(app, ...nodes);
    app.setAttribute('data-state', 'ready');
  }

  function showError(e) {
    fill(app, h('div', { class: 'error' }, String(e && e.message ? e.message : e)));
    app.setAttribute('data-state', 'error');
  }

  function svgBox(markup, cls) {
    const d = h('div', { class: cls || 'plot' });
    d.innerHTML = markup || ''; // made on the server, escaped there
    return d;
  }

  function needsServer(what) {
    return h('div', { class: 'notice' },
      h('h1', {}, what),
      h('p', {}, `The ${what.toLowerCase()} runs the model live, so it needs the server: `,
        h('code', {}, 'glassbox serve RUN_DIR'), ', then open the URL it prints.'),
      h('p', {}, 'This static export holds the feature pages and the comparison only.'));
  }

  // ---- header ------------------------------------------------------------------

  function nav() {
    const items = [
      ['Features', link.list({})],
      ['Neurons', link.list({ kind: 'neuron' })],
      ['Compare', link.compare()],
      ['Prompt', link.prompt({})],
      ['Steer', link.steer({})],
    ];
    fill(document.getElementById('nav'), ...items.map(([t, u]) => h('a', { href: u }, t)));
    document.getElementById('nav-home').setAttribute('href', link.list({}));
    const info = document.getElementById('run-info');
    const describe = (meta, counts) => {
      const bits = [];
      if (meta.model) bits.push(meta.model);
      if (meta.hook) bits.push(meta.hook);
      if (counts) bits.push(`${counts.feature || 0} features · ${counts.neuron || 0} neurons`);
      if (meta.tokens) bits.push(`${meta.tokens} tokens`);
      info.textContent = bits.join(' · ');
    };
    if (STATIC) {
      if (STATIC.meta) describe(STATIC.meta, STATIC.counts);
    } else {
      api('/api/meta').then((m) => describe(m.meta || {}, m.counts)).catch(() => {});
    }
  }

  // ---- the unit list -----------------------------------------------------------

  function staticList(state) {
    const all = (STATIC.units && STATIC.units[state.kind]) || [];
    const q = state.q.trim().toLowerCase();
    let rows = all;
    if (q) {
      const qid = q.replace(/^#/, '');
      rows = all.filter((u) => String(u.id) === qid
        || (u.label || '').toLowerCase().includes(q)
        || (u.top_tokens || []).some((t) => String(t[0]).toLowerCase().includes(q)));
    }
    const key = state.sort;
    const desc = state.order ? state.order === 'desc' : key !== 'id';
    rows = rows.slice().sort((a, b) => {
      const d = (a[key] - b[key]) * (desc ? -1 : 1);
      return d !== 0 ? d : a.id - b.id;
    });
    return { total: rows.length, units: rows.slice(state.offset, state.offset + state.limit) };
  }

  function listPage() {
    const p = new URLSearchParams(location.search);
    const state = {
      kind: p.get('kind') === 'neuron' ? 'neuron' : 'feature',
      q: p.get('q') || '',
      sort: ['id', 'density', 'max_act', 'concentration'].includes(p.get('sort')) ? p.get('sort') : 'id',
      order: ['asc', 'desc'].includes(p.get('order')) ? p.get('order') : '',
      offset: Math.max(0, parseInt(p.get('offset') || '0', 10) || 0),
      limit: 50,
    };
    const select = (name, options, value) => h('select', { name: name, id: 'list-' + name },
      options.map(([v, t]) => h('option', { value: v, selected: v === value }, t)));
    const kindSel = select('kind', [['feature', 'features'], ['neuron', 'neurons']], state.kind);
    const search = h('input', {
      type: 'search', id: 'list-q', placeholder: 'search labels and top tokens, or an id',
      value: state.q, autofocus: true,
    });
    const sortSel = select('sort', [['id', 'id'], ['density', 'density'], ['max_act', 'max activation'],
      ['concentration', 'concentration']], state.sort);
    const orderSel = select('order', [['', 'default order'], ['asc', 'ascending'], ['desc', 'descending']], state.order);
    const summary = h('p', { class: 'muted', id: 'list-summary' });
    const table = h('div', { id: 'list-table' });
    const pager = h('div', { class: 'pager' });

    let seq = 0;
    async function load() {
      const mine = ++seq;
      const params = { kind: state.kind === 'feature' ? '' : state.kind, q: state.q, sort: state.sort === 'id' ? '' : state.sort, order: state.order, offset: state.offset || '' };
      setUrl(link.list(params));
      let res;
      try {
        res = STATIC ? staticList(state) : await api('/api/units' + qs({
          kind: state.kind, q: state.q, sort: state.sort, order: state.order,
          limit: state.limit, offset: state.offset,
        }));
      } catch (e) { if (mine === seq) showError(e); return; }
      if (mine !== seq) return;
      const first = res.total ? state.offset + 1 : 0;
      summary.textContent = `${res.total} ${state.kind}s` + (state.q ? ` matching “${state.q}”` : '') +
        (res.total ? ` — showing ${first}–${state.offset + res.units.length}` : '');
      fill(table, h('table', { class: 'units' },
        h('thead', {}, h('tr', {},
          h('th', {}, 'id'), h('th', {}, 'label'), h('th', { class: 'num' }, 'density'),
          h('th', { class: 'num' }, 'max act'), h('th', { class: 'num' }, 'mean act'),
          h('th', { class: 'num' }, 'concentration'), h('th', {}, 'top tokens'))),
        h('tbody', {}, res.units.map((u) => h('tr', {},
          h('td', {}, h('a', { href: link.unit(u.kind || state.kind, u.id) }, '#' + u.id)),
          h('td', {}, h('a', { href: link.unit(u.kind || state.kind, u.id), class: 'label' }, u.label || '(no label)')),
          h('td', { class: 'num' }, pct(u.density)),
          h('td', { class: 'num' }, fmt(u.max_act)),
          h('td', { class: 'num' }, fmt(u.mean_act)),
          h('td', { class: 'num' }, fmt(u.concentration)),
          h('td', { class: 'toks' }, (u.top_tokens || []).slice(0, 6).map((t) =>
            h('span', { class: 'chip', title: `${JSON.stringify(t[0])} × ${t[1]}` }, showTok(t[0])))))))));
      const prev = h('button', { type: 'button', disabled: state.offset === 0, onclick: () => { state.offset = Math.max(0, state.offset - state.limit); load(); } }, '← previous');
      const next = h('button', { type: 'button', disabled: state.offset + state.limit >= res.total, onclick: () => { state.offset += state.limit; load(); } }, 'next →');
      fill(pager, prev, next);
      app.setAttribute('data-state', 'ready');
    }

    let timer = null;
    search.addEventListener('input', () => {
      clearTimeout(timer);
      timer = setTimeout(() => { state.q = search.value; state.offset = 0; load(); }, 200);
    });
    for (const [el, key] of [[kindSel, 'kind'], [sortSel, 'sort'], [orderSel, 'order']]) {
      el.addEventListener('change', () => { state[key] = el.value; state.offset = 0; load(); });
    }
    document.title = 'glassbox — ' + state.kind + 's';
    show(h('h1', {}, 'Units'),
      h('div', { class: 'controls' }, kindSel, search, h('label', {}, 'sort ', sortSel), orderSel),
      summary, table, pager);
    app.setAttribute('data-state', 'loading');
    load();
  }

  // ---- one unit ----------------------------------------------------------------

  function statsTable(u) {
    const row = (k, v, t) => h('tr', { title: t || null }, h('th', {}, k), h('td', {}, v));
    return h('table', { class: 'stats' },
      row('density', pct(u.density), 'share of evaluated tokens where it is active'),
      row('max activation', fmt(u.max_act)),
      row('mean activation', fmt(u.mean_act), 'mean over the tokens where it fired'),
      row('concentration', fmt(u.concentration), 'share of top examples whose activating token is its most common one'));
  }

  function unitView(kind, u) {
    const scale = u.max_act > 0 ? u.max_act : 1;
    document.title = `glassbox — ${kind} ${u.id}: ${u.label || ''}`;
    const header = h('div', { class: 'unit-head' },
      h('h1', {}, `${kindName(kind)} ${u.id}`, ' · ', h('span', { class: 'label', id: 'unit-label' }, u.label || '(no label)')),
      h('div', { class: 'unit-nav' },
        u.prev !== null && u.prev !== undefined ? h('a', { href: link.unit(kind, u.prev) }, `← #${u.prev}`) : null,
        u.next !== null && u.next !== undefined ? h('a', { href: link.unit(kind, u.next) }, `#${u.next} →`) : null,
        kind === 'feature' ? h('a', { href: link.prompt({ feature: u.id }) }, 'prompt view') : null,
        kind === 'feature' ? h('a', { href: link.steer({ feature: u.id }) }, 'steer with it') : null));

    const top = h('section', { id: 'top-examples' }, h('h2', {}, 'Top activations'),
      (u.top_examples || []).length
        ? u.top_examples.map((ex) => exampleRow(ex, scale))
        : h('p', { class: 'muted' }, 'no examples recorded'));

    const bands = (u.bands || []).slice().sort((a, b) => b.band - a.band);
    const bandSec = h('section', { id: 'bands' }, h('h2', {}, 'Across the activation range'),
      h('p', { class: 'muted' }, 'Examples sampled from quantile bands of the activation, highest band first.'),
      bands.length ? bands.map((b) => h('div', { class: 'band' },
        h('h3', {}, `band ${b.band}`, h('span', { class: 'muted' }, ` activations ${fmt(b.min_act)} – ${fmt(b.max_act)}`)),
        b.examples.map((ex) => exampleRow(ex, scale)))) : h('p', { class: 'muted' }, 'no band examples recorded'));

    const effects = u.logit_effects || {};
    const effectList = (items, cls) => h('ol', { class: 'effects ' + cls },
      (items || []).map((e) => h('li', {}, h('span', { class: 'chip' }, showTok(e.token)), ' ', h('span', { class: 'num' }, fmt(e.value)))));
    const logitSec = h('section', { id: 'logit-effects' }, h('h2', {}, 'Logit effects'),
      effects.available
        ? h('div', { class: 'two' },
          h('div', {}, h('h3', {}, 'promoted'), effectList(effects.positive, 'pos')),
          h('div', {}, h('h3', {}, 'suppressed'), effectList(effects.negative, 'neg')))
        : h('p', { class: 'muted' }, 'The feature store records logit effects for dictionary features only.'));

    const neighSec = h('section', { id: 'neighbours' }, h('h2', {}, 'Nearest features (decoder cosine)'),
      (u.neighbours || []).length
        ? h('ul', { class: 'neigh' }, u.neighbours.map((n) => h('li', {},
          h('a', { href: link.unit('feature', n.id) }, `#${n.id}`), ' ', h('span', { class: 'label' }, n.label || ''),
          ' ', h('span', { class: 'muted' }, `cos ${fmt(n.cosine)}`))))
        : h('p', { class: 'muted' }, kind === 'feature' ? 'none recorded' : 'Neighbours are recorded for dictionary features only.'));

    const tokSec = h('div', {}, h('h2', {}, 'Top tokens'),
      h('div', { class: 'toks' }, (u.top_tokens || []).map((t) =>
        h('span', { class: 'chip', title: `${JSON.stringify(t[0])} × ${t[1]}` }, showTok(t[0]), h('sub', {}, t[1])))));

    show(header,
      h('div', { class: 'overview' },
        h('div', {}, statsTable(u), tokSec),
        h('div', {}, h('h2', {}, 'Activation histogram'), svgBox(u.histogram_svg, 'plot histogram-box'))),
      top, bandSec, h('div', { class: 'two' }, logitSec, neighSec));
  }

  async function unitPage(kind, id) {
    try {
      const u = STATIC ? STATIC.unit : await api(`/api/units/${kind}/${id}`);
      unitView(kind, u);
    } catch (e) { showError(e); }
  }

  // ---- the prompt view ----------------------------------------------------------

  function renderPrompt(out, r) {
    const sel = r.feature !== null && r.feature !== undefined;
    const valueOf = (t) => (sel ? t.act : (t.top.length ? t.top[0].act : 0));
    const scale = Math.max(1e-9, ...r.tokens.map(valueOf));
    const topText = (t) => t.top.map((f) => `#${f.id} ${f.label || ''} ${fmt(f.act)}`).join('\n');
    const head = sel
      ? h('p', {}, 'Coloured by ', h('a', { href: link.unit('feature', r.feature) }, `feature #${r.feature}`),
        r.feature_label ? [' ', h('span', { class: 'label' }, r.feature_label)] : null, ` at ${r.hook}`)
      : h('p', {}, `No feature selected: coloured by each token's most active feature at ${r.hook}.`);
    const tokens = h('div', { class: 'prompt-tokens', id: 'prompt-tokens' },
      r.tokens.map((t) => {
        const s = tokenSpan(t.text, valueOf(t), scale, false, topText(t));
        s.setAttribute('data-index', t.index);
        return s;
      }));
    const table = h('table', { class: 'per-token' },
      h('thead', {}, h('tr', {}, h('th', {}, '#'), h('th', {}, 'token'),
        h('th', { class: 'num' }, sel ? `act #${r.feature}` : ''), h('th', {}, 'most active features'))),
      h('tbody', {}, r.tokens.map((t) => h('tr', {},
        h('td', { class: 'num' }, t.index),
        h('td', {}, h('span', { class: 'chip' }, showTok(t.text))),
        h('td', { class: 'num' }, sel ? fmt(t.act) : ''),
        h('td', { class: 'tops' }, t.top.length ? t.top.map((f) => h('a', {
          href: link.unit('feature', f.id), class: 'chip feat', title: f.label || '',
        }, `#${f.id} `, h('span', { class: 'muted' }, fmt(f.act)))) : h('span', { class: 'muted' }, 'none active'))))));
    fill(out,
      r.message ? h('div', { class: 'notice', id: 'prompt-message' }, r.message) : null,
      head, tokens, h('h2', {}, 'Per token'), table);
  }

  function promptPage() {
    document.title = 'glassbox — prompt view';
    if (STATIC) { show(needsServer('Prompt view')); return; }
    const p = new URLSearchParams(location.search);
    const text = h('textarea', { id: 'prompt-text', rows: 4, placeholder: 'Type a prompt…' });
    text.value = p.get('text') || '';
    const feature = h('input', { type: 'number', id: 'prompt-feature', min: 0, placeholder: 'feature id (optional)', value: p.get('feature') || '' });
    const out = h('div', { id: 'prompt-out' });
    async function run() {
      const body = { text: text.value };
      if (feature.value.trim() !== '') body.feature = parseInt(feature.value, 10);
      setUrl(link.prompt({ text: text.value, feature: feature.value.trim() }));
      fill(out, h('p', { class: 'muted' }, 'Running the model… (the first request loads it)'));
      app.setAttribute('data-state', 'loading');
      try {
        renderPrompt(out, await api('/api/prompt', body));
        app.setAttribute('data-state', 'ready');
      } catch (e) {
        fill(out, h('div', { class: 'error' }, e.message));
        app.setAttribute('data-state', 'error');
      }
    }
    const form = h('form', { class: 'prompt-form', onsubmit: (e) => { e.preventDefault(); run(); } },
      text, h('div', { class: 'controls' }, feature, h('button', { type: 'submit' }, 'Run')));
    show(h('h1', {}, 'Prompt view'),
      h('p', { class: 'muted' }, 'Runs the model to the dictionary’s hook and encodes every token. Tokens are coloured by the chosen feature; hover for values.'),
      form, out);
    if (text.value.trim()) run();
  }

  // ---- the steering playground ---------------------------------------------------

  function steerPage() {
    document.title = 'glassbox — steering';
    if (STATIC) { show(needsServer('Steering playground')); return; }
    const p = new URLSearchParams(location.search);
    const prompt = h('textarea', { id: 'steer-prompt', rows: 3 });
    prompt.value = p.get('prompt') || 'I think that';
    const rows = h('div', { id: 'steer-rows' });
    function addRow(id, strength) {
      const row = h('div', { class: 'steer-row' },
        h('label', {}, 'feature ', h('input', { type: 'number', min: 0, class: 'f-id', value: id })),
        h('label', {}, 'strength ', h('input', { type: 'number', step: 'any', class: 'f-strength', value: strength })),
        h('button', { type: 'button', onclick: () => row.remove() }, 'remove'));
      rows.appendChild(row);
    }
    addRow(p.get('feature') || '', p.get('strength') || '8');
    const maxTok = h('input', { type: 'number', id: 'steer-max', min: 1, max: 200, value: p.get('max_new_tokens') || 30 });
    const out = h('div', { id: 'steer-out' });
    async function run() {
      setUrl(link.steer({
        prompt: prompt.value,
        feature: rows.querySelector('.f-id') ? rows.querySelector('.f-id').value : '',
        strength: rows.querySelector('.f-strength') ? rows.querySelector('.f-strength').value : '',
        max_new_tokens: maxTok.value,
      }));
      const features = [...rows.querySelectorAll('.steer-row')].map((r) => ({
        id: parseInt(r.querySelector('.f-id').value, 10),
        strength: parseFloat(r.querySelector('.f-strength').value),
      })).filter((f) => !Number.isNaN(f.id));
      fill(out, h('p', { class: 'muted' }, 'Generating… (the first request loads the model)'));
      app.setAttribute('data-state', 'loading');
      try {
        const r = await api('/api/steer', {
          prompt: prompt.value, features: features, max_new_tokens: parseInt(maxTok.value, 10) || 30,
        });
        const col = (title, text, id) => h('div', { class: 'gen', id: id }, h('h3', {}, title),
          h('p', {}, h('span', { class: 'muted' }, r.prompt), h('span', { class: 'generated' }, text)));
        fill(out,
          h('p', { class: 'muted' }, `Adding ${r.features.map((f) => `${fmt(f.strength)} × decoder row #${f.id}`).join(' + ')} (norm ${fmt(r.direction_norm)}) at ${r.hook}, every position; greedy decoding.`),
          h('div', { class: 'two' }, col('baseline', r.baseline, 'steer-baseline'), col('steered', r.steered, 'steer-steered')));
        app.setAttribute('data-state', 'ready');
      } catch (e) {
        fill(out, h('div', { class: 'error' }, e.message));
        app.setAttribute('data-state', 'error');
      }
    }
    show(h('h1', {}, 'Steering playground'),
      h('p', { class: 'muted' }, 'Adds strength × each feature’s decoder row to the residual stream at the dictionary’s hook while generating.'),
      h('form', { onsubmit: (e) => { e.preventDefault(); run(); } },
        prompt, rows,
        h('div', { class: 'controls' },
          h('button', { type: 'button', onclick: () => addRow('', '8') }, 'add feature'),
          h('label', {}, 'new tokens ', maxTok),
          h('button', { type: 'submit' }, 'Generate'))),
      out);
    // a link with both a prompt and a feature (e.g. ?prompt=…&feature=3&strength=8) runs on load
    if (p.get('prompt') && p.get('feature')) run();
  }

  // ---- features vs neurons ---------------------------------------------------------

  function compareView(c) {
    document.title = 'glassbox — features vs neurons';
    const k = c.kinds || {};
    const f = k.feature || {};
    const n = k.neuron || {};
    const row = (name, key, format, title) => h('tr', { title: title || null }, h('th', {}, name),
      h('td', { class: 'num' }, format(f[key])), h('td', { class: 'num' }, format(n[key])));
    const count = (x) => (x === null || x === undefined ? '–' : String(x));
    const values = Object.entries(c.values || {});
    show(h('h1', {}, 'Features vs neurons'),
      h('p', { class: 'muted' }, 'Dictionary features against the MLP neurons at the same layer, on the same tokens. ' +
        'Concentration is the share of a unit’s top examples whose activating token is its most common one: monosemantic units score high.'),
      h('table', { class: 'stats compare', id: 'compare-table' },
        h('thead', {}, h('tr', {}, h('th', {}, ''), h('th', { class: 'num' }, 'features'), h('th', { class: 'num' }, 'neurons'))),
        h('tbody', {},
          row('units', 'count', count),
          row('never active', 'dead', count),
          row('mean density', 'mean_density', pct),
          row('mean concentration', 'mean_concentration', fmt, 'over units that fired'),
          row('median concentration', 'median_concentration', fmt, 'over units that fired'),
          row('mean max activation', 'mean_max_act', fmt),
          row('mean activation when active', 'mean_mean_act', fmt))),
      h('div', { class: 'two' },
        h('div', {}, h('h3', {}, 'concentration — features'), svgBox((c.concentration_svg || {}).feature)),
        h('div', {}, h('h3', {}, 'concentration — neurons'), svgBox((c.concentration_svg || {}).neuron))),
      values.length ? [h('h2', {}, 'Stored comparison'),
        h('table', { class: 'stats' }, values.map(([key, v]) => h('tr', {}, h('th', {}, key), h('td', { class: 'num' }, fmt(v)))))] : null);
  }

  async function comparePage() {
    try {
      compareView(STATIC ? STATIC.comparison : await api('/api/comparison'));
    } catch (e) { showError(e); }
  }

  // ---- routing -------------------------------------------------------------------

  function route() {
    nav();
    if (STATIC) {
      switch (STATIC.page) {
        case 'unit': return unitPage(STATIC.kind, STATIC.id);
        case 'compare': return comparePage();
        case 'prompt': return promptPage();
        case 'steer': return steerPage();
        default: return listPage();
      }
    }
    const path = location.pathname.replace(/\/+$/, '') || '/';
    const m = path.match(/^\/unit\/(feature|neuron)\/(\d+)$/);
    if (m) return unitPage(m[1], parseInt(m[2], 10));
    if (path === '/' || path === '/index.html') return listPage();
    if (path === '/prompt') return promptPage();
    if (path === '/steer') return steerPage();
    if (path === '/compare') return comparePage();
    showError('No such page.');
  }

  route();
})();

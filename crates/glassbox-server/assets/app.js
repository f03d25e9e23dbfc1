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
    graphs: () => '/graphs',
    graph: (name, params) => '/graph/' + encodeURIComponent(name) + qs(params),
    layerFeature: (layer, id) => `/layer/${layer}/feature/${id}`,
  };

  // What the server serves (`/api/meta`), fetched before the first page is drawn.
  let META = null;

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

  // A token on its own (a chip): leading and trailing spaces made visible, so " even" and
  // "even" do not look like duplicates.
  function chipTok(t) {
    return showTok(t).replace(/^ +| +$/g, (m) => '␣'.repeat(m.length));
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
    checkLayout(app);
    app.setAttribute('data-state', 'ready');
  }

  // Every label of every plot must lie inside its SVG's box (a cut tick label is a bug):
  // marks each SVG `data-layout="ok"` or `"overflow"` and names the labels on the
  // console. Runs when a page is shown (getBBox lays the page out there and then).
  function checkLayout(root) {
    root.querySelectorAll('svg').forEach((svg) => {
      const vb = svg.viewBox && svg.viewBox.baseVal;
      if (!vb || !vb.width) return;
      const out = [...svg.querySelectorAll('text')].filter((t) => {
        const b = t.getBBox();
        return b.x < vb.x - 0.5 || b.y < vb.y - 0.5 || b.x + b.width > vb.x + vb.width + 0.5 || b.y + b.height > vb.y + vb.height + 0.5;
      });
      svg.setAttribute('data-layout', out.length ? 'overflow' : 'ok');
      if (out.length) console.warn('labels outside the plot:', out.map((t) => t.textContent));
    });
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
    const transcoders = META && META.mode === 'transcoders';
    const items = transcoders ? [] : [
      ['Features', link.list({})],
      ['Neurons', link.list({ kind: 'neuron' })],
      ['Compare', link.compare()],
      ['Prompt', link.prompt({})],
      ['Steer', link.steer({})],
    ];
    if (!STATIC && META && (transcoders || META.graphs > 0)) items.push(['Graphs', link.graphs()]);
    if (!STATIC && META && META.audit) items.push(['Audit', '/audit']);
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
    } else if (transcoders) {
      const layers = (META.set && META.set.layers) || [];
      info.textContent = [META.set && META.set.model, `transcoder set · ${layers.length} layers · ${META.graphs} graphs`]
        .filter(Boolean).join(' · ');
    } else if (META) {
      describe(META.meta || {}, META.counts);
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
        || (u.explanation || '').toLowerCase().includes(q)
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
      type: 'search', id: 'list-q', placeholder: 'search labels, explanations and top tokens, or an id',
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
          h('td', {}, h('a', { href: link.unit(u.kind || state.kind, u.id), class: 'label' }, u.label || '(no label)'),
            u.explanation ? h('div', { class: 'explanation muted' }, u.explanation) : null),
          h('td', { class: 'num' }, pct(u.density)),
          h('td', { class: 'num' }, fmt(u.max_act)),
          h('td', { class: 'num' }, fmt(u.mean_act)),
          h('td', { class: 'num' }, fmt(u.concentration)),
          h('td', { class: 'toks' }, (u.top_tokens || []).slice(0, 6).map((t) =>
            h('span', { class: 'chip', title: `${JSON.stringify(t[0])} × ${t[1]}` }, chipTok(t[0])))))))));
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

  // `opts` (a transcoder layer's feature): {title, unitLink(kind, id), live: false}
  function unitView(kind, u, opts) {
    const o = opts || {};
    const unitLink = o.unitLink || link.unit;
    const live = o.live !== false;
    const title = o.title || `${kindName(kind)} ${u.id}`;
    const scale = u.max_act > 0 ? u.max_act : 1;
    document.title = `glassbox — ${title}: ${u.label || ''}`;
    const header = h('div', { class: 'unit-head' },
      h('h1', {}, title, ' · ', h('span', { class: 'label', id: 'unit-label' }, u.label || '(no label)')),
      h('div', { class: 'unit-nav' },
        u.prev !== null && u.prev !== undefined ? h('a', { href: unitLink(kind, u.prev) }, `← #${u.prev}`) : null,
        u.next !== null && u.next !== undefined ? h('a', { href: unitLink(kind, u.next) }, `#${u.next} →`) : null,
        live && kind === 'feature' ? h('a', { href: link.prompt({ feature: u.id }) }, 'prompt view') : null,
        live && kind === 'feature' ? h('a', { href: link.steer({ feature: u.id }) }, 'steer with it') : null));

    // explanations by an explainer model (glassbox explain), best first, with their scores
    const score = (v) => (v === null || v === undefined ? '–' : fmt(v));
    const explained = (u.explanations || []).filter((e) => e.explanation);
    const explSec = explained.length
      ? h('section', { id: 'explanations' }, h('h2', {}, 'Explanations'),
        h('p', { class: 'muted' }, 'Written by a language model from the top and sampled contexts; scored on held-out contexts it never saw (balanced accuracy, 0.5 is chance).'),
        h('table', { class: 'stats' },
          h('tr', {}, h('th', {}, 'explanation'), h('th', { class: 'num' }, 'detection'), h('th', { class: 'num' }, 'fuzzing'), h('th', {}, 'explainer')),
          explained.map((e) => h('tr', {},
            h('td', { class: 'explanation' }, e.explanation),
            h('td', { class: 'num' }, score(e.detection)),
            h('td', { class: 'num' }, score(e.fuzzing)),
            h('td', { class: 'muted' }, `${e.explainer_model} (${e.prompt_version})`)))))
      : null;

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
        : h('p', { class: 'muted' }, 'This feature store predates neurons’ logit effects: rebuild it with glassbox features build.'));

    // features: decoder rows; neurons: the output weights each writes to the residual stream
    const neighTitle = kind === 'feature' ? 'Nearest features (decoder cosine)' : 'Nearest neurons (output-weight cosine)';
    const neighSec = h('section', { id: 'neighbours' }, h('h2', {}, neighTitle),
      (u.neighbours || []).length
        ? h('ul', { class: 'neigh' }, u.neighbours.map((n) => h('li', {},
          h('a', { href: unitLink(kind, n.id) }, `#${n.id}`), ' ', h('span', { class: 'label' }, n.label || ''),
          ' ', h('span', { class: 'muted' }, `cos ${fmt(n.cosine)}`))))
        : h('p', { class: 'muted' }, effects.available ? 'none recorded' : 'This feature store predates neurons’ neighbours: rebuild it with glassbox features build.'));

    const tokSec = h('div', {}, h('h2', {}, 'Top tokens'),
      h('div', { class: 'toks' }, (u.top_tokens || []).map((t) =>
        h('span', { class: 'chip', title: `${JSON.stringify(t[0])} × ${t[1]}` }, chipTok(t[0]), h('sub', {}, t[1])))));

    show(header,
      h('div', { class: 'overview' },
        h('div', {}, statsTable(u), tokSec),
        h('div', {}, h('h2', {}, 'Activation histogram'), svgBox(u.histogram_svg, 'plot histogram-box'))),
      explSec, top, bandSec, h('div', { class: 'two' }, logitSec, neighSec));
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
    // left-out positions (position 0, special tokens: sinks) stay out of the colour scale
    const scale = Math.max(1e-9, ...r.tokens.filter((t) => !t.excluded).map(valueOf));
    const topText = (t) => t.top.map((f) => `#${f.id} ${f.label || ''} ${fmt(f.act)}`).join('\n');
    const head = sel
      ? h('p', {}, 'Coloured by ', h('a', { href: link.unit('feature', r.feature) }, `feature #${r.feature}`),
        r.feature_label ? [' ', h('span', { class: 'label' }, r.feature_label)] : null, ` at ${r.hook}`)
      : h('p', {}, `No feature selected: coloured by each token's most active feature at ${r.hook}.`);
    // the prompt's length and how it begins, worded as the CLI echoes it
    const summary = h('p', { class: 'muted', id: 'prompt-summary' }, r.summary ? `Prompt: ${r.summary}.` : '');
    const tokens = h('div', { class: 'prompt-tokens', id: 'prompt-tokens' },
      r.tokens.map((t) => {
        if (t.excluded) {
          const s = h('span', { class: 'tok excluded', title: `${JSON.stringify(t.text)}: ${t.excluded}`, 'data-excluded': 'true' }, showTok(t.text));
          s.setAttribute('data-index', t.index);
          return s;
        }
        const s = tokenSpan(t.text, valueOf(t), scale, false, topText(t));
        s.setAttribute('data-index', t.index);
        return s;
      }));
    const table = h('table', { class: 'per-token' },
      h('thead', {}, h('tr', {}, h('th', {}, '#'), h('th', {}, 'token'),
        h('th', { class: 'num' }, sel ? `act #${r.feature}` : ''), h('th', {}, 'most active features'))),
      h('tbody', {}, r.tokens.map((t) => h('tr', t.excluded ? { class: 'excluded', title: t.excluded } : {},
        h('td', { class: 'num' }, t.index),
        h('td', {}, h('span', { class: 'chip' }, chipTok(t.text))),
        h('td', { class: 'num' }, sel ? fmt(t.act) : ''),
        h('td', { class: 'tops' }, t.excluded ? h('span', { class: 'muted' }, `left out: ${t.excluded}`) : t.top.length ? t.top.map((f) => h('a', {
          href: link.unit('feature', f.id), class: 'chip feat', title: f.label || '',
        }, `#${f.id} `, h('span', { class: 'muted' }, fmt(f.act)))) : h('span', { class: 'muted' }, 'none active'))))));
    fill(out,
      r.message ? h('div', { class: 'notice', id: 'prompt-message' }, r.message) : null,
      head, summary, tokens, h('h2', {}, 'Per token'), table);
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
      const idInput = h('input', { type: 'number', min: 0, class: 'f-id', value: id });
      const strengthInput = h('input', { type: 'number', step: 'any', class: 'f-strength', value: strength });
      // the feature's label and strengths worth trying: multiples of its max activation
      // (the decoder row is added strength times, so strength is in activation units)
      const hint = h('span', { class: 'f-hint muted' });
      async function describe() {
        const fid = parseInt(idInput.value, 10);
        if (Number.isNaN(fid)) { fill(hint); return; }
        try {
          const u = await api(`/api/units/feature/${fid}`);
          const m = u.max_act;
          fill(hint, h('span', { class: 'label f-label' }, u.label || ''),
            m ? [` · max activation ${fmt(m)}; try `, [1, 2, 5, 10].map((k) => h('button', {
              type: 'button', class: 'f-suggest', title: `${k} × the max activation`,
              onclick: () => { strengthInput.value = String(Math.round(k * m * 100) / 100); },
            }, `${k}× (${fmt(k * m)})`))] : null);
        } catch (e) { fill(hint, e.message); }
      }
      idInput.addEventListener('change', describe);
      const row = h('div', { class: 'steer-row' },
        h('label', {}, 'feature ', idInput),
        h('label', {}, 'strength ', strengthInput),
        h('button', { type: 'button', onclick: () => row.remove() }, 'remove'), hint);
      rows.appendChild(row);
      describe();
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
        const named = (f) => `${fmt(f.strength)} × the decoder row of feature #${f.id}${f.label ? ` “${f.label}”` : ''}`;
        const nt = r.next_token || { tokens: [] };
        const effect = h('table', { class: 'stats', id: 'steer-effect' },
          h('thead', {}, h('tr', {}, h('th', {}, 'next token'), h('th', { class: 'num' }, 'p before'),
            h('th', { class: 'num' }, 'p after'), h('th', { class: 'num' }, 'Δ log p'))),
          h('tbody', {}, nt.tokens.map((t) => h('tr', {},
            h('td', {}, h('span', { class: 'chip' }, chipTok(t.text))), h('td', { class: 'num' }, fmt(t.p_before)),
            h('td', { class: 'num' }, fmt(t.p_after)), h('td', { class: 'num' }, (t.delta_log_p >= 0 ? '+' : '') + fmt(t.delta_log_p))))));
        fill(out,
          h('p', { class: 'muted', id: 'steer-summary' }, `Adding ${r.features.map(named).join(' + ')} at ${r.hook}, every position; the added vector’s norm is ${fmt(r.direction_norm)}. Greedy decoding.`),
          h('div', { class: 'two' }, col('baseline', r.baseline, 'steer-baseline'), col('steered', r.steered, 'steer-steered')),
          h('h2', {}, 'Next token after the prompt'),
          h('p', { id: 'steer-kl' }, `KL(baseline ‖ steered) = ${fmt(nt.kl)} nats`),
          effect);
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
        h('div', {}, h('h3', {}, 'concentration — neurons'), svgBox((c.concentration_svg || {}).neuron))));
    // the stored table (`c.values`, snake_case keys) repeats the one above: the JSON API
    // (/api/comparison) keeps it for scripts
  }

  async function comparePage() {
    try {
      compareView(STATIC ? STATIC.comparison : await api('/api/comparison'));
    } catch (e) { showError(e); }
  }

  // ---- attribution graphs ------------------------------------------------------------

  // The SVG namespace, as the HTML parser assigns it (the script holds no URL at all).
  const SVG_NS = (() => {
    const d = document.createElement('div');
    d.innerHTML = '<svg></svg>';
    return d.firstChild.namespaceURI;
  })();

  function svg(tag, attrs, ...kids) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, String(v));
    }
    for (const kid of kids.flat(Infinity)) {
      if (kid === null || kid === undefined || kid === false) continue;
      el.appendChild(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return el;
  }

  function clip(t, n) {
    const s = showTok(t);
    return s.length > n ? s.slice(0, n - 1) + '…' : s;
  }

  // A short name of a graph node.
  function nodeName(n) {
    switch (n.feature_type) {
      case 'transcoder': return `L${n.layer}/${n.feature}@${n.ctx_idx}`;
      case 'mlp reconstruction error': return `error L${n.layer} @${n.ctx_idx}`;
      case 'embedding': return `emb “${clip(n.token_str, 12)}” @${n.ctx_idx}`;
      case 'logit': return `logit “${clip(n.token_str, 12)}”`;
      default: return n.node_id;
    }
  }

  const TYPE_CLASS = {
    transcoder: 't-feature', 'mlp reconstruction error': 't-error', embedding: 't-embedding', logit: 't-logit',
  };

  function graphsPage() {
    document.title = 'glassbox — graphs';
    const out = h('div', { id: 'graph-list' }, h('p', { class: 'muted' }, 'Loading…'));
    const layersBox = h('div', { id: 'layer-list' });
    show(h('h1', {}, 'Attribution graphs'),
      h('p', { class: 'muted' }, 'Graphs written by ', h('code', {}, 'glassbox trace … --out DIR/graphs/NAME.json'),
        '. Features are placed by prompt position (x) and layer (y); edges are direct effects.'),
      out, layersBox);
    app.setAttribute('data-state', 'loading');
    (async () => {
      try {
        const r = await api('/api/graphs');
        const gs = r.graphs || [];
        fill(out, gs.length
          ? h('table', { class: 'units' },
            h('thead', {}, h('tr', {}, h('th', {}, 'graph'), h('th', {}, 'prompt'), h('th', { class: 'num' }, 'nodes'),
              h('th', { class: 'num' }, 'features'), h('th', { class: 'num' }, 'links'),
              h('th', { class: 'num' }, 'replacement'), h('th', { class: 'num' }, 'completeness'))),
            h('tbody', {}, gs.map((g) => h('tr', {},
              h('td', {}, h('a', { href: link.graph(g.name), class: 'label' }, g.name)),
              g.error ? h('td', { colspan: 6, class: 'error' }, g.error) : [
                h('td', {}, h('span', { class: 'ex-text' }, g.prompt || '')),
                h('td', { class: 'num' }, g.n_nodes), h('td', { class: 'num' }, g.n_features),
                h('td', { class: 'num' }, g.n_links),
                h('td', { class: 'num' }, fmt(g.replacement_score)), h('td', { class: 'num' }, fmt(g.completeness_score))]))))
          : h('p', { class: 'notice' }, `No graphs in ${r.dir} yet: `, h('code', {}, 'glassbox trace --model M --transcoders SET --prompt "…" --out SET/graphs/NAME.json'), '.'));
        const layers = (META && META.set && META.set.layers) || [];
        if (layers.length) {
          fill(layersBox, h('h2', {}, 'Layers'),
            h('table', { class: 'stats' }, layers.map((l) => h('tr', {},
              h('th', {}, `layer ${l.layer}`), h('td', {}, h('code', {}, l.path)),
              h('td', {}, l.features ? h('a', { href: link.layerFeature(l.layer, 0) }, 'feature pages')
                : h('span', { class: 'muted' }, `no feature store: glassbox features build --sae ${META.run_dir}/${l.path} --model ${META.set.model || 'M'}`))))));
        }
        app.setAttribute('data-state', 'ready');
      } catch (e) { showError(e); }
    })();
  }

  async function layerFeaturePage(layer, id) {
    try {
      const u = await api(`/api/layers/${layer}/features/${id}`);
      unitView('feature', u, {
        title: `Layer ${layer} · feature ${id}`,
        unitLink: (kind, fid) => link.layerFeature(layer, fid),
        live: false,
      });
    } catch (e) { showError(e); }
  }

  // Supernodes of a graph, kept in localStorage: [{id, name, members: [node_id]}].
  function supernodeStore(name) {
    const key = 'glassbox.supernodes.' + name;
    return {
      load() {
        try {
          const v = JSON.parse(localStorage.getItem(key) || '[]');
          return Array.isArray(v) ? v.filter((s) => s && typeof s.name === 'string' && Array.isArray(s.members)) : [];
        } catch (e) { return []; }
      },
      save(list) {
        try { localStorage.setItem(key, JSON.stringify(list)); } catch (e) { /* storage full or disabled */ }
      },
    };
  }

  async function graphPage(name) {
    document.title = 'glassbox — graph ' + name;
    app.setAttribute('data-state', 'loading');
    let g;
    try {
      g = await api('/api/graphs/' + encodeURIComponent(name));
    } catch (e) { showError(e); return; }
    graphView(name, g);
  }

  function graphView(name, g) {
    app.classList.add('wide');
    const meta = g.metadata || {};
    const nodes = g.nodes || [];
    const links = g.links || [];
    const byId = new Map(nodes.map((n) => [n.node_id, n]));
    const nLayers = meta.n_layers || Math.max(0, ...nodes.map((n) => n.layer));
    const tokens = meta.prompt_tokens || [];
    const nPos = Math.max(tokens.length, ...nodes.map((n) => n.ctx_idx + 1));
    const store = supernodeStore(name);
    let supers = store.load().map((s, i) => ({
      id: s.id || `S${i}`, name: s.name, members: s.members.filter((m) => byId.has(m)),
    })).filter((s) => s.members.length > 0);
    let selection = [];        // node ids and supernode ids, in click order
    const editValues = new Map(); // node id -> {op, value}

    const superOf = () => {
      const m = new Map();
      for (const s of supers) for (const id of s.members) m.set(id, s);
      return m;
    };
    const superById = (id) => supers.find((s) => s.id === id);
    const memberNodes = (id) => {
      const s = superById(id);
      return s ? s.members.map((m) => byId.get(m)) : (byId.has(id) ? [byId.get(id)] : []);
    };

    // ---- header, toolbar, panels
    const scores = h('div', { class: 'graph-scores', id: 'graph-scores' },
      h('span', {}, 'replacement ', h('b', { id: 'score-replacement' }, fmt(meta.replacement_score))),
      h('span', {}, 'completeness ', h('b', { id: 'score-completeness' }, fmt(meta.completeness_score))),
      h('span', { class: 'muted' }, `${nodes.length} nodes · ${links.length} links`),
      meta.model ? h('span', { class: 'muted' }, meta.model) : null,
      h('span', { class: 'muted' }, `node threshold ${fmt(meta.node_threshold)} · edge threshold ${fmt(meta.edge_threshold)}`));
    const selInfo = h('span', { class: 'muted', id: 'graph-selection' });
    const groupBtn = h('button', { type: 'button', id: 'group-btn', onclick: () => group() }, 'Group as supernode');
    const clearBtn = h('button', { type: 'button', onclick: () => { selection = []; updateSelection(); } }, 'Clear selection');
    const dlBtn = h('button', { type: 'button', id: 'supernodes-download', onclick: () => download() }, 'Download supernodes');
    const superList = h('span', { class: 'super-list', id: 'super-list' });
    const legend = h('span', { class: 'graph-legend muted' },
      h('i', { class: 'lg t-feature' }), 'feature ', h('i', { class: 'lg t-error' }), 'error ',
      h('i', { class: 'lg t-embedding' }), 'embedding ', h('i', { class: 'lg t-logit' }), 'logit ',
      h('i', { class: 'lg e-pos' }), '+ edge ', h('i', { class: 'lg e-neg' }), '− edge');
    const toolbar = h('div', { class: 'controls graph-toolbar' }, selInfo, groupBtn, clearBtn, dlBtn, superList, legend);
    const canvas = h('div', { class: 'graph-canvas', id: 'graph-canvas' });
    const tip = h('div', { class: 'graph-tip', id: 'graph-tip', hidden: true });
    const panel = h('aside', { class: 'graph-panel', id: 'graph-panel' },
      h('p', { class: 'muted' }, 'Click a node to see it here; shift-click to select several.'));
    const ivPanel = h('section', { class: 'intervene', id: 'intervene-panel' });
    show(h('h1', {}, 'Attribution graph · ', h('span', { class: 'label' }, name)),
      h('p', { class: 'graph-prompt' }, h('span', { class: 'muted' }, 'prompt '), h('span', { class: 'ex-text' }, meta.prompt || '')),
      scores, toolbar,
      h('div', { class: 'graph-layout' }, h('div', { class: 'graph-wrap' }, canvas, tip), panel),
      ivPanel);

    // ---- drawing
    let nodeEls = new Map();
    let edgeEls = [];

    function draw() {
      const sOf = superOf();
      const visible = nodes.filter((n) => !sOf.has(n.node_id));
      const rowH = 58;
      const rowOf = (layer) => nLayers - layer; // logits (layer n) on row 0, embeddings (−1) at the bottom
      // items per (row, position): nodes and supernodes (placed at their members' mean)
      const items = visible.map((n) => ({ id: n.node_id, node: n, row: rowOf(n.layer), pos: n.ctx_idx }));
      for (const s of supers) {
        const ms = s.members.map((m) => byId.get(m));
        const meanLayer = ms.reduce((a, n) => a + n.layer, 0) / ms.length;
        const meanPos = ms.reduce((a, n) => a + n.ctx_idx, 0) / ms.length;
        items.push({ id: s.id, sup: s, row: rowOf(Math.round(meanLayer)), pos: Math.round(meanPos) });
      }
      const cells = new Map();
      for (const it of items) {
        const k = it.row + ':' + it.pos;
        if (!cells.has(k)) cells.set(k, []);
        cells.get(k).push(it);
      }
      const perPos = new Array(nPos).fill(1);
      for (const [k, list] of cells) {
        const p = parseInt(k.split(':')[1], 10);
        const width = list.reduce((a, it) => a + (it.sup ? 4 : 1), 0);
        perPos[p] = Math.max(perPos[p], width);
      }
      const step = 16;
      const colW = perPos.map((c) => Math.max(76, c * step + 20));
      const left = 58;
      const colX = [];
      let x = left;
      for (const w of colW) { colX.push(x); x += w; }
      const width = x + 16;
      const top = 34;
      const height = top + (nLayers + 2) * rowH + 40;
      const place = new Map();
      for (const [k, list] of cells) {
        const [row, p] = k.split(':').map((v) => parseInt(v, 10));
        list.sort((a, b) => (a.sup ? 1 : 0) - (b.sup ? 1 : 0) || (b.node ? b.node.influence : 0) - (a.node ? a.node.influence : 0));
        const units = list.reduce((a, it) => a + (it.sup ? 4 : 1), 0);
        let cx = colX[p] + (colW[p] - (units - 1) * step) / 2;
        for (const it of list) {
          const w = it.sup ? 4 : 1;
          place.set(it.id, { x: cx + (w - 1) * step / 2, y: top + row * rowH + rowH / 2 });
          cx += w * step;
        }
      }

      const root = svg('svg', {
        id: 'graph-svg', class: 'graph-svg', width: width, height: height,
        viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': 'attribution graph',
      });
      // rows and columns
      const grid = svg('g', { class: 'grid' });
      for (let layer = -1; layer <= nLayers; layer++) {
        const y = top + rowOf(layer) * rowH + rowH / 2;
        grid.appendChild(svg('line', { x1: left - 6, x2: width - 10, y1: y, y2: y, class: 'row-line' }));
        grid.appendChild(svg('text', { x: 6, y: y + 4, class: 'row-label' },
          layer === -1 ? 'emb' : layer === nLayers ? 'logits' : `L${layer}`));
      }
      for (let p = 0; p < nPos; p++) {
        const cx = colX[p] + colW[p] / 2;
        const t = svg('text', { x: cx, y: height - 14, class: 'tok-label', 'text-anchor': 'middle', 'data-pos': p },
          clip(tokens[p] !== undefined ? tokens[p] : `#${p}`, 10));
        t.appendChild(svg('title', {}, `position ${p}: ${JSON.stringify(tokens[p] ?? '')}`));
        grid.appendChild(t);
        if (p > 0) grid.appendChild(svg('line', { x1: colX[p], x2: colX[p], y1: top, y2: height - 32, class: 'col-line' }));
      }
      root.appendChild(grid);

      // edges, merged into supernodes
      const vis = (id) => (sOf.has(id) ? sOf.get(id).id : id);
      const merged = new Map();
      for (const l of links) {
        const s = vis(l.source);
        const t = vis(l.target);
        if (s === t || !place.has(s) || !place.has(t)) continue;
        const k = s + '\u0000' + t;
        merged.set(k, { source: s, target: t, weight: (merged.has(k) ? merged.get(k).weight : 0) + l.weight });
      }
      const edges = [...merged.values()].sort((a, b) => Math.abs(a.weight) - Math.abs(b.weight));
      const maxW = Math.max(1e-30, ...edges.map((e) => Math.abs(e.weight)));
      const eg = svg('g', { class: 'edges', id: 'graph-edges' });
      edgeEls = [];
      for (const e of edges) {
        const a = place.get(e.source);
        const b = place.get(e.target);
        const r = Math.abs(e.weight) / maxW;
        const my = (a.y + b.y) / 2;
        const path = svg('path', {
          class: 'gedge ' + (e.weight >= 0 ? 'pos' : 'neg'),
          d: `M${a.x.toFixed(1)},${a.y.toFixed(1)} C${a.x.toFixed(1)},${my.toFixed(1)} ${b.x.toFixed(1)},${my.toFixed(1)} ${b.x.toFixed(1)},${b.y.toFixed(1)}`,
          'stroke-width': (0.4 + 3.6 * r).toFixed(2),
          'stroke-opacity': (0.15 + 0.7 * r).toFixed(2),
          'data-source': e.source, 'data-target': e.target,
        });
        edgeEls.push({ el: path, source: e.source, target: e.target });
        eg.appendChild(path);
      }
      root.appendChild(eg);

      // nodes
      const ng = svg('g', { class: 'nodes', id: 'graph-nodes' });
      nodeEls = new Map();
      for (const it of items) {
        const { x: px, y: py } = place.get(it.id);
        let el;
        if (it.sup) {
          const w = 4 * step - 4;
          el = svg('g', { class: 'gsuper', 'data-id': it.id, transform: `translate(${px.toFixed(1)},${py.toFixed(1)})` },
            svg('rect', { x: -w / 2, y: -9, width: w, height: 18, rx: 9 }),
            svg('text', { y: 4, 'text-anchor': 'middle' }, clip(it.sup.name, 12)));
        } else {
          const n = it.node;
          const cls = 'gnode ' + (TYPE_CLASS[n.feature_type] || 't-other');
          let shape;
          if (n.feature_type === 'transcoder') shape = svg('circle', { r: 6 });
          else if (n.feature_type === 'mlp reconstruction error') shape = svg('rect', { x: -5, y: -5, width: 10, height: 10 });
          else if (n.feature_type === 'embedding') shape = svg('rect', { x: -7, y: -5, width: 14, height: 10, rx: 2 });
          else shape = svg('polygon', { points: '0,-8 8,0 0,8 -8,0' });
          el = svg('g', { class: cls, 'data-id': n.node_id, transform: `translate(${px.toFixed(1)},${py.toFixed(1)})` }, shape);
          if (n.feature_type === 'logit') {
            el.appendChild(svg('text', { y: -12, 'text-anchor': 'middle', class: 'logit-label' }, clip(n.token_str, 8)));
          }
        }
        el.addEventListener('mouseenter', (ev) => hover(it.id, ev));
        el.addEventListener('mousemove', (ev) => moveTip(ev));
        el.addEventListener('mouseleave', () => unhover());
        el.addEventListener('click', (ev) => { ev.stopPropagation(); clickNode(it.id, ev.shiftKey); });
        nodeEls.set(it.id, el);
        ng.appendChild(el);
      }
      root.appendChild(ng);
      fill(canvas, root);
      updateSelection();
      fill(superList, supers.map((s) => h('span', { class: 'chip super-chip', 'data-id': s.id },
        h('a', { href: '#', onclick: (e) => { e.preventDefault(); clickNode(s.id, e.shiftKey); } }, s.name),
        h('sub', {}, s.members.length),
        h('button', { type: 'button', class: 'ungroup', title: 'ungroup', onclick: () => ungroup(s.id) }, '×'))));
      dlBtn.disabled = supers.length === 0;
    }

    // ---- hover
    function tipLines(id) {
      const s = superById(id);
      if (s) {
        return [`supernode “${s.name}”`, `${s.members.length} nodes`,
          ...s.members.slice(0, 8).map((m) => nodeName(byId.get(m))), s.members.length > 8 ? '…' : null];
      }
      const n = byId.get(id);
      const rows = [`${n.feature_type}`, `layer ${n.layer} · position ${n.ctx_idx} (${JSON.stringify(n.token_str)})`];
      if (n.feature !== null && n.feature !== undefined) rows.push(`feature ${n.feature}`);
      if (n.activation !== null && n.activation !== undefined) rows.push(`activation ${fmt(n.activation)}`);
      if (n.error_norm !== null && n.error_norm !== undefined) rows.push(`error norm ${fmt(n.error_norm)}`);
      if (n.token_prob !== null && n.token_prob !== undefined) rows.push(`probability ${pct(n.token_prob)}`);
      rows.push(`influence ${fmt(n.influence)}`);
      return rows;
    }
    function hover(id, ev) {
      fill(tip, tipLines(id).filter((l) => l !== null).map((l, i) => h('div', { class: i === 0 ? 'label' : null }, l)));
      tip.hidden = false;
      moveTip(ev);
      canvas.classList.add('hovering');
      for (const e of edgeEls) {
        if (e.source === id || e.target === id) e.el.classList.add('hl');
      }
    }
    function moveTip(ev) {
      const box = canvas.parentNode.getBoundingClientRect();
      tip.style.left = (ev.clientX - box.left + 14) + 'px';
      tip.style.top = (ev.clientY - box.top + 14) + 'px';
    }
    function unhover() {
      tip.hidden = true;
      canvas.classList.remove('hovering');
      for (const e of edgeEls) e.el.classList.remove('hl');
    }

    // ---- selection and the side panel
    function clickNode(id, shift) {
      if (shift) {
        const i = selection.indexOf(id);
        if (i >= 0) selection.splice(i, 1); else selection.push(id);
      } else {
        selection = [id];
      }
      updateSelection();
      if (selection.includes(id)) showPanel(id);
    }

    function updateSelection() {
      for (const [id, el] of nodeEls) {
        el.classList.toggle('sel', selection.includes(id));
      }
      selection = selection.filter((id) => nodeEls.has(id));
      selInfo.textContent = selection.length ? `${selection.length} selected` : 'nothing selected';
      groupBtn.disabled = selection.length < 2;
      renderIntervene();
    }

    function edgeList(title, list, other, cls) {
      return h('div', { class: 'edge-list ' + cls },
        h('h3', {}, title),
        list.length ? h('ol', { class: 'effects' }, list.map((l) => h('li', {},
          h('a', { href: '#', onclick: (e) => { e.preventDefault(); clickNode(other(l), false); } }, nodeName(byId.get(other(l)))),
          ' ', h('span', { class: 'num ' + (l.weight >= 0 ? 'w-pos' : 'w-neg') }, fmt(l.weight)))))
          : h('p', { class: 'muted' }, 'none'));
    }

    function strongest(pred) {
      return links.filter(pred).sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight)).slice(0, 8);
    }

    function dashboard(n) {
      const box = h('div', { class: 'panel-dash', id: 'panel-dashboard' }, h('p', { class: 'muted' }, 'Loading the feature’s dashboard…'));
      api(`/api/layers/${n.layer}/features/${n.feature}` + qs({ graph: name })).then((u) => {
        const scale = u.max_act > 0 ? u.max_act : 1;
        fill(box,
          h('p', {}, h('span', { class: 'label', id: 'panel-label' }, u.label || '(no label)'), ' ',
            h('a', { href: link.layerFeature(n.layer, n.feature) }, 'full page')),
          statsTable(u),
          h('div', { class: 'toks' }, (u.top_tokens || []).map((t) =>
            h('span', { class: 'chip', title: `${JSON.stringify(t[0])} × ${t[1]}` }, chipTok(t[0]), h('sub', {}, t[1])))),
          h('h3', {}, 'Top activations'),
          (u.top_examples || []).length
            ? h('div', { id: 'panel-examples' }, u.top_examples.slice(0, 8).map((ex) => exampleRow(ex, scale)))
            : h('p', { class: 'muted' }, 'no examples recorded'));
        box.setAttribute('data-state', 'ready');
      }).catch((e) => {
        fill(box, h('div', { class: 'notice', id: 'panel-missing' }, e.message));
        box.setAttribute('data-state', 'missing');
      });
      return box;
    }

    function showPanel(id) {
      const s = superById(id);
      if (s) {
        const members = new Set(s.members);
        fill(panel,
          h('h2', { id: 'panel-title' }, `Supernode “${s.name}”`),
          h('ul', { class: 'neigh' }, s.members.map((m) => h('li', {},
            h('a', { href: '#', onclick: (e) => { e.preventDefault(); clickNode(m, false); } }, nodeName(byId.get(m)))))),
          edgeList('strongest inputs', strongest((l) => members.has(l.target) && !members.has(l.source)), (l) => l.source, 'in'),
          edgeList('strongest outputs', strongest((l) => members.has(l.source) && !members.has(l.target)), (l) => l.target, 'out'));
        panel.setAttribute('data-node', id);
        return;
      }
      const n = byId.get(id);
      const row = (k, v) => (v === null || v === undefined ? null : h('tr', {}, h('th', {}, k), h('td', {}, v)));
      fill(panel,
        h('h2', { id: 'panel-title' }, nodeName(n)),
        h('table', { class: 'stats' },
          row('type', n.feature_type), row('layer', n.layer), row('position', `${n.ctx_idx} ${JSON.stringify(n.token_str)}`),
          row('feature', n.feature), row('activation', n.activation === null || n.activation === undefined ? null : fmt(n.activation)),
          row('error norm', n.error_norm === null || n.error_norm === undefined ? null : fmt(n.error_norm)),
          row('probability', n.token_prob === null || n.token_prob === undefined ? null : pct(n.token_prob)),
          row('influence', fmt(n.influence))),
        n.feature_type === 'transcoder' ? dashboard(n) : null,
        edgeList('strongest inputs', strongest((l) => l.target === id), (l) => l.source, 'in'),
        edgeList('strongest outputs', strongest((l) => l.source === id), (l) => l.target, 'out'));
      panel.setAttribute('data-node', id);
    }

    // ---- supernodes
    function group() {
      const ids = [...new Set(selection.flatMap((id) => memberNodes(id).map((n) => n.node_id)))];
      if (ids.length < 2) return;
      const suggested = ids.map((i) => byId.get(i)).find((n) => n.feature_type === 'transcoder');
      const label = window.prompt('Name the supernode', suggested ? nodeName(suggested) : 'group');
      if (label === null || label.trim() === '') return;
      const taken = new Set(ids);
      supers = supers.map((s) => ({ ...s, members: s.members.filter((m) => !taken.has(m)) })).filter((s) => s.members.length > 0);
      const id = 'S' + Date.now().toString(36) + Math.floor(Math.random() * 1e6).toString(36);
      supers.push({ id: id, name: label.trim(), members: ids });
      store.save(supers);
      selection = [id];
      draw();
      showPanel(id);
    }
    function ungroup(id) {
      supers = supers.filter((s) => s.id !== id);
      store.save(supers);
      selection = selection.filter((s) => s !== id);
      draw();
    }
    function download() {
      const body = JSON.stringify({ graph: name, prompt: meta.prompt, supernodes: supers }, null, 2);
      const url = URL.createObjectURL(new Blob([body], { type: 'application/json' }));
      const a = h('a', { href: url, download: `${name}.supernodes.json` });
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 1000);
    }

    // ---- interventions
    const mode = h('select', { id: 'iv-mode' }, h('option', { value: 'frozen' }, 'frozen (replacement model)'), h('option', { value: 'live' }, 'live (real model)'));
    const topN = h('input', { type: 'number', id: 'iv-top', min: 1, max: 100, value: 10 });
    const ivRows = h('div', { id: 'iv-rows' });
    const ivOut = h('div', { id: 'iv-out' });
    const runBtn = h('button', { type: 'button', id: 'iv-run', onclick: () => runIntervention() }, 'Run');
    fill(ivPanel, h('h2', {}, 'Intervene'),
      h('p', { class: 'muted' }, 'Set or scale the selected features (scale 0 ablates) and compare the next-token distribution. ' +
        'Frozen: the replacement model with attention and norms pinned, as the graph assumes. Live: the real model, everything downstream recomputed.'),
      ivRows,
      h('div', { class: 'controls' }, h('label', {}, 'mode ', mode), h('label', {}, 'top ', topN), runBtn),
      ivOut);

    function selectedFeatures() {
      const seen = new Set();
      const out = [];
      for (const id of selection) {
        for (const n of memberNodes(id)) {
          if (n.feature_type === 'transcoder' && !seen.has(n.node_id)) { seen.add(n.node_id); out.push(n); }
        }
      }
      return out;
    }

    function renderIntervene() {
      const feats = selectedFeatures();
      runBtn.disabled = false;
      if (!feats.length) {
        fill(ivRows, h('p', { class: 'muted' }, 'No features selected: click a feature (shift-click for several). Run with none checks that the frozen model reproduces the clean distribution.'));
        return;
      }
      fill(ivRows, h('table', { class: 'per-token iv-table' },
        h('thead', {}, h('tr', {}, h('th', {}, 'feature'), h('th', { class: 'num' }, 'activation'), h('th', {}, 'edit'), h('th', {}, ''))),
        h('tbody', {}, feats.map((n) => {
          if (!editValues.has(n.node_id)) editValues.set(n.node_id, { op: 'scale', value: '0' });
          const ev = editValues.get(n.node_id);
          const op = h('select', { class: 'iv-op', onchange: () => { ev.op = op.value; } },
            h('option', { value: 'scale', selected: ev.op === 'scale' }, 'scale ×'), h('option', { value: 'set', selected: ev.op === 'set' }, 'set to'));
          const val = h('input', { type: 'number', step: 'any', class: 'iv-value', value: ev.value, oninput: () => { ev.value = val.value; } });
          return h('tr', { 'data-node': n.node_id },
            h('td', {}, nodeName(n)), h('td', { class: 'num' }, fmt(n.activation)),
            h('td', {}, op, ' ', val),
            h('td', {}, h('button', { type: 'button', onclick: () => { selection = selection.filter((s) => s !== n.node_id); updateSelection(); } }, 'remove')));
        }))));
    }

    async function runIntervention() {
      const edits = [];
      for (const n of selectedFeatures()) {
        const ev = editValues.get(n.node_id) || { op: 'scale', value: '0' };
        const v = parseFloat(ev.value);
        if (!Number.isFinite(v)) {
          fill(ivOut, h('div', { class: 'error' }, `the value for ${nodeName(n)} is not a number`));
          return;
        }
        edits.push({ layer: n.layer, position: n.ctx_idx, feature: n.feature, value: { [ev.op]: v } });
      }
      fill(ivOut, h('p', { class: 'muted' }, 'Running… (the first run loads the model and the transcoders)'));
      ivOut.setAttribute('data-state', 'loading');
      try {
        const r = await api(`/api/graphs/${encodeURIComponent(name)}/intervene`,
          { mode: mode.value, edits: edits, top: parseInt(topN.value, 10) || 10 });
        const table = (title, list, id, other) => {
          const prob = new Map((other || []).map((t) => [t.token, t.prob]));
          return h('div', { class: 'gen', id: id }, h('h3', {}, title),
            h('table', { class: 'per-token' },
              h('thead', {}, h('tr', {}, h('th', {}, 'token'), h('th', { class: 'num' }, 'prob'), h('th', { class: 'num' }, 'logit'))),
              h('tbody', {}, list.map((t) => h('tr', { 'data-token': t.token },
                h('td', {}, h('span', { class: 'chip', title: `token ${t.token}` }, showTok(t.token_str))),
                h('td', { class: 'num', title: prob.has(t.token) ? `other side ${pct(prob.get(t.token))}` : '' }, pct(t.prob)),
                h('td', { class: 'num' }, fmt(t.logit)))))));
        };
        fill(ivOut,
          h('p', {}, `${r.mode} · KL(clean ‖ edited) = `, h('b', { id: 'iv-kl' }, fmt(r.kl)), ' nats'),
          r.edits.length ? h('p', { class: 'muted' }, r.edits.map((e) =>
            `L${e.layer}/${e.feature}@${e.position}: ${fmt(e.clean_activation)} → ${fmt(e.new_activation)}`).join(' · ')) : null,
          h('div', { class: 'two' },
            table('before', r.before, 'iv-before', r.after),
            table('after', r.after, 'iv-after', r.before)));
        ivOut.setAttribute('data-state', 'ready');
      } catch (e) {
        fill(ivOut, h('div', { class: 'error' }, e.message));
        ivOut.setAttribute('data-state', 'error');
      }
    }

    draw();
    app.setAttribute('data-state', 'ready');

    // ?select=ID,ID (clicks them, the later ones with shift) and &run=1 (runs the
    // intervention with the default edits): links into a selection, and the browser tests
    const p = new URLSearchParams(location.search);
    const pre = (p.get('select') || '').split(',').filter((id) => nodeEls.has(id));
    pre.forEach((id, i) => nodeEls.get(id).dispatchEvent(new MouseEvent('click', { bubbles: true, shiftKey: i > 0 })));
    if (p.get('run') === '1') runIntervention();
  }

  // ---- routing -------------------------------------------------------------------

  async function route() {
    if (!STATIC) {
      try { META = await api('/api/meta'); } catch (e) { META = null; }
    }
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
    const g = path.match(/^\/graph\/([^/]+)$/);
    if (g) {
      let name = null;
      try { name = decodeURIComponent(g[1]); } catch (e) { /* malformed escape */ }
      return name === null ? showError('No such graph.') : graphPage(name);
    }
    const lf = path.match(/^\/layer\/(\d+)\/feature\/(\d+)$/);
    if (lf) return layerFeaturePage(parseInt(lf[1], 10), parseInt(lf[2], 10));
    if (path === '/graphs') return graphsPage();
    if (META && META.mode === 'transcoders' && (path === '/' || path === '/index.html')) return graphsPage();
    if (path === '/' || path === '/index.html') return listPage();
    if (path === '/prompt') return promptPage();
    if (path === '/steer') return steerPage();
    if (path === '/compare') return comparePage();
    showError('No such page.');
  }

  route();
})();

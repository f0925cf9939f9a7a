// tensorgate console: plain DOM, no framework, no build step (docs/console.md).
// Everything the server sends is put into the page with textContent or as an attribute value,
// never as HTML, so a model name or reason holding markup is shown as text.
"use strict";

(function () {
  const POLL_MS = 3000;
  const KEEP = 100; // snapshots kept per version for the sparklines: 5 minutes at 3 s
  const WINDOW = 5; // intervals the figures are computed over (about 15 s)
  const HISTORY_EVERY = 10; // polls between full reads of every history (30 s)
  const ACTIVE = ["shadowing", "progressing", "paused"]; // a rollout's phases before it ends
  const SVG = "http://www.w3.org/2000/svg";
  const TOKEN_KEY = "tensorgate.token";
  const ACTOR_KEY = "tensorgate.actor";

  const state = {
    models: [],
    histories: {},
    snapshots: [], // GET /admin/stats answers, oldest first
    timer: null,
    inflight: null, // the refresh under way (a promise)
    polls: 0,
    signatures: {}, // model -> its route, versions and standby when its history was last read
    forceHistory: false,
    rollouts: {}, // model -> its current or last rollout (GET .../rollouts/current), or null
    again: false,
    forms: {}, // model -> {key, dirty, node}
  };

  const $ = (id) => document.getElementById(id);
  const SIGN_IN = $("empty").textContent;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // -- the admin API ---------------------------------------------------------------------

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  function actor() {
    return ($("actor").value || "").trim() || "console";
  }

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(method, path, body) {
    const headers = { Authorization: "Bearer " + token(), Accept: "application/json" };
    const init = { method, headers, credentials: "omit", cache: "no-store", redirect: "error" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (exc) {
      throw new ApiError(0, "the gateway cannot be reached (" + exc.message + ")");
    }
    let doc = null;
    try {
      doc = await response.json();
    } catch (exc) {
      doc = null;
    }
    if (response.status === 401) {
      throw new ApiError(401, "the admin token was refused (401 unauthorized); sign in with the right token");
    }
    if (!response.ok) {
      const why = doc && typeof doc.error === "string" ? doc.error : response.statusText;
      throw new ApiError(response.status, why + " (" + response.status + ")");
    }
    return doc;
  }

  const enc = encodeURIComponent;
  const modelPath = (name) => "admin/models/" + enc(name);

  // -- messages --------------------------------------------------------------------------

  // source: "poll" for a failed refresh (cleared by the next good one), "action" otherwise.
  function showError(message, source) {
    const node = $("error");
    node.textContent = message;
    node.hidden = !message;
    node.dataset.source = source || "action";
  }

  function showNotice(message) {
    const node = $("notice");
    node.textContent = message;
    node.hidden = !message;
  }

  function setStatus(text) {
    $("status").textContent = text;
  }

  // -- confirmation ----------------------------------------------------------------------

  function confirmAction(text) {
    const dialog = $("confirm");
    $("confirm-text").textContent = text;
    $("confirm-reason").value = "";
    return new Promise((resolve) => {
      const form = $("confirm-form");
      const cancel = $("confirm-cancel");
      const finish = (value) => {
        form.removeEventListener("submit", onSubmit);
        cancel.removeEventListener("click", onCancel);
        dialog.removeEventListener("cancel", onCancel);
        if (dialog.open) dialog.close();
        resolve(value);
      };
      const onSubmit = (event) => {
        event.preventDefault();
        finish({ reason: $("confirm-reason").value.trim() });
      };
      const onCancel = (event) => {
        event.preventDefault();
        finish(null);
      };
      form.addEventListener("submit", onSubmit);
      cancel.addEventListener("click", onCancel);
      dialog.addEventListener("cancel", onCancel);
      dialog.showModal();
      $("confirm-reason").focus();
    });
  }

  // Run one changing call after confirmation; refresh at once afterwards.
  // resetForm: the model whose change form is rebuilt from the new route once this succeeds.
  async function act(description, method, path, body, resetForm) {
    const answer = await confirmAction(description);
    if (answer === null) return false;
    showNotice("");
    let failure = null;
    try {
      // A body may be a function: a route change is built from the route read from the server
      // now, after the confirmation, not from the page's last poll (which may predate the
      // previous action's answer, and would undo it).
      const payload = typeof body === "function" ? await body() : body;
      const doc = Object.assign({}, payload || {}, { actor: actor() });
      if (answer.reason) doc.reason = answer.reason;
      await api(method, path, doc);
      if (resetForm) delete state.forms[resetForm];
    } catch (exc) {
      // A 4xx is a refusal before any change; a 5xx or a lost connection may have changed something.
      const outcome = exc.status >= 400 && exc.status < 500 ? "Nothing was changed." : "It may have taken effect: check the history.";
      failure = "Refused: " + description + ": " + exc.message + ". " + outcome;
    }
    state.forceHistory = true;
    await refresh();
    // After the refresh, so that its own message (say, the same 401) does not hide this one.
    showError(failure || "");
    showNotice(failure ? "" : "Done: " + description);
    return !failure;
  }

  // -- figures ---------------------------------------------------------------------------

  function sumCodes(requests, filter) {
    let total = 0;
    for (const codes of Object.values(requests || {})) {
      for (const [code, count] of Object.entries(codes)) {
        if (!filter || filter(Number(code))) total += count;
      }
    }
    return total;
  }

  // Prometheus' histogram_quantile over the difference of two cumulative bucket lists.
  function quantile(q, le, now, before) {
    const counts = now.map((c, i) => c - (before ? before[i] || 0 : 0));
    const total = counts[counts.length - 1];
    if (!total) return null;
    const rank = q * total;
    let lower = 0;
    let below = 0;
    for (let i = 0; i < counts.length; i++) {
      const bound = le[i] === "+Inf" ? Infinity : Number(le[i]);
      if (counts[i] >= rank) {
        if (bound === Infinity) return lower; // past the last bound: its value is all we know
        const inBucket = counts[i] - below;
        return inBucket ? lower + ((bound - lower) * (rank - below)) / inBucket : bound;
      }
      below = counts[i];
      lower = bound;
    }
    return lower;
  }

  function versionStats(snapshot, model, version) {
    return snapshot ? snapshot.versions.find((v) => v.model === model && v.version === version) : undefined;
  }

  // Figures over the last WINDOW intervals, and per-interval series for the sparklines.
  function figures(model, version) {
    const snaps = state.snapshots;
    const last = snaps[snaps.length - 1];
    const current = versionStats(last, model, version);
    const result = { rate: null, errors: null, p50: null, p99: null, queue: current ? current.queue_depth : null, batch: null, rates: [], p99s: [] };
    if (!current || snaps.length < 2) return result;
    const first = snaps[Math.max(0, snaps.length - 1 - WINDOW)];
    const old = versionStats(first, model, version);
    const seconds = last.time - first.time;
    const requests = sumCodes(current.requests) - (old ? sumCodes(old.requests) : 0);
    const failures = sumCodes(current.requests, (c) => c >= 500) - (old ? sumCodes(old.requests, (c) => c >= 500) : 0);
    if (seconds > 0) result.rate = requests / seconds;
    if (requests > 0) result.errors = failures / requests;
    const le = current.latency.le;
    if (le.length) {
      const before = old && old.latency.le.length ? old.latency.cumulative : null;
      result.p50 = quantile(0.5, le, current.latency.cumulative, before);
      result.p99 = quantile(0.99, le, current.latency.cumulative, before);
    }
    const calls = current.batch.count - (old ? old.batch.count : 0);
    if (calls > 0) result.batch = (current.batch.sum - (old ? old.batch.sum : 0)) / calls;
    for (let i = 1; i < snaps.length; i++) {
      const a = versionStats(snaps[i - 1], model, version);
      const b = versionStats(snaps[i], model, version);
      const dt = snaps[i].time - snaps[i - 1].time;
      if (!b || dt <= 0) {
        result.rates.push(0);
        result.p99s.push(0);
        continue;
      }
      result.rates.push((sumCodes(b.requests) - (a ? sumCodes(a.requests) : 0)) / dt);
      const p = b.latency.le.length ? quantile(0.99, b.latency.le, b.latency.cumulative, a && a.latency.le.length ? a.latency.cumulative : null) : null;
      result.p99s.push(p || 0);
    }
    return result;
  }

  function sparkline(values, label) {
    const width = 120;
    const height = 24;
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 " + width + " " + height);
    svg.setAttribute("width", String(width));
    svg.setAttribute("height", String(height));
    svg.setAttribute("class", "spark");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", label);
    const title = document.createElementNS(SVG, "title");
    title.textContent = label;
    svg.append(title);
    if (values.length < 2) return svg;
    const max = Math.max(...values) || 1;
    const step = width / (Math.max(values.length, 20) - 1); // the first minute fills the width gradually
    const start = width - step * (values.length - 1);
    const points = values.map((v, i) => (start + i * step).toFixed(1) + "," + (height - 1 - (v / max) * (height - 2)).toFixed(1));
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", points.join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("class", "spark-line");
    svg.append(line);
    return svg;
  }

  const fmt = {
    rate: (v) => (v === null ? "–" : v >= 100 ? v.toFixed(0) : v.toFixed(1)),
    percent: (v) => (v === null ? "–" : (v * 100).toFixed(v < 0.01 && v > 0 ? 2 : 1) + "%"),
    ms: (v) => (v === null ? "–" : v * 1000 >= 10 ? (v * 1000).toFixed(0) + " ms" : (v * 1000).toFixed(2) + " ms"),
    number: (v) => (v === null || v === undefined ? "–" : Number.isInteger(v) ? String(v) : v.toFixed(1)),
  };

  // -- rendering -------------------------------------------------------------------------

  function routeText(route) {
    if (!route) return "no route";
    const parts = Object.entries(route.weights || {}).map(([v, w]) => "v" + v + " " + w + "%");
    const shadows = Object.entries(route.shadow || {}).map(([v, f]) => "v" + v + " @" + f);
    let text = parts.join(" · ") || "no traffic";
    if (shadows.length) text += "; shadow " + shadows.join(", ");
    if (route.sticky_header) text += "; sticky " + route.sticky_header;
    return text;
  }

  const COLOURS = 6;

  function colourOf(model, version) {
    const index = model.available.concat(Object.keys(model.versions)).indexOf(version);
    return "c" + ((index < 0 ? Number(version) : index) % COLOURS);
  }

  function renderRoute(model) {
    const route = model.route;
    const box = el("div", { class: "route" });
    box.append(el("h3", {}, "Route", route ? el("span", { class: "muted" }, " #" + route.seq) : null));
    if (!route) {
      box.append(el("p", { class: "muted" }, "no route: " + (model.error || "no version loaded")));
      return box;
    }
    const bar = el("div", { class: "weights", role: "img", "aria-label": "weights: " + routeText({ weights: route.weights }) });
    for (const [version, weight] of Object.entries(route.weights)) {
      if (!weight) continue;
      const part = el("div", { class: "segment " + colourOf(model, version), title: "v" + version + ": " + weight + "%" }, "v" + version + " " + weight + "%");
      part.style.flexGrow = String(weight); // CSSOM, allowed by the CSP (no inline style attribute)
      bar.append(part);
    }
    box.append(bar);
    const facts = el("dl", { class: "facts" });
    facts.append(el("dt", {}, "sticky header"), el("dd", {}, route.sticky_header || "none (random by weight)"));
    if (model.standby) facts.append(el("dt", {}, "standby"), el("dd", {}, "v" + model.standby));
    box.append(facts);
    const shadows = Object.entries(route.shadow || {});
    if (shadows.length) {
      const list = el("ul", { class: "shadows" });
      for (const [version, fraction] of shadows) {
        const stats = (model.shadow || {})[version] || {};
        const agreement = stats.agreement === null || stats.agreement === undefined ? "–" : fmt.percent(stats.agreement);
        const diff = stats.mean_abs_diff === null || stats.mean_abs_diff === undefined ? "–" : stats.mean_abs_diff.toPrecision(3);
        list.append(
          el("li", {},
            el("strong", {}, "shadow v" + version), " mirrors " + fmt.percent(fraction) + " · agreement " + agreement +
              " · mean |diff| " + diff + " · completed " + (stats.completed || 0) + ", failed " + (stats.failed || 0) +
              ", timed out " + (stats.timed_out || 0) + ", dropped " + (stats.dropped || 0) + " ",
            el("button", { class: "small secondary", onclick: () => removeShadow(model, version) }, "Remove shadow"))
        );
      }
      box.append(list);
    }
    return box;
  }

  // MLflow's provenance can be large (the run's parameters, metrics, data sets): a short line
  // with what identifies the version, and the whole record behind a disclosure.
  function provenanceCell(provenance, key) {
    if (!provenance) return "";
    const short = (v) => (typeof v === "string" && v.length > 12 ? v.slice(0, 12) + "…" : v);
    const parts = [];
    if (provenance.registered_model) parts.push(provenance.registered_model + (provenance.model_version ? " v" + provenance.model_version : ""));
    if (provenance.aliases && provenance.aliases.length) parts.push("@" + provenance.aliases.join(", @"));
    if (provenance.run_id) parts.push("run " + short(provenance.run_id));
    if (provenance.git_commit) parts.push("git " + short(provenance.git_commit));
    if (provenance.user) parts.push("by " + provenance.user);
    return el("details", { "data-key": key }, el("summary", {}, parts.join(" · ") || "provenance"), el("pre", {}, JSON.stringify(provenance, null, 1)));
  }

  function renderVersions(model) {
    const route = model.route || { weights: {}, shadow: {} };
    const numbers = Array.from(new Set(model.available.concat(Object.keys(model.versions)))).sort((a, b) => Number(a) - Number(b));
    const table = el("table", { class: "versions" });
    table.append(
      el("thead", {},
        el("tr", {}, ["version", "state", "served by", "sha256", "provenance", "weight", "req/s", "errors", "p50", "p99", "queue", "batch", "req/s · p99, 5 min", ""].map((h) => el("th", { scope: "col" }, h))))
    );
    const body = el("tbody");
    for (const number of numbers) {
      const status = model.versions[number];
      const f = figures(model.name, number);
      const weight = route.weights[number];
      const role = weight ? weight + "%" : route.shadow && route.shadow[number] !== undefined ? "shadow" : model.standby === number ? "standby" : "–";
      const served = status ? (status.remote_ready !== undefined ? "remote " + (status.provider || "") + (status.circuit ? " (circuit " + status.circuit + ")" : "") : status.provider || "") : "";
      const actions = el("td", { class: "actions wide", "data-label": "" });
      if (!status || status.state === "FAILED") {
        actions.append(el("button", { class: "small", onclick: () => loadVersion(model, number) }, "Load"));
      }
      if (status && status.state === "READY") {
        if (!weight) actions.append(el("button", { class: "small", onclick: () => swapTo(model, number) }, "Swap to"));
        if (!weight && !(route.shadow && route.shadow[number] !== undefined) && model.standby !== number) {
          actions.append(el("button", { class: "small secondary", onclick: () => unloadVersion(model, number) }, "Unload"));
        }
      }
      if (status && status.state === "FAILED") {
        actions.append(el("button", { class: "small secondary", onclick: () => unloadVersion(model, number) }, "Unload"));
      }
      const stateCell = el("td", { "data-label": "state" }, el("span", { class: "state " + (status ? status.state.toLowerCase() : "unloaded") }, status ? status.state : "not loaded"));
      if (status && status.error) stateCell.append(el("div", { class: "why" }, status.error));
      const sha = status && status.sha256 ? status.sha256 : "";
      body.append(
        el("tr", { "data-version": number },
          el("th", { scope: "row", "data-label": "version" }, el("span", { class: "dot " + colourOf(model, number) }), "v" + number),
          stateCell,
          el("td", { "data-label": "served by" }, served),
          el("td", { "data-label": "sha256", class: "mono", title: sha }, sha ? sha.slice(0, 12) + "…" : ""),
          el("td", { "data-label": "provenance", class: "small-text wide" }, provenanceCell(status && status.provenance, model.name + "/" + number)),
          el("td", { "data-label": "weight" }, role),
          el("td", { "data-label": "req/s", class: "num" }, fmt.rate(f.rate)),
          el("td", { "data-label": "errors", class: "num" + (f.errors ? " bad" : "") }, fmt.percent(f.errors)),
          el("td", { "data-label": "p50", class: "num" }, fmt.ms(f.p50)),
          el("td", { "data-label": "p99", class: "num" }, fmt.ms(f.p99)),
          el("td", { "data-label": "queue", class: "num" }, fmt.number(f.queue)),
          el("td", { "data-label": "batch", class: "num" }, fmt.number(f.batch)),
          el("td", { "data-label": "req/s · p99", class: "wide" },
            sparkline(f.rates, "requests per second, v" + number),
            sparkline(f.p99s, "p99 latency, v" + number)),
          actions)
      );
    }
    table.append(body);
    return el("div", { class: "scroll" }, table);
  }

  function renderDrift(model) {
    const rows = (state.snapshots.length ? state.snapshots[state.snapshots.length - 1].drift : []).filter((d) => d.model === model.name);
    if (!rows.length) return null;
    const table = el("table", { class: "drift" },
      el("thead", {}, el("tr", {}, ["version", "feature", "PSI"].map((h) => el("th", { scope: "col" }, h)))));
    const body = el("tbody");
    for (const row of rows) {
      body.append(el("tr", {},
        el("td", { "data-label": "version" }, "v" + row.version),
        el("td", { "data-label": "feature" }, row.feature),
        el("td", { "data-label": "PSI", class: "num" + (row.psi >= 0.2 ? " bad" : "") }, row.psi.toFixed(3))));
    }
    table.append(body);
    return el("div", { class: "drift-box" }, el("h3", {}, "Online drift"),
      el("p", { class: "muted" }, "PSI per feature against the reference; 0.2 and above (red) is a large shift."), el("div", { class: "scroll" }, table));
  }

  function seconds(value) {
    if (value === null || value === undefined) return "–";
    return value >= 120 ? Math.round(value / 60) + " min" : Math.max(0, Math.round(value)) + " s";
  }

  function renderRollout(model) {
    const rollout = state.rollouts[model.name];
    const box = el("div", { class: "rollout" });
    if (!rollout) {
      box.append(el("p", { class: "muted" }, "No rollout. Start one with tensorgate rollout start (docs/rollouts.md); it shows here with its analysis."));
      return box;
    }
    const running = ACTIVE.includes(rollout.phase);
    const spec = rollout.spec || {};
    const analysis = spec.analysis || {};
    const now = state.snapshots.length ? state.snapshots[state.snapshots.length - 1].time : Date.now() / 1000;
    box.append(el("h3", {}, "Rollout ", el("span", { class: "phase " + rollout.phase }, rollout.phase), el("span", { class: "muted" }, " " + rollout.id)));
    const stage = rollout.step < 0 ? "shadowing first" : "step " + (rollout.step + 1) + " of " + rollout.steps;
    const facts = el("dl", { class: "facts" });
    facts.append(
      el("dt", {}, "candidate"), el("dd", {}, "v" + rollout.from + " → v" + rollout.to + " · " + stage),
      el("dt", {}, "weights"), el("dd", {}, routeText({ weights: rollout.weights || {} })),
      el("dt", {}, "state"), el("dd", {}, rollout.message || "–"),
      el("dt", {}, "failed windows"), el("dd", {}, rollout.failures + " of " + (analysis.failure_limit || 1) + " allowed · " + rollout.analyses + " analyses"),
      el("dt", {}, "who, why"), el("dd", {}, (rollout.actor || "–") + (rollout.reason ? ": " + rollout.reason : "")),
    );
    if (running && rollout.phase !== "paused" && rollout.next_analysis_at) {
      facts.append(el("dt", {}, "next analysis"), el("dd", {}, "in " + seconds(rollout.next_analysis_at - now)));
    }
    if (!running && rollout.ended_at) facts.append(el("dt", {}, "ended"), el("dd", {}, seconds(now - rollout.ended_at) + " ago"));
    box.append(facts);
    const last = rollout.last_analysis;
    if (last) {
      box.append(el("p", { class: "small-text" }, "Last window: " + last.verdict + " → " + last.decision + " · " + last.requests + " requests in " + seconds(last.window_s) + (last.message ? " · " + last.message : "")));
      const table = el("table", { class: "checks" }, el("thead", {}, el("tr", {}, ["check", "value", "threshold", ""].map((h) => el("th", { scope: "col" }, h)))));
      const body = el("tbody");
      for (const check of last.checks || []) {
        const value = typeof check.value === "number" ? check.value.toPrecision(3) : "–";
        const threshold = typeof check.threshold === "number" ? String(check.threshold) : "–";
        body.append(el("tr", {},
          el("td", { "data-label": "check" }, check.name),
          el("td", { "data-label": "value", class: "num" + (check.ok === false ? " bad" : "") }, value),
          el("td", { "data-label": "threshold", class: "num" }, threshold),
          el("td", { "data-label": "" }, check.ok === false ? "fails" : check.ok ? "ok" : "–")));
      }
      table.append(body);
      if ((last.checks || []).length) box.append(el("div", { class: "scroll" }, table));
    }
    if (running) {
      const control = (action, text, style) =>
        el("button", { class: style, onclick: () => act(text, "POST", modelPath(model.name) + "/rollouts/current/" + action, {}, model.name) }, action[0].toUpperCase() + action.slice(1));
      const buttons = el("p", { class: "rollout-actions" });
      if (rollout.phase === "paused") buttons.append(control("resume", "resume the rollout of " + model.name + " (a fresh analysis window)", "secondary"));
      else buttons.append(control("pause", "pause the rollout of " + model.name + " (weights held, no analysis)", "secondary"));
      buttons.append(
        control("promote", "promote v" + rollout.to + " of " + model.name + " now (swap: 100% at once)", "secondary"),
        control("abort", "abort the rollout of " + model.name + " (the route before it comes back)", "danger"));
      box.append(buttons);
    }
    return box;
  }

  function renderHistory(model) {
    const entries = (state.histories[model.name] || []).slice().reverse();
    const box = el("div", { class: "history" });
    box.append(el("h3", {}, "History"),
      el("p", {}, el("button", { class: "secondary", onclick: () => rollback(model, null) }, "Roll back the last change")));
    if (!entries.length) {
      box.append(el("p", { class: "muted" }, "no changes yet"));
      return box;
    }
    const table = el("table", { class: "audit" },
      el("thead", {}, el("tr", {}, ["seq", "when", "who", "action", "why", "before", "after", ""].map((h) => el("th", { scope: "col" }, h)))));
    const body = el("tbody");
    for (const entry of entries.slice(0, 50)) {
      const when = new Date(entry.time);
      const changed = entry.before !== null && JSON.stringify(entry.before) !== JSON.stringify(entry.after);
      body.append(el("tr", {},
        el("td", { "data-label": "seq", class: "num" }, String(entry.seq)),
        el("td", { "data-label": "when", title: entry.time }, isNaN(when) ? entry.time : when.toLocaleString()),
        el("td", { "data-label": "who" }, entry.actor),
        el("td", { "data-label": "action" }, entry.action + (entry.version ? " v" + entry.version : "")),
        el("td", { "data-label": "why", class: "reason wide" }, entry.reason || ""),
        el("td", { "data-label": "before" }, entry.before ? routeText(entry.before) : "–"),
        el("td", { "data-label": "after" }, entry.after ? routeText(entry.after) : "–"),
        el("td", { "data-label": "" }, changed ? el("button", { class: "small secondary", title: "restore the route in force after this change", onclick: () => rollback(model, entry.seq) }, "Restore #" + entry.seq) : null)));
    }
    table.append(body);
    box.append(el("div", { class: "scroll" }, table));
    return box;
  }

  // The change form is rebuilt only when the route or the versions change and the operator has
  // not started typing into it, so a refresh never throws away what is being typed.
  function renderForm(model) {
    const ready = Object.entries(model.versions).filter(([, s]) => s.state === "READY").map(([v]) => v);
    const route = model.route || { weights: {}, shadow: {}, sticky_header: null };
    const key = JSON.stringify([route, ready]);
    const kept = state.forms[model.name];
    if (kept && (kept.key === key || kept.dirty)) return kept.node;
    const form = el("form", { class: "change", autocomplete: "off" });
    const markDirty = () => {
      state.forms[model.name].dirty = true;
    };
    form.addEventListener("input", markDirty);
    const weights = el("fieldset", {}, el("legend", {}, "Weights (percent, summing to 100)"));
    for (const version of ready) {
      weights.append(el("label", { class: "weight" }, "v" + version + " ",
        el("input", { type: "number", min: 0, max: 100, step: 1, name: "w" + version, "data-version": version, value: route.weights[version] || 0, inputmode: "numeric" })));
    }
    weights.append(el("label", { class: "weight" }, "sticky header ",
      el("input", { type: "text", name: "sticky", value: route.sticky_header || "", placeholder: "none", maxlength: 256 })));
    weights.append(el("button", { type: "submit" }, "Set weights"));
    form.append(weights);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      setWeights(model, form);
    });
    const shadowable = ready.filter((v) => !route.weights[v] && route.shadow[v] === undefined);
    const shadow = el("fieldset", {}, el("legend", {}, "Add a shadow (a copy of the traffic, never answered)"));
    if (shadowable.length) {
      const select = el("select", { name: "shadow" }, shadowable.map((v) => el("option", { value: v }, "v" + v)));
      const fraction = el("input", { type: "number", name: "fraction", min: 0.01, max: 1, step: 0.01, value: 1 });
      shadow.append(el("label", {}, "version ", select), el("label", {}, "fraction ", fraction),
        el("button", { type: "button", class: "secondary", onclick: () => addShadow(model, select.value, Number(fraction.value)) }, "Add shadow"));
    } else {
      shadow.append(el("span", { class: "muted" }, "no READY version without a role: load one first"));
    }
    form.append(shadow);
    state.forms[model.name] = { key, dirty: false, node: form };
    return form;
  }

  function renderModel(model) {
    const section = el("section", { class: "card model", "data-model": model.name });
    section.append(el("h2", {}, model.name));
    if (model.error) section.append(el("p", { class: "error-inline" }, model.error));
    const columns = el("div", { class: "columns" }, renderRoute(model), el("div", { class: "change-box" }, el("h3", {}, "Change the route"), renderForm(model)));
    section.append(columns, renderRollout(model), renderVersions(model));
    const drift = renderDrift(model);
    if (drift) section.append(drift);
    section.append(renderHistory(model));
    return section;
  }

  function render() {
    const container = $("models");
    // Keep what the operator is doing across a refresh: the typed values (the change forms are
    // reused nodes, renderForm), the focused field and its cursor, and the open disclosures.
    const active = document.activeElement;
    const caret = active && typeof active.selectionStart === "number" ? [active.selectionStart, active.selectionEnd] : null;
    const open = new Set(Array.from(container.querySelectorAll("details[open]"), (d) => d.dataset.key));
    container.replaceChildren(...state.models.map(renderModel));
    for (const details of container.querySelectorAll("details")) details.open = open.has(details.dataset.key);
    if (active && active !== document.body && container.contains(active) && document.activeElement !== active) {
      active.focus();
      if (caret) active.setSelectionRange(caret[0], caret[1]);
    }
    const empty = $("empty");
    empty.textContent = token() ? "No models yet." : SIGN_IN;
    empty.hidden = !!token() && state.models.length > 0;
  }

  // -- actions ---------------------------------------------------------------------------

  // The model as the last refresh saw it: a form or button built earlier must not act on an
  // older route (its shadows, its sticky header) than the one in force.
  function current(model) {
    return state.models.find((m) => m.name === model.name) || model;
  }

  // The model's route as the server holds it now (PUT replaces the whole route).
  const serverRoute = (model) => api("GET", modelPath(model.name) + "/route");

  async function setWeights(stale, form) {
    const model = current(stale);
    const weights = {};
    let total = 0;
    for (const input of form.querySelectorAll("input[data-version]")) {
      const value = Number(input.value);
      if (!Number.isInteger(value) || value < 0 || value > 100) {
        showError("Weights are whole numbers from 0 to 100 (v" + input.dataset.version + ": " + input.value + "). Nothing was changed.");
        return;
      }
      if (value) weights[input.dataset.version] = value;
      total += value;
    }
    if (total !== 100) {
      showError("The weights sum to " + total + ", not 100. Nothing was changed.");
      return;
    }
    const sticky = form.querySelector("input[name=sticky]").value.trim();
    const shown = { weights, shadow: (model.route || {}).shadow || {}, sticky_header: sticky || null };
    const body = async () => Object.assign({}, shown, { shadow: (await serverRoute(model)).shadow || {} });
    await act("set the route of " + model.name + " to " + routeText(shown), "PUT", modelPath(model.name) + "/route", body, model.name);
  }

  async function addShadow(stale, version, fraction) {
    const model = current(stale);
    const route = model.route;
    if (!route) return;
    if (!(fraction > 0 && fraction <= 1)) {
      showError("A shadow's fraction is in (0, 1]. Nothing was changed.");
      return;
    }
    const body = async () => {
      const now = await serverRoute(model);
      return { weights: now.weights, shadow: Object.assign({}, now.shadow, { [version]: fraction }), sticky_header: now.sticky_header };
    };
    await act("add v" + version + " as a shadow of " + model.name + " (" + fmt.percent(fraction) + " of requests)", "PUT", modelPath(model.name) + "/route", body, model.name);
  }

  async function removeShadow(stale, version) {
    const model = current(stale);
    const body = async () => {
      const now = await serverRoute(model);
      const shadow = Object.assign({}, now.shadow);
      delete shadow[version];
      return { weights: now.weights, shadow, sticky_header: now.sticky_header };
    };
    await act("stop shadowing " + model.name + " with v" + version, "PUT", modelPath(model.name) + "/route", body, model.name);
  }

  const loadVersion = (model, version) => act("load " + model.name + " v" + version + " (it gets no traffic yet)", "POST", modelPath(model.name) + "/versions/" + enc(version) + "/load", {}, model.name);
  const unloadVersion = (model, version) => act("unload " + model.name + " v" + version, "POST", modelPath(model.name) + "/versions/" + enc(version) + "/unload", {}, model.name);
  const swapTo = (model, version) => act("swap " + model.name + " to v" + version + " (100% of traffic at once)", "POST", modelPath(model.name) + "/swap", { version }, model.name);

  function rollback(model, seq) {
    const history = state.histories[model.name] || [];
    let what;
    if (seq === null) {
      // The server's rule: the latest entry that changed the route; its "before" comes back.
      const last = history.filter((e) => e.before !== null && JSON.stringify(e.before) !== JSON.stringify(e.after)).pop();
      what = "roll " + model.name + " back to the route before the last change" + (last ? " (#" + last.seq + "): " + routeText(last.before) : "");
    } else {
      const entry = history.find((e) => e.seq === seq);
      what = "roll " + model.name + " back to the route in force after change #" + seq + (entry && entry.after ? ": " + routeText(entry.after) : "");
    }
    return act(what, "POST", modelPath(model.name) + "/rollback", seq === null ? {} : { to: seq }, model.name);
  }

  // -- polling ---------------------------------------------------------------------------

  function signature(model) {
    return JSON.stringify([model.route, model.versions, model.standby]);
  }

  // One refresh at a time; a call during one (say, right after an action) runs another after it,
  // so what the action changed is shown at once rather than at the next tick.
  function refresh() {
    if (!token()) return Promise.resolve();
    if (state.inflight) {
      state.again = true;
      return state.inflight;
    }
    state.inflight = (async () => {
      do {
        state.again = false;
        await refreshOnce();
      } while (state.again && token());
      state.inflight = null;
    })();
    return state.inflight;
  }

  async function refreshOnce() {
    try {
      const [models, stats] = await Promise.all([api("GET", "admin/models"), api("GET", "admin/stats")]);
      // A history (up to 1,000 entries) is read again only when its model's route, versions or
      // standby changed (every change the history records changes one of them), after an
      // action, and every HISTORY_EVERY polls in any case.
      const full = state.polls % HISTORY_EVERY === 0 || state.forceHistory;
      state.forceHistory = false;
      state.polls += 1;
      const stale = models.models.filter((m) => full || state.signatures[m.name] !== signature(m) || !(m.name in state.histories));
      const histories = await Promise.all(stale.map((m) => api("GET", modelPath(m.name) + "/history").catch(() => null)));
      const kept = {};
      for (const m of models.models) if (m.name in state.histories) kept[m.name] = state.histories[m.name];
      stale.forEach((m, i) => {
        if (histories[i] !== null) {
          kept[m.name] = histories[i].history;
          state.signatures[m.name] = signature(m);
        }
      });
      // The rollout: every poll while one runs, else with the history (a rollout's start changes
      // the route or the shadows, so the signature rule sees it).
      const watch = models.models.filter((m) => stale.includes(m) || ACTIVE.includes((state.rollouts[m.name] || {}).phase));
      const rollouts = await Promise.all(watch.map((m) => api("GET", modelPath(m.name) + "/rollouts/current").catch((exc) => (exc.status === 404 ? null : undefined))));
      const keptRollouts = {};
      for (const m of models.models) if (m.name in state.rollouts) keptRollouts[m.name] = state.rollouts[m.name];
      watch.forEach((m, i) => {
        if (rollouts[i] !== undefined) keptRollouts[m.name] = rollouts[i];
      });
      state.rollouts = keptRollouts;
      state.models = models.models;
      state.histories = kept;
      state.snapshots.push(stats);
      if (state.snapshots.length > KEEP) state.snapshots.shift();
      if ($("error").dataset.source === "poll") showError("");
      setStatus("updated " + new Date().toLocaleTimeString() + " · every " + POLL_MS / 1000 + " s");
      render();
    } catch (exc) {
      showError("Cannot refresh: " + exc.message + (state.models.length ? " (showing the last figures)" : ""), "poll");
      setStatus("refresh failed");
    }
  }

  function schedule() {
    clearInterval(state.timer);
    state.timer = null;
    if (token() && !document.hidden) {
      state.timer = setInterval(refresh, POLL_MS);
      refresh();
    }
  }

  function start() {
    $("actor").value = sessionStorage.getItem(ACTOR_KEY) || "";
    $("signin").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("token").value.trim();
      if (!value) return;
      sessionStorage.setItem(TOKEN_KEY, value);
      sessionStorage.setItem(ACTOR_KEY, $("actor").value.trim());
      $("token").value = "";
      showError("");
      setStatus("signed in");
      schedule();
    });
    $("actor").addEventListener("change", () => sessionStorage.setItem(ACTOR_KEY, $("actor").value.trim()));
    $("signout").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      state.models = [];
      state.snapshots = [];
      state.forms = {};
      state.histories = {};
      state.signatures = {};
      state.rollouts = {};
      render();
      setStatus("not signed in");
      schedule();
    });
    // A hidden tab does not poll: the console costs nothing while nobody looks at it.
    document.addEventListener("visibilitychange", schedule);
    if (token()) setStatus("signed in");
    schedule();
  }

  start();
})();

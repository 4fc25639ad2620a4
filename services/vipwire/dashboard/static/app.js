// vipwire dashboard: fills the page shells from the JSON API and follows /api/events.
// Everything shown is set as text (never as HTML): names and messages come from clusters.
"use strict";

(() => {
  const STATES = ["ready", "programmed", "assigned", "pending", "failed", "deleting"];
  const HOPS = [
    ["watcher", "Watcher"],
    ["ipam", "ipam"],
    ["lbdriver", "lbdriver"],
    ["nodeagent", "Node agents"],
    ["status", "Status"],
  ];

  // --- small helpers -----------------------------------------------------------

  const $ = (selector, root = document) => root.querySelector(selector);

  function h(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else if (name === "data") Object.assign(node.dataset, value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  async function api(path) {
    const response = await fetch(path, { headers: { Accept: "application/json" } });
    if (!response.ok && response.status !== 404) throw new Error(`${path}: HTTP ${response.status}`);
    return { status: response.status, body: await response.json() };
  }

  const numberFormat = new Intl.NumberFormat();
  const fmt = {
    int: (n) => (n === null || n === undefined ? "—" : numberFormat.format(n)),
    ms(value) {
      if (value === null || value === undefined) return "—";
      if (value < 10) return `${value.toFixed(2)} ms`;
      if (value < 1000) return `${value.toFixed(1)} ms`;
      return `${(value / 1000).toFixed(2)} s`;
    },
    clock(t) {
      if (!t) return "—";
      const d = new Date(t * 1000);
      const pad = (n, w = 2) => String(n).padStart(w, "0");
      return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
    },
    ago(t, now) {
      if (!t) return "never";
      const s = Math.max(0, (now || Date.now() / 1000) - t);
      if (s < 60) return `${Math.round(s)} s ago`;
      if (s < 3600) return `${Math.round(s / 60)} min ago`;
      return `${Math.round(s / 3600)} h ago`;
    },
    list: (items) => (items && items.length ? items.join(", ") : "—"),
  };

  function debounce(fn, wait) {
    let timer = null;
    return (...args) => {
      clearTimeout(timer);
      timer = setTimeout(() => fn(...args), wait);
    };
  }

  // At most one call per `wait` ms, and always one after the last request.
  function throttle(fn, wait) {
    let last = 0;
    let timer = null;
    return () => {
      const due = last + wait - Date.now();
      if (timer) return;
      timer = setTimeout(() => {
        timer = null;
        last = Date.now();
        fn();
      }, Math.max(0, due));
    };
  }

  const badge = (state, title) => h("span", { class: `badge ${state}`, title }, state);
  const hop = (name) => h("span", { class: `hop ${name}` }, name);
  const serviceHref = (row) =>
    `/services/${encodeURIComponent(row.cluster)}/${encodeURIComponent(row.namespace)}/${encodeURIComponent(row.name)}`;
  const traceUrl = (base, id) => (base && id ? `${base.replace(/\/+$/, "")}/trace/${id}` : null);

  function healthOf(status) {
    if (!status || !status.health) return ["unknown", "no answer from the lbdriver"];
    if (status.health === "closed") return ["healthy", "circuit breaker closed"];
    if (status.health === "half-open") return ["probing", "circuit breaker half-open: probing"];
    if (status.health === "open") return ["failing", "circuit breaker open: failing fast"];
    return [status.health, ""];
  }

  function setRows(tbody, rows) {
    tbody.replaceChildren(...rows);
  }

  // --- live updates ----------------------------------------------------------------

  const listeners = {};
  function on(event, fn) {
    (listeners[event] = listeners[event] || []).push(fn);
  }

  function connect() {
    const live = $("#live");
    const text = $("#live-text");
    const source = new EventSource("/api/events");
    const state = (on, label) => {
      live.classList.toggle("on", on);
      live.classList.toggle("off", !on);
      text.textContent = label;
    };
    source.addEventListener("open", () => state(true, "live"));
    source.addEventListener("error", () => state(false, "reconnecting"));
    for (const name of ["hello", "services", "clusters", "control"]) {
      source.addEventListener(name, (event) => {
        let data = {};
        try {
          data = JSON.parse(event.data);
        } catch (_) {
          return;
        }
        if (name === "hello") state(true, "live");
        for (const fn of listeners[name] || []) fn(data);
      });
    }
  }

  // --- banners and "as of", on every page ---------------------------------------------

  function bannersAndTime() {
    async function load() {
      const { body } = await api("/api/banners");
      const items = body.banners.map((b) => h("div", { class: `banner ${b.level}`, data: { kind: b.kind } },
        b.text, b.href ? h("a", { href: b.href }, "Show") : null));
      $("#banners").replaceChildren(...items);
      const asOf = $("#as-of");
      asOf.textContent = body.last_event ? `as of ${fmt.clock(body.last_event)}` : "no bus message yet";
      asOf.title = `last bus message ${fmt.ago(body.last_event, body.now)}; page loaded ${fmt.clock(body.now)}`;
    }
    const refresh = throttle(() => load().catch(console.error), 1000);
    on("services", refresh);
    on("clusters", refresh);
    on("control", refresh);
    setInterval(refresh, 10000);
    load().catch(console.error);
  }

  // --- overview ------------------------------------------------------------------

  function overviewPage() {
    const card = (label, value, sub, tone) =>
      h("div", { class: `card ${tone || ""}` }, h("div", { class: "label" }, label),
        h("div", { class: "value" }, value), sub ? h("div", { class: "sub" }, sub) : null);

    function stack(states, total) {
      const bar = h("div", { class: "stack", title: STATES.map((s) => `${s}: ${states[s] || 0}`).join(", ") });
      for (const s of STATES) {
        if (!states[s]) continue;
        const seg = h("span", { class: s });
        seg.style.width = `${(states[s] / Math.max(total, 1)) * 100}%`;
        bar.append(seg);
      }
      return bar;
    }

    function meter(used, size) {
      const share = size ? used / size : 0;
      const fill = h("div", { class: `fill ${share >= 0.95 ? "full" : share >= 0.8 ? "high" : ""}` });
      fill.style.width = `${Math.min(100, share * 100)}%`;
      return h("div", { class: "meter" }, h("div", { class: "track" }, fill),
        h("span", { class: "text" }, `${fmt.int(used)} / ${fmt.int(size)} (${(share * 100).toFixed(1)}%)`));
    }

    async function load() {
      const { body } = await api("/api/overview");
      const o = body.overview;
      const c = o.convergence;
      const inFlight = (o.states.pending || 0) + (o.states.assigned || 0) + (o.states.programmed || 0);
      const minutes = Math.round(c.window_s / 60);
      $("#cards").replaceChildren(
        card("Services", fmt.int(o.services), o.dropped ? `${fmt.int(o.dropped)} not tracked (max_services)` : `${o.clusters.length} clusters`),
        card("Ready", fmt.int(o.states.ready), o.services ? `${((o.states.ready / o.services) * 100).toFixed(1)}% of all` : "", o.states.ready ? "ok" : ""),
        card("In progress", fmt.int(inFlight), `${fmt.int(o.states.deleting)} deleting`),
        card("Failed", fmt.int(o.states.failed), o.states.failed ? "see the Services table" : "none", o.states.failed ? "bad" : ""),
        card("Convergence p50", fmt.ms(c.p50_ms), `${fmt.int(c.count)} changes, last ${minutes} min`),
        card("Convergence p99", fmt.ms(c.p99_ms), c.max_ms !== null ? `max ${fmt.ms(c.max_ms)}` : "no changes yet"),
      );

      setRows($("#clusters tbody"), o.clusters.map((cl) => h("tr", {},
        h("td", {}, h("a", { href: `/services?cluster=${encodeURIComponent(cl.name)}`, class: "svc-name" }, cl.name)),
        h("td", { class: "num" }, fmt.int(cl.services)),
        h("td", {}, h("div", { class: "states" }, stack(cl.states, cl.services),
          h("span", { class: "muted" }, STATES.filter((st) => cl.states[st]).map((st) => `${fmt.int(cl.states[st])} ${st}`).join(" · ") || "no Services"))),
        h("td", { class: "num" }, `${cl.nodes_ready} / ${cl.nodes}`),
        h("td", { class: "num" }, fmt.int(cl.agents)),
      )));

      const control = body.control;
      const busPools = Object.fromEntries(o.pools.map((p) => [p.name, p]));
      const pools = control.pools
        ? control.pools.map((p) => ({ ...p, services: (busPools[p.name] || {}).services || 0 }))
        : o.pools.map((p) => ({ name: p.name, appliance_group: p.appliance_group, services: p.services, in_use: p.vips, size: null }));
      setRows($("#pools tbody"), pools.map((p) => h("tr", {},
        h("td", { class: "svc-name" }, p.name),
        h("td", {}, p.appliance_group || "—"),
        h("td", { class: "num" }, fmt.int(p.services)),
        h("td", {}, p.size ? meter(p.in_use || 0, p.size) : h("span", { class: "muted" }, `${fmt.int(p.in_use)} in use · size unknown`)),
      )));
      $("#pools-note").textContent = control.pools ? "" : `Pool sizes unknown: ${control.ipam_error || "ipam has not answered yet"}.`;

      const status = Object.fromEntries((control.appliances || []).map((a) => [a.name, a]));
      const names = [...new Set([...Object.keys(status), ...o.appliances.map((a) => a.name)])].sort();
      const busApps = Object.fromEntries(o.appliances.map((a) => [a.name, a]));
      setRows($("#appliances-brief tbody"), names.map((name) => {
        const [health, title] = healthOf(status[name]);
        const bus = busApps[name] || {};
        const vs = status[name] && status[name].virtual_servers !== null ? status[name].virtual_servers : bus.virtual_servers;
        return h("tr", {},
          h("td", {}, h("a", { href: "/appliances", class: "svc-name" }, name)),
          h("td", {}, badge(health, title)),
          h("td", { class: "num" }, fmt.int(vs)),
          h("td", { class: "num" }, fmt.int(bus.services || 0)));
      }));
      $("#appliances-note").textContent = control.appliances ? "" : `Health unknown: ${control.lbdriver_error || "the lbdriver has not answered yet"}.`;
    }

    const refresh = throttle(() => load().catch(console.error), 1000);
    on("services", refresh);
    on("clusters", refresh);
    on("control", refresh);
    setInterval(refresh, 10000);
    load().catch(console.error);
  }

  // --- services table --------------------------------------------------------------

  function servicesPage() {
    const params = new URLSearchParams(location.search);
    const filters = {
      q: params.get("q") || "",
      cluster: params.get("cluster") || "",
      namespace: params.get("namespace") || "",
      state: params.get("state") || "",
      sort: params.get("sort") || "",
      desc: params.get("desc") || "",
      page: Number(params.get("page")) || 1,
    };
    const tbody = $("#services-table tbody");
    let known = null; // keys shown before, to mark new rows
    let current = null;

    $("#q").value = filters.q;

    function renderRow(row, cls) {
      const applied = row.nodes_total ? `${row.nodes_applied}/${row.nodes_total}` : "—";
      return h("tr", { data: { key: row.key }, class: cls },
        h("td", {}, h("a", { class: "svc-name", href: serviceHref(row) }, row.name),
          h("div", { class: "svc-ns" }, row.namespace)),
        h("td", {}, row.cluster),
        h("td", {}, badge(row.state, row.error || undefined)),
        h("td", { class: "mono" }, fmt.list(row.vips)),
        h("td", {}, row.appliance || "—"),
        h("td", { class: "num" }, applied),
        h("td", { class: "num" }, fmt.ms(row.convergence_ms)),
        h("td", { class: "reason wrap" }, row.error ? h("span", { title: row.error }, row.error) : ""),
      );
    }

    function showSort() {
      for (const th of document.querySelectorAll("#services-table th[data-sort]")) {
        const active = th.dataset.sort === (filters.sort || "");
        if (active) th.setAttribute("aria-sort", filters.desc ? "descending" : "ascending");
        else th.removeAttribute("aria-sort");
      }
    }

    // A click sorts by the column; a second click on it reverses the order.
    for (const th of document.querySelectorAll("#services-table th[data-sort]")) {
      const choose = () => {
        const column = th.dataset.sort;
        if (filters.sort === column) filters.desc = filters.desc ? "" : "1";
        else {
          filters.sort = column;
          filters.desc = "";
        }
        filters.page = 1;
        showSort();
        load().catch(console.error);
      };
      th.addEventListener("click", choose);
      th.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault();
          choose();
        }
      });
    }
    showSort();

    function fillSelect(select, values, selected, label, counts) {
      const options = [h("option", { value: "" }, label)];
      for (const v of values) {
        const text = counts ? `${v} (${fmt.int(counts[v] || 0)})` : v;
        options.push(h("option", { value: v, selected: v === selected }, text));
      }
      select.replaceChildren(...options);
      select.value = selected;
    }

    function syncUrl() {
      const p = new URLSearchParams();
      for (const [k, v] of Object.entries(filters)) if (v && !(k === "page" && v === 1)) p.set(k, v);
      const query = p.toString();
      history.replaceState(null, "", query ? `?${query}` : location.pathname);
    }

    async function load() {
      const p = new URLSearchParams({ per_page: "50" });
      for (const [k, v] of Object.entries(filters)) if (v) p.set(k, v);
      const { body } = await api(`/api/services?${p}`);
      current = body;
      filters.page = body.page;
      const keys = new Set(body.rows.map((r) => r.key));
      setRows(tbody, body.rows.map((r) => renderRow(r, known && !known.has(r.key) ? "fresh" : undefined)));
      known = known ? new Set([...known, ...keys]) : keys;
      $("#empty").hidden = body.rows.length > 0;
      fillSelect($("#cluster"), body.facets.clusters, filters.cluster, "All clusters");
      fillSelect($("#namespace"), body.facets.namespaces, filters.namespace, "All namespaces");
      fillSelect($("#state"), STATES.filter((s) => s in body.facets.states), filters.state, "All states", body.facets.states);
      const first = body.matched ? (body.page - 1) * body.per_page + 1 : 0;
      const last = Math.min(body.matched, body.page * body.per_page);
      $("#page-info").textContent = `${fmt.int(first)}–${fmt.int(last)} of ${fmt.int(body.matched)}`;
      $("#count").textContent = body.matched === body.total ? fmt.int(body.total) : `${fmt.int(body.matched)} of ${fmt.int(body.total)}`;
      $("#prev").disabled = body.page <= 1;
      $("#next").disabled = body.page >= body.pages;
      syncUrl();
    }

    const reload = throttle(() => load().catch(console.error), 400);
    const apply = () => {
      filters.page = 1;
      load().catch(console.error);
    };
    $("#q").addEventListener("input", debounce(() => {
      filters.q = $("#q").value.trim();
      apply();
    }, 180));
    for (const name of ["cluster", "namespace", "state"]) {
      $(`#${name}`).addEventListener("change", (event) => {
        filters[name] = event.target.value;
        apply();
      });
    }
    $("#filters").addEventListener("submit", (event) => event.preventDefault());
    $("#prev").addEventListener("click", () => {
      filters.page = Math.max(1, filters.page - 1);
      load().catch(console.error);
    });
    $("#next").addEventListener("click", () => {
      filters.page += 1;
      load().catch(console.error);
    });

    on("services", (data) => {
      if (data.reload || data.added.length || data.removed.length) {
        reload();
        return;
      }
      for (const row of data.rows) {
        const old = tbody.querySelector(`tr[data-key="${CSS.escape(row.key)}"]`);
        if (!old) continue;
        if (filters.state && row.state !== filters.state) {
          reload(); // it no longer belongs on this page
          continue;
        }
        old.replaceWith(renderRow(row, "touched"));
      }
    });
    on("clusters", () => current && reload());
    load().catch(console.error);
  }

  // --- one Service ---------------------------------------------------------------------

  function servicePage() {
    const parts = location.pathname.split("/").slice(2).map(decodeURIComponent);
    const key = parts.join("/");
    const [cluster, namespace, name] = parts;
    $("#crumb").textContent = key;
    document.title = `${name} · vipwire`;

    const fact = (label, ...value) => h("div", {}, h("dt", {}, label), h("dd", {}, ...value));

    function renderFacts(s) {
      const row = s.row;
      const members = s.member_list.length
        ? s.member_list.map((m) => h("span", { class: "chip" }, `${m.node} ${m.address}`))
        : ["—"];
      const nodes = s.nodes.length
        ? s.nodes.map((n) => h("span", { class: `chip ${n.applied ? "on" : ""}`, title: n.applied ? `serves the VIP (generation ${n.generation})` : "does not serve the VIP" }, n.node))
        : ["no node agent has reported"];
      const ports = s.ports.length ? s.ports.map((p) => `${p.port}/${p.protocol}`).join(", ") : "—";
      $("#facts").replaceChildren(
        fact("VIP", h("span", { class: "mono" }, fmt.list(row.vips))),
        fact("Status ingress", h("span", { class: "mono" }, fmt.list(s.status_vips))),
        fact("Ports", ports),
        fact("Pool", row.pool || "—", s.appliance_group ? h("span", { class: "muted" }, ` · group ${s.appliance_group}`) : null),
        fact("Appliance", row.appliance || "—"),
        fact("Traffic policy", s.external_traffic_policy),
        fact("Convergence", fmt.ms(row.convergence_ms)),
        fact("Nodes applied", row.nodes_total ? `${row.nodes_applied} of ${row.nodes_total}` : "—"),
        fact("Members", ...members),
        fact("Node agents", ...nodes),
        fact("Cluster / namespace", `${cluster} / ${namespace}`),
        fact("UID", h("span", { class: "mono" }, s.uid || "—")),
      );
    }

    function renderWaterfall(wf, jaeger) {
      const box = $("#waterfall");
      const link = $("#trace-link");
      if (!wf) {
        box.replaceChildren(h("p", { class: "muted" }, "No change of this Service has been seen since the dashboard started."));
        link.hidden = true;
        return;
      }
      const url = traceUrl(jaeger, wf.trace_id);
      link.hidden = !url;
      if (url) link.href = url;
      box.replaceChildren(...waterfallNodes(wf, jaeger));
    }

    function renderHistory(changes, jaeger) {
      const earlier = changes.slice(1);
      const box = $("#history");
      if (!earlier.length) {
        box.replaceChildren(h("p", { class: "muted" }, "None the timeline still holds."));
        return;
      }
      box.replaceChildren(...earlier.map((wf) => h("div", { class: "change waterfall" }, ...waterfallNodes(wf, jaeger))));
    }

    function traceRef(id, jaeger, length) {
      const url = traceUrl(jaeger, id);
      return url
        ? h("a", { href: url, target: "_blank", rel: "noopener noreferrer", class: "mono", title: id }, id.slice(0, length))
        : h("span", { class: "mono", title: id }, id.slice(0, length));
    }

    function waterfallNodes(wf, jaeger) {
      const total = Math.max(wf.total_ms, 0.001);
      const pct = (ms) => `${Math.min(100, (ms / total) * 100)}%`;
      const failed = wf.bars.find((b) => b.failed);
      const written = wf.bars.find((b) => b.hop === "status");
      const outcome = failed ? `${failed.hop} failed after ` : written ? "status written after " : "in progress, ";
      const took = failed ? failed.end_ms : written ? written.end_ms : wf.total_ms;
      const meta = h("p", { class: "wf-meta" }, "Started ", h("strong", {}, fmt.clock(wf.started)), " · ",
        outcome, h("strong", {}, fmt.ms(took)),
        wf.trace_id ? h("span", {}, " · trace ", traceRef(wf.trace_id, jaeger, 16)) : null);
      const axis = h("div", { class: "wf-track" });
      for (const f of [0, 0.25, 0.5, 0.75, 1]) {
        const tick = h("span", { class: "tick" }, fmt.ms(total * f));
        tick.style.left = `${f * 100}%`;
        axis.append(tick);
      }
      const rows = [h("div", { class: "wf-row wf-axis" }, h("div", {}), axis)];
      const bars = Object.fromEntries(wf.bars.map((b) => [b.hop, b]));
      const failedAt = wf.bars.find((b) => b.failed);
      for (const [id, label] of HOPS) {
        const bar = bars[id];
        const track = h("div", { class: "wf-track" });
        if (bar) {
          const mark = id === "watcher";
          const el = h("div", { class: `bar ${id}${mark ? " mark" : ""}${bar.failed ? " failed" : ""}`, title: bar.detail, data: { hop: id } });
          el.style.left = pct(bar.start_ms);
          if (!mark) el.style.width = pct(bar.end_ms - bar.start_ms);
          track.append(el);
          const took = bar.end_ms - bar.start_ms;
          const text = mark ? "t = 0" : `${bar.failed ? "failed after " : "+"}${fmt.ms(took)}`;
          const time = h("span", { class: `bar-time${bar.failed ? " failed" : ""}` }, text);
          const start = bar.start_ms / total;
          const width = took / total;
          if (mark || start + width <= 0.8) {
            time.style.left = `calc(${pct(bar.end_ms)} + ${mark ? 8 : 0}px)`;
          } else if (width >= 0.15) {
            time.classList.add("inside");
            time.style.right = `${(1 - start - width) * 100}%`;
          } else {
            time.style.right = `${(1 - start) * 100}%`;
          }
          track.append(time);
        } else {
          const why = failedAt ? `not reached: ${failedAt.hop} failed` : wf.complete ? "not part of this change" : "waiting…";
          track.append(h("span", { class: "wf-wait" }, why));
        }
        rows.push(h("div", { class: "wf-row", data: { hop: id } },
          h("div", { class: "wf-label" }, label, h("small", {}, bar ? bar.label : "")), track));
      }
      return [meta, ...rows];
    }

    function renderTimeline(entries, jaeger) {
      setRows($("#timeline tbody"), entries.map((e) => {
        const url = traceUrl(jaeger, e.trace_id);
        const trace = e.trace_id
          ? url
            ? h("a", { href: url, target: "_blank", rel: "noopener noreferrer", class: "mono", title: e.trace_id }, e.trace_id.slice(0, 8))
            : h("span", { class: "mono muted", title: e.trace_id }, e.trace_id.slice(0, 8))
          : h("span", { class: "muted" }, "—");
        return h("tr", {},
          h("td", { class: "mono" }, fmt.clock(e.time)),
          h("td", {}, hop(e.hop)),
          h("td", { class: "mono" }, e.kind),
          h("td", { class: "wrap" }, e.summary),
          h("td", {}, trace));
      }));
    }

    async function load() {
      const { status, body } = await api(`/api/services/${parts.map(encodeURIComponent).join("/")}`);
      if (status === 404) {
        $("#svc-name").textContent = name;
        $("#svc-state").replaceChildren(badge("deleting", "gone"));
        $("#svc-error").hidden = false;
        $("#svc-error").textContent = "This Service is not (or no longer) known: it may have been deleted.";
        return;
      }
      const s = body.service;
      $("#svc-name").textContent = `${namespace}/${name}`;
      $("#svc-state").replaceChildren(badge(s.row.state));
      $("#svc-error").hidden = !s.row.error;
      $("#svc-error").textContent = s.row.error || "";
      renderFacts(s);
      renderWaterfall(s.waterfall, body.jaeger_url);
      renderHistory(s.changes || [], body.jaeger_url);
      renderTimeline(s.timeline, body.jaeger_url);
    }

    const reload = throttle(() => load().catch(console.error), 300);
    on("services", (data) => {
      if (data.reload || data.added.includes(key) || data.removed.includes(key) || data.rows.some((r) => r.key === key)) reload();
    });
    on("clusters", reload);
    load().catch(console.error);
  }

  // --- appliances ----------------------------------------------------------------------

  function appliancesPage() {
    async function load() {
      const { body } = await api("/api/appliances");
      const status = Object.fromEntries((body.control || []).map((a) => [a.name, a]));
      const bus = Object.fromEntries(body.appliances.map((a) => [a.name, a]));
      const names = [...new Set([...Object.keys(status), ...Object.keys(bus)])].sort();
      setRows($("#appliances tbody"), names.map((name) => {
        const s = status[name] || {};
        const b = bus[name] || {};
        const [health, title] = healthOf(status[name]);
        const error = s.last_error || b.last_error;
        const role = s.active === true ? "active" : s.active === false ? "standby" : "—";
        return h("tr", {},
          h("td", {}, h("div", { class: "svc-name" }, name), s.address ? h("div", { class: "svc-ns mono" }, s.address) : null),
          h("td", {}, badge(health, title)),
          h("td", {}, s.driver || "—"),
          h("td", {}, s.group || "—"),
          h("td", {}, role),
          h("td", { class: "num" }, fmt.int(s.virtual_servers ?? b.virtual_servers)),
          h("td", { class: "num" }, fmt.int(b.services ?? s.services)),
          h("td", { class: "num" }, fmt.int(b.failing || 0)),
          h("td", {}, s.last_write_at ? fmt.ago(s.last_write_at, body.now) : "—"),
          h("td", { class: "wrap" }, error ? h("span", { title: error }, error) : h("span", { class: "muted" }, "none")));
      }));
      $("#empty").hidden = names.length > 0;
      $("#note").textContent = body.control
        ? `Health as the lbdriver reported it ${fmt.ago(body.polled_at, body.now)}.`
        : `Health unknown: ${body.error || "the lbdriver has not answered yet"}. Counts come from the bus.`;
    }

    const refresh = throttle(() => load().catch(console.error), 1000);
    on("services", refresh);
    on("control", refresh);
    load().catch(console.error);
  }

  // --- nodes --------------------------------------------------------------------------

  function nodesPage() {
    const cluster = new URLSearchParams(location.search).get("cluster") || "";
    async function load() {
      const { body } = await api(`/api/nodes${cluster ? `?cluster=${encodeURIComponent(cluster)}` : ""}`);
      setRows($("#nodes tbody"), body.nodes.map((n) => {
        const ready = !n.ready ? ["failed", "not ready"] : !n.eligible ? ["deleting", "not eligible"] : ["ready", "ready"];
        return h("tr", { data: { node: `${n.cluster}/${n.node}` } },
          h("td", {}, h("div", { class: "svc-name" }, n.node), n.addresses.length ? h("div", { class: "svc-ns mono" }, n.addresses.join(", ")) : null),
          h("td", {}, n.cluster),
          h("td", {}, badge(ready[0], ready[1])),
          h("td", { class: "num" }, n.reporting ? fmt.int(n.vips.length) : "—"),
          h("td", { class: "mono wrap vips" }, n.reporting ? fmt.list(n.vips) : h("span", { class: "muted" }, "its agent has not reported")),
          h("td", { class: "wrap" }, ...(n.services.length
            ? n.services.map((key) => {
              const [c, ns, name] = key.split("/");
              return h("a", { class: "chip", href: serviceHref({ cluster: c, namespace: ns, name }) }, key);
            })
            : ["—"])),
          h("td", { class: "reported", title: n.applied_time ? fmt.clock(n.applied_time) : "" },
            n.applied_time ? `${fmt.ago(n.applied_time, body.now)} (gen ${n.generation})` : "never"));
      }));
      $("#empty").hidden = body.nodes.length > 0;
      $("#count").textContent = fmt.int(body.nodes.length);
    }
    const refresh = throttle(() => load().catch(console.error), 1000);
    on("clusters", refresh);
    on("services", refresh);
    setInterval(refresh, 10000);
    load().catch(console.error);
  }

  // --- start -----------------------------------------------------------------------

  const pages = { overview: overviewPage, services: servicesPage, service: servicePage, appliances: appliancesPage, nodes: nodesPage };
  const page = pages[document.body.dataset.page];
  if (page) page();
  bannersAndTime();
  connect();
})();

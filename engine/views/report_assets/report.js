/* The audit report's item table: every item of the run, from the page's own data.
 *
 * Reads the report (the JSON data island #report-data), draws into #items a
 * filter box, a status and an error-type select, and a table sortable by each
 * column, in pages of PAGE rows ("show more"), so 10,000 items open fast. A
 * row click opens its attempts on a clock-time axis and its receipt.
 * Plain JavaScript, nothing fetched, works from file://. Item ids and messages
 * are untrusted text: nodes are built with textContent only, never innerHTML.
 */
(function () {
  "use strict";
  var PAGE = 200;
  var SVG = "http://www.w3.org/2000/svg";
  var COLUMNS = [
    { key: "item", label: "item", num: false },
    { key: "status", label: "status", num: false },
    { key: "attempts", label: "attempts", num: true },
    { key: "error_type", label: "error type", num: false },
    { key: "duration", label: "duration", num: true }
  ];

  function el(tag, attrs, children) {
    var e = document.createElement(tag);
    var k;
    for (k in attrs || {}) {
      if (k === "text") e.textContent = attrs[k];
      else e.setAttribute(k, attrs[k]);
    }
    (children || []).forEach(function (c) { if (c) e.appendChild(c); });
    return e;
  }

  function svg(tag, attrs, text) {
    var e = document.createElementNS(SVG, tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function duration(s) {
    if (s === null || s === undefined) return "-";
    s = Math.max(s, 0);
    if (s < 1) return Math.round(s * 1000) + "ms";
    if (s < 59.95) return String(Math.round(s * 10) / 10) + "s";
    var whole = Math.round(s), m = Math.floor(whole / 60), sec = whole % 60;
    if (m < 60) return m + "m" + pad(sec) + "s";
    var h = Math.floor(m / 60);
    if (h < 24) return h + "h" + pad(m % 60) + "m";
    return Math.floor(h / 24) + "d" + pad(h % 24) + "h";
  }

  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function ms(ts) { return ts ? Date.parse(ts) : NaN; }
  function clock(t) {
    var d = new Date(t);
    return pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + ":" + pad(d.getUTCSeconds());
  }
  function day(t) { return new Date(t).toISOString().slice(0, 10); }

  function rows(report) {
    return (report.items || []).map(function (it) {
      var text = [it.item, it.status, it.error_type || ""].join("\n").toLowerCase();
      return {
        data: it, item: it.item, status: it.status, attempts: (it.attempts || []).length,
        error_type: it.error_type || "", duration: it.duration || 0, text: text
      };
    });
  }

  function options(select, values, all) {
    select.appendChild(el("option", { value: "", text: all }));
    values.forEach(function (v) { select.appendChild(el("option", { value: v, text: v })); });
  }

  function distinct(list, key) {
    var seen = {};
    list.forEach(function (r) { if (r[key]) seen[r[key]] = true; });
    return Object.keys(seen).sort();
  }

  /* The attempts of one item on an axis of clock times (ticks at a round step). */
  function axis(attempts) {
    var spans = attempts.map(function (a) {
      var start = ms(a.dispatched_at), end = ms(a.finished_at);
      if (isNaN(end)) end = start + (a.duration || 0) * 1000;
      return { a: a, start: start, end: Math.max(end, start) };
    }).filter(function (s) { return !isNaN(s.start); });
    if (!spans.length) return null;
    var lo = Math.min.apply(null, spans.map(function (s) { return s.start; }));
    var hi = Math.max.apply(null, spans.map(function (s) { return s.end; }));
    var steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400];
    var step = steps[steps.length - 1] * 1000;
    for (var i = 0; i < steps.length; i++) {
      if ((hi - lo) / (steps[i] * 1000) <= 6) { step = steps[i] * 1000; break; }
    }
    var first = Math.floor(lo / step) * step, last = Math.ceil(hi / step) * step;
    if (last === first) last = first + step;
    var W = 640, left = 70, right = 40, rowH = 18, top = 8;
    var H = top + spans.length * rowH + 34;
    var x = function (t) { return left + (t - first) / (last - first) * (W - left - right); };
    var g = svg("svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H, "class": "attempt-axis", role: "img" });
    g.appendChild(svg("title", {}, "attempts on a clock-time axis (UTC, " + day(lo) + ")"));
    var base = top + spans.length * rowH + 4;
    for (var t = first; t <= last + 1; t += step) {
      g.appendChild(svg("line", { x1: x(t), x2: x(t), y1: top - 4, y2: base, "class": "tick" }));
      g.appendChild(svg("text", { x: x(t), y: base + 14, "text-anchor": "middle", "class": "tick-label" }, clock(t)));
    }
    g.appendChild(svg("text", { x: 0, y: base + 28, "class": "tick-label" }, day(lo) + " UTC"));
    spans.forEach(function (s, k) {
      var y = top + k * rowH;
      g.appendChild(svg("text", { x: 0, y: y + 12, "class": "bar-label" }, "attempt " + s.a.attempt));
      var ok = s.a.outcome === "succeeded";
      var bar = svg("rect", {
        x: x(s.start), y: y + 2, height: rowH - 6, rx: 2,
        width: Math.max(x(s.end) - x(s.start), 2), "class": ok ? "bar ok" : "bar failed"
      });
      bar.appendChild(svg("title", {}, "attempt " + s.a.attempt + ": " + s.a.outcome + ", " +
        clock(s.start) + " to " + clock(s.end) + " (" + duration((s.end - s.start) / 1000) + ")"));
      g.appendChild(bar);
    });
    return g;
  }

  function attemptsTable(attempts) {
    var head = ["attempt", "dispatched", "finished", "duration", "outcome", "message", "worker", "idempotency key"];
    var body = el("tbody");
    attempts.forEach(function (a) {
      var cells = [
        String(a.attempt), a.dispatched_at ? clock(ms(a.dispatched_at)) : "-",
        a.finished_at ? clock(ms(a.finished_at)) : "-", duration(a.duration),
        a.outcome, a.message || "", a.worker || "", a.idempotency_key
      ];
      body.appendChild(el("tr", {}, cells.map(function (c) { return el("td", { text: c }); })));
    });
    return el("table", { "class": "attempts" }, [
      el("thead", {}, [el("tr", {}, head.map(function (h) { return el("th", { text: h }); }))]), body
    ]);
  }

  function receipt(r) {
    if (!r) return el("p", { "class": "receipt none", text: "no receipt (the item did not succeed)" });
    var dl = el("dl", { "class": "receipt" });
    [["result digest", r.result_digest], ["seq range", r.first_seq + ".." + r.last_seq],
     ["head hash", r.head_hash], ["attempts", String(r.attempts)],
     ["idempotency key", r.idempotency_key]].forEach(function (kv) {
      dl.appendChild(el("dt", { text: kv[0] }));
      dl.appendChild(el("dd", { text: kv[1] }));
    });
    var box = el("div", {}, [el("h4", { text: "receipt" }), dl]);
    if ((r.artifacts || []).length) {
      var body = el("tbody");
      r.artifacts.forEach(function (a) {
        body.appendChild(el("tr", {}, [el("td", { text: a.path }), el("td", { text: a.sha256 }),
          el("td", { text: String(a.size) })]));
      });
      box.appendChild(el("table", { "class": "artifacts" }, [el("thead", {}, [el("tr", {},
        ["artifact", "sha256", "bytes"].map(function (h) { return el("th", { text: h }); }))]), body]));
    }
    return box;
  }

  function details(it) {
    var atts = it.attempts || [];
    var box = el("div", { "class": "item-details" }, [
      el("h4", { text: atts.length + (atts.length === 1 ? " attempt" : " attempts") })
    ]);
    var chart = axis(atts);
    if (chart) box.appendChild(chart);
    box.appendChild(atts.length ? attemptsTable(atts) : el("p", { text: "no attempt (never dispatched)" }));
    box.appendChild(receipt(it.receipt));
    return box;
  }

  function init(root, report) {
    var all = rows(report);
    var state = { text: "", status: "", error: "", key: null, dir: 1, shown: PAGE, open: Object.create(null) };
    var filter = el("input", { id: "items-filter", type: "search", placeholder: "filter: item, status, error type", "aria-label": "filter items" });
    var status = el("select", { id: "items-status", "aria-label": "status" });
    var error = el("select", { id: "items-error", "aria-label": "error type" });
    options(status, distinct(all, "status"), "every status");
    options(error, distinct(all, "error_type"), "every error type");
    var count = el("span", { id: "items-count", "class": "count" });
    var ths = COLUMNS.map(function (c) {
      return el("th", { "data-key": c.key, "class": c.num ? "num sortable" : "sortable", tabindex: "0", text: c.label });
    });
    var tbody = el("tbody");
    var table = el("table", { id: "items-table" }, [el("thead", {}, [el("tr", {}, ths)]), tbody]);
    var more = el("button", { id: "items-more", type: "button" });
    root.appendChild(el("div", { "class": "controls" }, [filter, status, error, count]));
    root.appendChild(table);
    root.appendChild(more);

    function matching() {
      var text = state.text.toLowerCase();
      var list = all.filter(function (r) {
        return (!text || r.text.indexOf(text) >= 0) &&
          (!state.status || r.status === state.status) &&
          (!state.error || r.error_type === state.error);
      });
      if (state.key) {
        var col = COLUMNS.filter(function (c) { return c.key === state.key; })[0];
        list.sort(function (a, b) {
          var x = a[state.key], y = b[state.key];
          var d = col.num ? x - y : (x < y ? -1 : x > y ? 1 : 0);
          return d * state.dir || a.data.index - b.data.index;
        });
      }
      return list;
    }

    function draw() {
      var list = matching();
      var frag = document.createDocumentFragment();
      list.slice(0, state.shown).forEach(function (r) {
        var tr = el("tr", { "class": "item-row", tabindex: "0" }, [
          el("td", { text: r.item }), el("td", { text: r.status }),
          el("td", { "class": "num", text: String(r.attempts) }),
          el("td", { text: r.error_type }), el("td", { "class": "num", text: duration(r.duration) })
        ]);
        tr.addEventListener("click", function () { toggle(r, tr); });
        tr.addEventListener("keydown", function (ev) { if (ev.key === "Enter") toggle(r, tr); });
        frag.appendChild(tr);
        if (state.open[r.item]) {
          tr.classList.add("open");
          frag.appendChild(detailRow(r));
        }
      });
      tbody.replaceChildren(frag);
      var shown = Math.min(state.shown, list.length);
      count.textContent = shown + " of " + list.length + " items shown" +
        (list.length !== all.length ? " (" + all.length + " in all)" : "");
      more.hidden = shown >= list.length;
      more.textContent = "show " + Math.min(PAGE, list.length - shown) + " more";
      ths.forEach(function (th) {
        var k = th.getAttribute("data-key");
        th.setAttribute("aria-sort", k === state.key ? (state.dir > 0 ? "ascending" : "descending") : "none");
      });
    }

    function detailRow(r) {
      return el("tr", { "class": "item-detail" }, [el("td", { colspan: String(COLUMNS.length) }, [details(r.data)])]);
    }

    function toggle(r, tr) {
      if (state.open[r.item]) {
        delete state.open[r.item];
        tr.classList.remove("open");
        if (tr.nextSibling && tr.nextSibling.className === "item-detail") tbody.removeChild(tr.nextSibling);
      } else {
        state.open[r.item] = true;
        tr.classList.add("open");
        tbody.insertBefore(detailRow(r), tr.nextSibling);
      }
    }

    function sortBy(key) {
      if (state.key === key) state.dir = -state.dir;
      else { state.key = key; state.dir = 1; }
      draw();
    }

    ths.forEach(function (th) {
      var key = th.getAttribute("data-key");
      th.addEventListener("click", function () { sortBy(key); });
      th.addEventListener("keydown", function (ev) { if (ev.key === "Enter") sortBy(key); });
    });
    filter.addEventListener("input", function () { state.text = filter.value; state.shown = PAGE; draw(); });
    status.addEventListener("change", function () { state.status = status.value; state.shown = PAGE; draw(); });
    error.addEventListener("change", function () { state.error = error.value; state.shown = PAGE; draw(); });
    more.addEventListener("click", function () { state.shown += PAGE; draw(); });
    draw();
  }

  function start() {
    var root = document.getElementById("items");
    var island = document.getElementById("report-data");
    if (!root || !island) return;
    init(root, JSON.parse(island.textContent));
    root.setAttribute("data-ready", "true");
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();

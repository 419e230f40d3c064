// Weir dashboard page: draws /api/d/NAME's panels (uPlot for charts) and re-queries on every
// commit (server-sent events on /api/events), without a reload.
(function () {
  "use strict";
  const name = document.body.dataset.dashboard;
  const root = document.getElementById("panels");
  const freshnessEl = document.getElementById("freshness");
  const cards = []; // per panel: {el, body, plot, kind}
  let last = null; // the last answer
  let loading = false;
  let again = false;
  let renders = 0;

  const palette = ["#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];

  function fmt(v) {
    if (v === null || v === undefined) return "–";
    if (typeof v === "number") {
      if (Number.isInteger(v)) return v.toLocaleString("en-US");
      const abs = Math.abs(v);
      const digits = abs >= 100 ? 0 : abs >= 1 ? 2 : 3;
      return v.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: 0 });
    }
    if (typeof v === "boolean") return v ? "yes" : "no";
    return String(v);
  }

  function toSeconds(v) {
    if (v === null || v === undefined) return null;
    let s = String(v);
    if (/^\d{4}-\d{2}-\d{2}$/.test(s)) s += "T00:00:00";
    if (!/[zZ]|[+-]\d\d:?\d\d$/.test(s)) s += "Z";
    const t = Date.parse(s);
    return Number.isNaN(t) ? null : t / 1000;
  }

  function ago(seconds) {
    if (seconds < 0) seconds = 0;
    if (seconds < 90) return Math.round(seconds) + " s";
    if (seconds < 5400) return Math.round(seconds / 60) + " min";
    if (seconds < 172800) return Math.round(seconds / 3600) + " h";
    return Math.round(seconds / 86400) + " days";
  }

  function card(i, panel) {
    if (cards[i] && cards[i].kind === panel.kind) return cards[i];
    const el = document.createElement("section");
    el.className = "panel panel-" + panel.kind;
    const h = document.createElement("h2");
    h.textContent = panel.title;
    const body = document.createElement("div");
    body.className = "body";
    el.append(h, body);
    el.dataset.title = panel.title;
    if (cards[i]) root.replaceChild(el, cards[i].el);
    else root.appendChild(el);
    cards[i] = { el, body, plot: null, kind: panel.kind };
    return cards[i];
  }

  function numericColumns(panel, skip) {
    const out = [];
    panel.columns.forEach((c, j) => {
      if (panel.types[j] === "number" && c !== skip) out.push(j);
    });
    return out;
  }

  function drawNumber(c, panel) {
    const cols = numericColumns(panel, null);
    const row = panel.rows[0];
    const v = row ? row[cols[0]] : null;
    c.el.dataset.value = v === null || v === undefined ? "" : String(v);
    const label = row
      ? panel.columns.map((n, j) => (j === cols[0] || row[j] === null ? null : n + " " + fmt(row[j]))).filter(Boolean).join(" · ")
      : "no rows";
    c.body.innerHTML = "";
    const big = document.createElement("div");
    big.className = "number";
    big.textContent = fmt(v);
    const small = document.createElement("div");
    small.className = "muted";
    small.textContent = label;
    c.body.append(big, small);
  }

  function drawTable(c, panel) {
    const t = document.createElement("table");
    const head = t.createTHead().insertRow();
    panel.columns.forEach((n) => {
      const th = document.createElement("th");
      th.textContent = n;
      head.appendChild(th);
    });
    const tb = t.createTBody();
    panel.rows.slice(0, 200).forEach((r) => {
      const tr = tb.insertRow();
      r.forEach((v, j) => {
        const td = tr.insertCell();
        td.textContent = fmt(v);
        if (panel.types[j] === "number") td.className = "num";
      });
    });
    c.el.dataset.rows = String(panel.rows.length);
    c.body.innerHTML = "";
    c.body.appendChild(t);
    if (panel.rows.length === 0) {
      const p = document.createElement("p");
      p.className = "muted";
      p.textContent = "no rows";
      c.body.appendChild(p);
    }
  }

  function drawChart(c, panel) {
    const xi = panel.columns.indexOf(panel.x);
    const ys = numericColumns(panel, panel.x);
    const xtime = panel.types[xi] === "time";
    const xnum = panel.types[xi] === "number";
    const labels = panel.rows.map((r) => fmt(r[xi]));
    const xs = panel.rows.map((r, k) => (xtime ? toSeconds(r[xi]) : xnum ? r[xi] : k));
    const data = [xs].concat(ys.map((j) => panel.rows.map((r) => (r[j] === null ? null : Number(r[j])))));
    c.el.dataset.rows = String(panel.rows.length);
    const bars = panel.kind === "bar";
    const width = Math.max(260, c.body.clientWidth || 400);
    const series = [{ label: panel.x }].concat(
      ys.map((j, k) => ({
        label: panel.columns[j],
        stroke: palette[k % palette.length],
        fill: bars ? palette[k % palette.length] + "99" : undefined,
        width: bars ? 1 : 2,
        dash: /provisional/.test(panel.columns[j]) ? [6, 4] : undefined,
        paths: bars && uPlot.paths && uPlot.paths.bars ? uPlot.paths.bars({ size: [0.8 / Math.max(1, ys.length), 60] }) : undefined,
        points: { show: !bars && panel.rows.length < 40 },
      }))
    );
    const axes = [
      xtime || xnum
        ? {}
        : {
            // Labels: every one that fits, turned so that long names do not overlap.
            values: (u, splits) => splits.map((s) => (Number.isInteger(s) && c.labels[s] !== undefined ? c.labels[s] : "")),
            rotate: labels.length > 6 ? -30 : 0,
            size: labels.length > 6 ? 80 : 40,
            space: 14,
            incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500],
          },
      { size: 60 },
    ];
    c.labels = labels;
    const key = JSON.stringify([panel.x, ys, xtime, bars]);
    if (c.plot && c.plotKey === key) {
      c.plot.setData(data);
      showEmpty(c, panel.rows.length === 0);
      return;
    }
    if (c.plot) c.plot.destroy();
    c.body.innerHTML = "";
    c.plot = new uPlot(
      {
        width,
        height: 240,
        scales: { x: { time: xtime, range: (u, mn, mx) => xRange(u, mn, mx, bars, xtime) } },
        series,
        axes,
        legend: { live: true },
      },
      data,
      c.body
    );
    c.plotKey = key;
    showEmpty(c, panel.rows.length === 0);
  }

  function showEmpty(c, empty) {
    let note = c.body.querySelector(".empty");
    if (!empty) {
      if (note) note.remove();
      return;
    }
    if (!note) {
      note = document.createElement("div");
      note.className = "empty muted";
      note.textContent = "no rows yet";
      c.body.appendChild(note);
    }
  }

  // The x range: the data's, with half a step around bars, and a minute around a single time.
  function xRange(u, mn, mx, bars, xtime) {
    if (mn === null || mx === null) return [0, 1];
    const xs = u.data[0].filter((v) => v !== null);
    let step = Infinity;
    for (let k = 1; k < xs.length; k++) {
      const d = Math.abs(xs[k] - xs[k - 1]);
      if (d > 0 && d < step) step = d;
    }
    if (step === Infinity) step = xtime ? 60 : 1;
    if (bars || mn === mx) return [mn - step / 2, mx + step / 2];
    return [mn, mx];
  }

  function render(answer) {
    last = answer;
    answer.panels.forEach((panel, i) => {
      const c = card(i, panel);
      c.el.classList.toggle("failed", !!panel.error);
      if (panel.error) {
        if (c.plot) {
          c.plot.destroy();
          c.plot = null;
        }
        c.body.innerHTML = "";
        const p = document.createElement("pre");
        p.className = "error";
        p.textContent = panel.error;
        c.body.appendChild(p);
        return;
      }
      if (panel.kind === "number") drawNumber(c, panel);
      else if (panel.kind === "table") drawTable(c, panel);
      else drawChart(c, panel);
      if (panel.truncated) c.el.dataset.truncated = "true";
    });
    renders += 1;
    document.body.dataset.renders = String(renders);
    const f = answer.freshness || {};
    document.body.dataset.batch = f.batch === null || f.batch === undefined ? "" : String(f.batch);
    showFreshness();
  }

  function showFreshness() {
    if (!last) return;
    const f = last.freshness || {};
    const skew = Date.parse(last.now) - Date.now(); // server clock minus ours
    const now = (Date.now() + skew) / 1000;
    const parts = [];
    if (f.batch !== null && f.batch !== undefined) parts.push("batch " + f.batch);
    if (f.committed_at) parts.push("committed " + ago(now - Date.parse(f.committed_at) / 1000) + " ago");
    if (f.newest_event) parts.push("newest event " + ago(now - Date.parse(f.newest_event) / 1000) + " behind");
    if (parts.length === 0) parts.push("nothing committed yet");
    parts.push("query " + last.elapsed_ms + " ms");
    freshnessEl.textContent = parts.join(" · ");
  }

  async function load() {
    if (loading) {
      again = true;
      return;
    }
    loading = true;
    try {
      const r = await fetch("/api/d/" + encodeURIComponent(name), { cache: "no-store" });
      const answer = await r.json();
      if (!r.ok) throw new Error(answer.error || r.statusText);
      render(answer);
      freshnessEl.classList.remove("error");
    } catch (e) {
      freshnessEl.textContent = "cannot load: " + e.message;
      freshnessEl.classList.add("error");
    } finally {
      loading = false;
      if (again) {
        again = false;
        load();
      }
    }
  }

  load();
  // On every commit; a reconnecting EventSource re-queries once it is back.
  const events = new EventSource("/api/events");
  events.addEventListener("commit", () => {
    document.body.dataset.events = String(Number(document.body.dataset.events || 0) + 1);
    load();
  });
  events.addEventListener("open", load);
  setInterval(showFreshness, 1000);
  // A safety net should an event be lost behind a proxy.
  setInterval(load, 30000);
  window.addEventListener("resize", () => {
    cards.forEach((c) => c && c.plot && c.plot.setSize({ width: Math.max(260, c.body.clientWidth), height: 240 }));
  });
})();

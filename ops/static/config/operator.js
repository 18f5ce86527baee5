// The operator page (ops/operator.py): polls the JSON of /metrics' numbers every 2 s and charts
// the rates between polls with uPlot (ops/static/vendor/uplot/, VENDORED.md says which and
// whence). Small multiples: each series on a chart of its own, its y axis from 0 in its unit,
// all on one time axis with one cursor, so orders/s and milliseconds are never drawn to one
// scale. Each legend shows the value under the pointer, or the latest one. A dashed line marks
// where this page's own polls start: left of it, the snapshots beat recorded before it opened.
// A file, not an inline script: the admin runs under a Content Security Policy. Everything
// written into the page is text (textContent), never markup.
"use strict";

(function () {
  const POLL_MS = 2000;
  const PANELS = [
    { key: "orders", title: "Orders accepted or paid", unit: "orders/s", colour: "#2a7ab0", digits: 1 },
    { key: "errors", title: "Order errors (every code)", unit: "errors/s", colour: "#c0392b", digits: 1 },
    { key: "backlog", title: "Payment backlog", unit: "orders", colour: "#8e44ad", digits: 0, whole: true },
    { key: "paidMs", title: "Time to PAID (mean of the orders paid)", unit: "ms", colour: "#27ae60", digits: 0, whole: true },
  ];
  const WHOLE_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6];
  const root = document.getElementById("operator");
  if (!root) return;
  const container = document.getElementById("charts");
  const WINDOW_SECONDS = Number(root.dataset.windowSeconds) || 600; // what the recorded snapshots span
  const times = []; // seconds, the server's clock
  const values = Object.fromEntries(PANELS.map((p) => [p.key, []]));
  let previous = null;
  let openedAt = null; // the first poll's snapshot time: where the page's own data starts
  let charts = [];

  function sum(numbers) {
    return Object.values(numbers || {}).reduce((a, b) => a + b, 0);
  }

  function text(id, value) {
    document.getElementById(id).textContent = value;
  }

  function pad(n) {
    return String(n).padStart(2, "0");
  }

  function clock(seconds) {
    if (seconds == null) return "-";
    const d = new Date(seconds * 1000);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function shown(value, panel) {
    return value == null ? "-" : value.toFixed(panel.digits);
  }

  function tick(value) {
    return String(Math.round(value * 1000) / 1000);
  }

  function latest(list) {
    return list.length ? list[list.length - 1] : null;
  }

  // What an axis shows is also written on its chart's element (data-x-ticks, data-y-ticks), so
  // what is drawn on the canvas can be read from the DOM.
  function labelled(element, name, labels) {
    element.dataset[name] = labels.join(" ");
    return labels;
  }

  // Rates are differences between two snapshots, timed by the server's clock (`at`, ms). Time to
  // PAID is the mean of the orders paid between them; with none paid there is no value (a gap).
  function point(data) {
    if (previous === null) return null;
    const seconds = (data.at - previous.at) / 1000;
    if (seconds <= 0) return null;
    const paidCount = data.timeToPaid.count - previous.data.timeToPaid.count;
    const paidSum = data.timeToPaid.sum - previous.data.timeToPaid.sum;
    return {
      orders: Math.max(0, (data.orders - previous.data.orders) / seconds),
      errors: Math.max(0, (sum(data.orderErrors) - sum(previous.data.orderErrors)) / seconds),
      backlog: data.backlogOrders,
      paidMs: paidCount > 0 ? (1000 * paidSum) / paidCount : null,
    };
  }

  function remember(data) {
    const latestPoint = point(data);
    previous = { at: data.at, data: data };
    if (latestPoint !== null) {
      times.push(data.at / 1000);
      PANELS.forEach((p) => values[p.key].push(latestPoint[p.key]));
      while (times.length && times[0] < data.at / 1000 - WINDOW_SECONDS) {
        times.shift();
        PANELS.forEach((p) => values[p.key].shift());
      }
    }
    return latestPoint;
  }

  // From the first point or the page's opening, whichever is earlier, to the latest point (at
  // least 10 s, so that one point still has a time axis).
  function timeRange(min, max) {
    const from = min == null ? openedAt : openedAt == null ? min : Math.min(min, openedAt);
    if (from == null) return [0, 10];
    return [from, Math.max(max ?? from, from + 10)];
  }

  function chartWidth() {
    return Math.max(320, Math.min(1100, container.clientWidth || 900));
  }

  function makeChart(panel, sync) {
    const element = document.createElement("div");
    element.className = "panel";
    element.dataset.series = panel.key;
    container.appendChild(element);
    const ink = getComputedStyle(root).color || "#333";
    const grid = { stroke: "rgba(128, 128, 128, 0.25)", width: 1 };
    const yAxis = {
      stroke: ink, grid, label: panel.unit, size: 64,
      values: (u, splits) => labelled(element, "yTicks", splits.map(tick)),
    };
    if (panel.whole) yAxis.incrs = WHOLE_STEPS;
    const marker = document.createElement("div");
    marker.className = "opened-marker";
    marker.hidden = true;
    const markerLabel = document.createElement("span");
    markerLabel.textContent = "page opened";
    marker.appendChild(markerLabel);
    const chart = new uPlot({
      title: `${panel.title} (${panel.unit})`,
      width: chartWidth(),
      height: 170,
      cursor: { sync: { key: sync.key }, drag: { x: false, y: false } },
      scales: {
        x: { time: true, range: (u, min, max) => timeRange(min, max) },
        y: { range: (u, min, max) => [0, uPlot.rangeNum(0, Math.max(max || 0, panel.whole ? 4 : 1), 0.1, true)[1]] },
      },
      axes: [
        { stroke: ink, grid, space: 90, values: (u, splits) => labelled(element, "xTicks", splits.map(clock)) },
        yAxis,
      ],
      series: [
        { label: "time", value: (u, v, s, idx) => clock(idx == null ? latest(u.data[0]) : v) },
        {
          label: panel.unit, stroke: panel.colour, width: 2, fill: `${panel.colour}1f`, points: { show: false },
          value: (u, v, s, idx) => shown(idx == null ? latest(u.data[s]) : v, panel),
        },
      ],
      hooks: {
        draw: [(u) => {
          const x = openedAt == null ? null : u.valToPos(openedAt, "x");
          marker.hidden = x == null || x < 0 || x > u.over.clientWidth;
          if (!marker.hidden) marker.style.left = `${x}px`;
        }],
      },
    }, [[], []], element);
    chart.over.appendChild(marker);
    sync.sub(chart);
    return chart;
  }

  function draw() {
    if (!charts.length) {
      const sync = uPlot.sync("operator");
      charts = PANELS.map((panel) => makeChart(panel, sync));
      window.addEventListener("resize", () => charts.forEach((c) => c.setSize({ width: chartWidth(), height: 170 })));
    }
    charts.forEach((chart, i) => {
      chart.setData([times.slice(), values[PANELS[i].key].slice()]);
      if (chart.cursor.idx == null) chart.setLegend({ idx: null }); // the latest values
    });
    container.dataset.points = String(times.length);
  }

  function stockTable(data) {
    const body = document.querySelector("#stock tbody");
    body.replaceChildren();
    const products = Object.keys(data.stockDatabase).sort((a, b) => Number(a) - Number(b));
    for (const product of products) {
      const row = document.createElement("tr");
      for (const value of [product, data.stockRedis[product] ?? "not loaded", data.stockDatabase[product]]) {
        const cell = document.createElement("td");
        cell.textContent = String(value);
        row.appendChild(cell);
      }
      body.appendChild(row);
    }
    const count = products.length;
    const age = Math.round(data.stockDatabaseAgeSeconds || 0);
    document.getElementById("stock-note").textContent =
      (count < data.stockProducts ? `The ${count} of ${data.stockProducts} products with the fewest units left. ` : "") +
      `Ledger figures as of ${age} s ago.` + shardsNote(data.stockShards || {});
  }

  // One Redis: nothing to say. Sharded: how many shards, and those waiting for a rebuild.
  function shardsNote(shards) {
    const tags = Object.keys(shards).filter((tag) => tag !== "single").sort();
    if (!tags.length) return "";
    const waiting = tags.filter((tag) => !shards[tag].loaded);
    const tracked = tags.map((tag) => `${tag}: ${shards[tag].tracked}`).join(", ");
    return ` Stock on ${tags.length} shards, ` +
      (waiting.length ? `waiting for a rebuild: ${waiting.join(", ")}.` : "all loaded.") +
      ` Reservations tracked per shard: ${tracked}.`;
  }

  let first = true;

  async function poll() {
    try {
      // The first poll also fetches the snapshots beat recorded: the chart opens on the last minutes.
      const url = first ? `${root.dataset.source}?history=1` : root.dataset.source;
      const response = await fetch(url, { credentials: "same-origin" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const data = await response.json();
      if (first) {
        (data.history || []).filter((h) => h.at < data.at).forEach(remember);
        openedAt = data.at / 1000;
        first = false;
      }
      const now = remember(data);
      text("backlog", String(data.backlogOrders));
      text("oldest", `${data.backlogOldestSeconds.toFixed(1)} s`);
      stockTable(data);
      if (now !== null) {
        text("rate", now.orders.toFixed(1));
        text("errors", `${now.errors.toFixed(1)}/s`);
        text("paid", now.paidMs == null ? "-" : `${now.paidMs.toFixed(0)} ms`);
      }
      draw();
    } catch (error) {
      text("rate", `unavailable (${error.message})`);
    }
    setTimeout(poll, POLL_MS);
  }

  poll();
})();

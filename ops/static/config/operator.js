// The operator page (ops/operator.py): polls the JSON of /metrics' numbers every 2 s and
// charts the rates between polls over the last 5 minutes. A file, not an inline script: the
// admin runs under a Content Security Policy.
"use strict";

(function () {
  const POLL_MS = 2000;
  const WINDOW_POINTS = 150; // 5 minutes of 2 s polls
  const SERIES = [
    { key: "orders", colour: "#2a7ab0" },
    { key: "errors", colour: "#c0392b" },
    { key: "backlog", colour: "#8e44ad" },
    { key: "paidMs", colour: "#27ae60" },
  ];
  const root = document.getElementById("operator");
  if (!root) return;
  const canvas = document.getElementById("chart");
  const points = [];
  let previous = null;

  function sum(values) {
    return Object.values(values || {}).reduce((a, b) => a + b, 0);
  }

  function text(id, value) {
    document.getElementById(id).textContent = value;
  }

  // Rates are differences between two snapshots, timed by the server's clock (`at`, ms).
  function point(data) {
    const errors = sum(data.orderErrors);
    if (previous === null) return null;
    const seconds = (data.at - previous.at) / 1000;
    if (seconds <= 0) return null;
    const paidCount = data.timeToPaid.count - previous.data.timeToPaid.count;
    const paidSum = data.timeToPaid.sum - previous.data.timeToPaid.sum;
    return {
      orders: Math.max(0, (data.orders - previous.data.orders) / seconds),
      errors: Math.max(0, (errors - sum(previous.data.orderErrors)) / seconds),
      backlog: data.backlogOrders,
      paidMs: paidCount > 0 ? (1000 * paidSum) / paidCount : 0,
    };
  }

  function draw() {
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (points.length < 2) return;
    const step = canvas.width / (WINDOW_POINTS - 1);
    for (const series of SERIES) {
      const top = Math.max(1, ...points.map((p) => p[series.key]));
      ctx.strokeStyle = series.colour;
      ctx.lineWidth = 2;
      ctx.beginPath();
      points.forEach((p, i) => {
        const x = canvas.width - (points.length - 1 - i) * step;
        const y = canvas.height - 4 - (p[series.key] / top) * (canvas.height - 8);
        if (i === 0) ctx.moveTo(x, y);
        else ctx.lineTo(x, y);
      });
      ctx.stroke();
    }
    canvas.dataset.points = String(points.length);
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
    const shown = products.length;
    const age = Math.round(data.stockDatabaseAgeSeconds || 0);
    document.getElementById("stock-note").textContent =
      (shown < data.stockProducts ? `The ${shown} of ${data.stockProducts} products with the fewest units left. ` : "") +
      `Ledger figures as of ${age} s ago.`;
  }

  function remember(data) {
    const latest = point(data);
    previous = { at: data.at, data: data };
    if (latest !== null) {
      points.push(latest);
      if (points.length > WINDOW_POINTS) points.shift();
    }
    return latest;
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
        first = false;
      }
      const latest = remember(data);
      text("backlog", String(data.backlogOrders));
      text("oldest", `${data.backlogOldestSeconds.toFixed(1)} s`);
      stockTable(data);
      if (latest !== null) {
        text("rate", latest.orders.toFixed(1));
        text("errors", `${latest.errors.toFixed(1)}/s`);
        text("paid", latest.paidMs ? `${latest.paidMs.toFixed(0)} ms` : "-");
      }
      draw();
    } catch (error) {
      text("rate", `unavailable (${error.message})`);
    }
    setTimeout(poll, POLL_MS);
  }

  poll();
})();

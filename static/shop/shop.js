// The web shop. Everything shown that came from the server (product names above all: anyone with
// admin access names products) goes in as text: elements are built with el() and strings become
// text nodes, never markup, so no innerHTML here. The page's Content-Security-Policy allows
// scripts from this origin's files only, which is why this is a file and not an inline script.
(() => {
  const $ = (id) => document.getElementById(id);
  const screens = ["signin", "catalog", "progress", "done", "failed"];
  const STEPS = ["reserved", "paying", "paid"];
  let token = localStorage.getItem("shopToken") || "";
  let me = null, products = [], quantities = {};

  // el("td", { className: "num" }, "text", otherElement): strings become text nodes.
  function el(tag, props = {}, ...children) {
    const node = Object.assign(document.createElement(tag), props);
    node.append(...children);
    return node;
  }

  function show(name) { screens.forEach((s) => { $(s).hidden = s !== name; }); }
  function money(n) { return n.toLocaleString(); }

  async function api(path, options = {}) {
    const headers = Object.assign({ Authorization: `Bearer ${token}`, "Content-Type": "application/json" }, options.headers || {});
    const res = await fetch(`/api/v1${path}`, Object.assign({}, options, { headers }));
    const body = res.status === 204 ? null : await res.json().catch(() => null);
    return { status: res.status, body };
  }

  async function signIn(candidate) {
    token = candidate;
    const res = await api("/accounts/me");
    if (res.status !== 200) { token = ""; localStorage.removeItem("shopToken"); return false; }
    localStorage.setItem("shopToken", token);
    me = res.body;
    const signOut = el("button", { className: "ghost", id: "signout", type: "button" }, "Sign out");
    signOut.onclick = () => { localStorage.removeItem("shopToken"); token = ""; $("who").replaceChildren(); show("signin"); };
    $("who").replaceChildren(`User ${me.userId} · balance `, el("b", {}, money(me.balance)), " · ", signOut);
    return true;
  }

  async function loadCatalog() {
    const res = await api("/products?page_size=100");
    products = res.status === 200 ? res.body.results : [];
    quantities = {};
    $("products").replaceChildren();
    for (const p of products) {
      const less = el("button", { type: "button", ariaLabel: "less" }, "−");
      const more = el("button", { type: "button", ariaLabel: "more" }, "+");
      const qty = el("output", {}, "0");
      qty.dataset.qty = "";
      const stockCount = el("span", {}, money(p.stock));
      stockCount.dataset.stock = "";
      const card = el("div", { className: "product" },
        el("span", { className: "name" }, p.name),
        el("span", { className: "meta" }, `Price ${money(p.price)} · `, stockCount, " in stock"),
        el("div", { className: "qty" }, less, qty, more));
      card.dataset.productId = p.productId;
      less.onclick = () => setQty(p, (quantities[p.productId] || 0) - 1, card);
      more.onclick = () => setQty(p, (quantities[p.productId] || 0) + 1, card);
      $("products").appendChild(card);
    }
    updateTotal();
    $("order-error").textContent = "";
    show("catalog");
  }

  function setQty(p, q, card) {
    quantities[p.productId] = Math.max(0, Math.min(q, 99));
    card.querySelector("[data-qty]").textContent = quantities[p.productId];
    updateTotal();
  }

  function updateTotal() {
    const total = products.reduce((sum, p) => sum + p.price * (quantities[p.productId] || 0), 0);
    $("total").textContent = money(total);
    $("place").disabled = total === 0 && !products.some((p) => quantities[p.productId] > 0);
  }

  function setProgress(done, state) {
    const reached = STEPS.filter((s) => done.includes(s));
    const last = state === "failed" ? 2 : reached.length;
    $("fill").style.width = `${Math.max(8, (last / STEPS.length) * 100)}%`;
    $("fill").className = "fill" + (state === "paid" ? " ok" : state === "failed" ? " bad" : "");
    document.querySelectorAll(".steps span").forEach((s) => s.classList.toggle("done", done.includes(s.dataset.step)));
  }

  function explain(error) {
    const d = error.details || {};
    switch (error.code) {
      case "OUT_OF_STOCK": {
        const p = products.find((x) => x.productId === d.productId);
        return `Out of stock: ${p ? p.name : "an item"} has ${d.available} left and you asked for ${d.requested}. Nothing was reserved or charged.`;
      }
      case "INSUFFICIENT_BALANCE": return `Your balance does not cover this order. Nothing was charged.`;
      case "PRICE_CHANGED": return "A price changed while you were shopping. Please review the new prices.";
      case "COUPON_INVALID": return couponProblem(error);
      default: return error.message || "Something went wrong. Nothing was charged.";
    }
  }

  const COUPON_REASONS = {
    NOT_FOUND: "There is no such coupon.",
    EXPIRED: "This coupon is not valid at this time.",
    MIN_ORDER_AMOUNT: null,  // the server's message says the amount
    USAGE_LIMIT_REACHED: "This coupon has been used up.",
    PER_USER_LIMIT_REACHED: "You have already used this coupon.",
    CHANGED: "The coupon changed while you ordered. Please order again.",
  };

  function couponProblem(error) {
    const reason = (error.details || {}).reason;
    return `Coupon “${$("coupon").value.trim()}”: ${COUPON_REASONS[reason] || error.message} Nothing was reserved or charged.`;
  }

  function fail(title, text) {
    $("failed-title").textContent = title;
    $("failed-text").textContent = text;
    show("failed");
  }

  async function placeOrder() {
    const orderItems = products.filter((p) => quantities[p.productId] > 0)
      .map((p) => ({ productId: p.productId, quantity: quantities[p.productId], price: p.price }));
    $("place").disabled = true;
    $("progress-order").textContent = "";
    $("progress-text").textContent = "Reserving your items…";
    setProgress([], "running");
    show("progress");
    const key = (crypto.randomUUID && crypto.randomUUID()) || `${Date.now()}-${Math.random()}`;
    const couponCode = $("coupon").value.trim();
    const body = couponCode ? { userId: me.userId, orderItems, couponCode } : { userId: me.userId, orderItems };
    $("coupon-error").textContent = "";
    const res = await api("/orders", { method: "POST", body: JSON.stringify(body),
      headers: { Prefer: "respond-async", "Idempotency-Key": key } });
    if (res.status !== 202 && res.status !== 201) {
      const error = (res.body && res.body.error) || { code: `HTTP_${res.status}` };
      const field = error.details && error.details.couponCode;
      if (error.code === "COUPON_INVALID" || (error.code === "VALIDATION_ERROR" && field)) {
        // Back to the basket, the problem under the coupon field: the rest of the order stands.
        $("coupon-error").textContent = error.code === "COUPON_INVALID" ? couponProblem(error) : `Coupon: ${[].concat(field).join(" ")}`;
        $("place").disabled = false;
        show("catalog");
        $("coupon").focus();
        return;
      }
      const title = error.code === "OUT_OF_STOCK" ? "Sold out" : "The order did not go through";
      return fail(title, explain(error));
    }
    await follow(res.body.orderId);
  }

  async function follow(orderId) {
    $("progress-order").textContent = `#${orderId}`;
    for (let i = 0; i < 600; i++) {
      const res = await api(`/orders/${orderId}`);
      if (res.status === 200) {
        const order = res.body;
        const done = order.progress.map((s) => s.step);
        if (order.status === "PAID") { setProgress(done, "paid"); return finish(order); }
        if (done.includes("failed")) {
          setProgress(done, "failed");
          return fail("Payment failed", `Your balance did not cover ${money(order.totalAmount - order.discountAmount)}. ` +
            "The order was cancelled, the items went back on sale and nothing was charged.");
        }
        if (order.status === "CANCELLED") return fail("Order cancelled", "The order was cancelled and nothing was charged.");
        setProgress(done, "running");
        $("progress-text").textContent = done.includes("paying") ? "Taking the payment from your balance…" : "Items reserved. Waiting for the payment…";
      }
      await new Promise((r) => setTimeout(r, 300));
    }
    fail("Still waiting", "The payment is taking longer than usual. Check your orders later.");
  }

  async function finish(order) {
    await signIn(token);
    const names = Object.fromEntries(products.map((p) => [p.productId, p.name]));
    const rows = order.items.map((i) => el("tr", {},
      el("td", {}, names[i.productId] || `#${i.productId}`),
      el("td", { className: "num" }, `${i.quantity} × ${money(i.unitPrice)}`),
      el("td", { className: "num" }, money(i.quantity * i.unitPrice))));
    $("done-title").textContent = `Thank you! Order #${order.orderId} is paid.`;
    $("done-items").replaceChildren(
      el("tr", {}, el("th", {}, "Item"), el("th", { className: "num" }, "Qty"), el("th", { className: "num" }, "Amount")),
      ...rows);
    $("done-summary").replaceChildren(`Total ${money(order.totalAmount)} · discount ${money(order.discountAmount)} · `,
      el("b", {}, `paid ${money(order.paidAmount)}`), ` · balance now ${money(me.balance)}`);
    show("done");
  }

  $("signin-form").onsubmit = async (e) => {
    e.preventDefault();
    $("signin-error").textContent = "";
    if (await signIn($("token").value.trim())) await loadCatalog();
    else $("signin-error").textContent = "That token was not accepted.";
  };
  $("place").onclick = placeOrder;
  document.querySelectorAll("[data-action=again]").forEach((b) => { b.onclick = loadCatalog; });

  (async () => { if (token && await signIn(token)) await loadCatalog(); else show("signin"); })();
})();

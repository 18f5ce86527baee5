// The web shop. Everything shown that came from the server (product names above all: anyone with
// admin access names products) goes in as text: elements are built with el() and strings become
// text nodes, never markup, so no innerHTML here. The page's Content-Security-Policy allows
// scripts from this origin's files only, which is why this is a file and not an inline script.
//
// A buyer signs in with username and password (POST /api/v1/auth/token); the token is kept in
// localStorage until "Sign out", which revokes it on the server (DELETE /api/v1/auth/token).
(() => {
  const $ = (id) => document.getElementById(id);
  const screens = ["signin", "catalog", "progress", "done", "failed"];
  const STEPS = ["reserved", "paying", "paid"];
  const STOCK_POLL_MS = 2000; // the catalog's live stock
  let token = localStorage.getItem("shopToken") || "";
  let me = null, products = [], quantities = {}, cards = {}, stockTimer = null;
  let placeBlockedUntil = 0; // a refusal's Retry-After, in ms since the epoch

  // el("td", { className: "num" }, "text", otherElement): strings become text nodes.
  function el(tag, props = {}, ...children) {
    const node = Object.assign(document.createElement(tag), props);
    node.append(...children);
    return node;
  }

  function show(name) {
    screens.forEach((s) => { $(s).hidden = s !== name; });
    clearTimeout(stockTimer);
    if (name === "catalog") stockTimer = setTimeout(refreshStock, STOCK_POLL_MS);
  }
  function money(n) { return n.toLocaleString(); }
  function clock(iso) { return new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" }); }

  // { status, body, retryAfter }; status 0 when the server could not be reached.
  async function api(path, options = {}) {
    const headers = Object.assign({ "Content-Type": "application/json" }, options.headers || {});
    if (options.auth !== false) headers.Authorization = `Bearer ${token}`;
    let res;
    try {
      res = await fetch(`/api/v1${path}`, Object.assign({}, options, { headers }));
    } catch (error) {
      return { status: 0, body: null, retryAfter: null };
    }
    const body = res.status === 204 ? null : await res.json().catch(() => null);
    return { status: res.status, body, retryAfter: Number(res.headers.get("Retry-After")) || null };
  }

  function seconds(n) { return n === 1 ? "1 second" : `${n || "a few"} seconds`; }

  // --- signing in and out -----------------------------------------------------------------------

  function signInProblem(res) {
    const code = res.body && res.body.error && res.body.error.code;
    if (res.status === 401 || code === "INVALID_CREDENTIALS") return "That username and password do not match. Check both and try again.";
    if (res.status === 429) return `Too many sign-in attempts. Please wait ${seconds(res.retryAfter)} and try again.`;
    if (res.status === 400) return "Please enter your username and your password.";
    if (res.status === 0) return "The shop could not be reached. Check your connection and try again.";
    return "Signing in is not possible right now. Please try again in a moment.";
  }

  async function signIn(username, password) {
    const res = await api("/auth/token", { method: "POST", auth: false, body: JSON.stringify({ username, password }) });
    if (res.status !== 201) return signInProblem(res);
    token = res.body.token;
    localStorage.setItem("shopToken", token);
    return (await loadMe()) ? null : "Signed in, but your account could not be read. Please try again.";
  }

  function forget(note) {
    token = "";
    me = null;
    localStorage.removeItem("shopToken");
    $("who").replaceChildren();
    $("password").value = "";
    $("signin-error").textContent = "";
    $("signin-note").textContent = note || "";
    show("signin");
  }

  async function signOut() {
    $("signout").disabled = true;
    const res = await api("/auth/token", { method: "DELETE" });
    // 401: the token was no longer valid anyway (expired or revoked elsewhere).
    forget(res.status === 204 || res.status === 401 ? "You are signed out."
      : "You are signed out on this browser, but the shop could not be told; your sign-in expires on its own.");
  }

  function sessionEnded() { forget("Your sign-in has ended. Please sign in again."); }

  async function loadMe() {
    const res = await api("/accounts/me");
    if (res.status !== 200) return false;
    me = res.body;
    const out = el("button", { className: "ghost", id: "signout", type: "button" }, "Sign out");
    out.onclick = signOut;
    $("who").replaceChildren(`User ${me.userId} · balance `, el("b", {}, money(me.balance)), " · ", out);
    return true;
  }

  // --- the catalog, its live stock ----------------------------------------------------------------

  async function loadCatalog() {
    const res = await api("/products?page_size=100");
    if (res.status === 401) return sessionEnded();
    products = res.status === 200 ? res.body.results : [];
    quantities = {};
    cards = {};
    $("products").replaceChildren();
    for (const p of products) {
      const less = el("button", { type: "button", ariaLabel: "less" }, "−");
      const more = el("button", { type: "button", ariaLabel: "more" }, "+");
      const qty = el("output", {}, "0");
      qty.dataset.qty = "";
      const price = el("span", {}, money(p.price));
      price.dataset.price = "";
      const stock = el("span", {});
      stock.dataset.stock = "";
      const note = el("span", { className: "note" });
      const card = el("div", { className: "product" },
        el("span", { className: "name" }, p.name),
        el("span", { className: "meta" }, "Price ", price, " · ", stock),
        el("div", { className: "qty" }, less, qty, more), note);
      card.dataset.productId = p.productId;
      cards[p.productId] = { card, qty, price, stock, note, more };
      less.onclick = () => setQty(p, (quantities[p.productId] || 0) - 1);
      more.onclick = () => setQty(p, (quantities[p.productId] || 0) + 1);
      $("products").appendChild(card);
      showStock(p);
    }
    updateTotal();
    $("order-error").textContent = "";
    show("catalog");
  }

  function showStock(p) {
    const c = cards[p.productId];
    c.stock.textContent = p.stock > 0 ? `${money(p.stock)} in stock` : "Sold out";
    c.card.classList.toggle("sold-out", p.stock <= 0);
    c.more.disabled = (quantities[p.productId] || 0) >= Math.min(p.stock, 99);
  }

  function setQty(p, q) {
    quantities[p.productId] = Math.max(0, Math.min(q, 99, p.stock));
    cards[p.productId].qty.textContent = quantities[p.productId];
    cards[p.productId].note.textContent = "";
    showStock(p);
    updateTotal();
  }

  // Every STOCK_POLL_MS while the catalog is shown: stock (and prices) as they are now. A basket
  // larger than what is left is cut down to it, and the card says so.
  async function refreshStock() {
    const res = await api("/products?page_size=100");
    if (res.status === 401) return sessionEnded();
    if (res.status === 200 && !$("catalog").hidden) {
      for (const fresh of res.body.results) {
        const p = products.find((x) => x.productId === fresh.productId);
        if (!p) continue;
        p.stock = fresh.stock;
        if (fresh.price !== p.price) { p.price = fresh.price; cards[p.productId].price.textContent = money(p.price); }
        if ((quantities[p.productId] || 0) > p.stock) {
          setQty(p, p.stock);
          cards[p.productId].note.textContent = p.stock > 0 ? `Only ${money(p.stock)} left now.` : "Sold out just now.";
        }
        showStock(p);
      }
      updateTotal();
    }
    if (!$("catalog").hidden) stockTimer = setTimeout(refreshStock, STOCK_POLL_MS);
  }

  function updateTotal() {
    const total = products.reduce((sum, p) => sum + p.price * (quantities[p.productId] || 0), 0);
    $("total").textContent = money(total);
    $("place").disabled = !products.some((p) => quantities[p.productId] > 0) || Date.now() < placeBlockedUntil;
  }

  // --- errors in a buyer's words ------------------------------------------------------------------

  function nameOf(productId) {
    const p = products.find((x) => x.productId === Number(productId));
    return p ? p.name : "an item";
  }

  function explain(res, error) {
    const d = error.details || {};
    const wait = seconds(res.retryAfter);
    switch (error.code) {
      case "OUT_OF_STOCK":
        return `Out of stock: ${nameOf(d.productId)} has ${d.available} left and you asked for ${d.requested}. Nothing was reserved or charged.`;
      case "INSUFFICIENT_BALANCE": return "Your balance does not cover this order. Nothing was charged.";
      case "PRICE_CHANGED": return priceChanged(d.currentPrices || {});
      case "COUPON_INVALID": return couponProblem(error);
      case "RATE_LIMITED":
        return `You are ordering faster than the shop allows. Please wait ${wait} and place the order again. Nothing was reserved or charged.`;
      case "SERVICE_UNAVAILABLE":
        return `The shop is very busy right now. Please try again in ${wait}. Nothing was reserved or charged.`;
      case "TOO_MANY_UNPAID_ORDERS":
        return "Your earlier orders are still being paid. Please wait a moment for them, then order again. Nothing was reserved.";
      case "PURCHASE_LIMIT_REACHED":
        return `${nameOf(d.productId)} can be bought at most ${d.limit} times per customer. Nothing was reserved or charged.`;
      default:
        if (res.status === 0) return "The shop could not be reached. Check your connection and try again; nothing was charged.";
        return error.message || "Something went wrong. Nothing was charged.";
    }
  }

  // The basket's prices are brought up to date from the answer; the message names what changed.
  function priceChanged(current) {
    const changes = [];
    for (const [id, price] of Object.entries(current)) {
      const p = products.find((x) => x.productId === Number(id));
      if (!p || p.price === price) continue;
      changes.push(`${p.name} now costs ${money(price)} (was ${money(p.price)})`);
      p.price = price;
      cards[p.productId].price.textContent = money(price);
    }
    updateTotal();
    const what = changes.length ? `${changes.join("; ")}.` : "A price changed while you were shopping.";
    return `${what} Please check the new total and place the order again. Nothing was reserved or charged.`;
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

  // Refusals the buyer can act on from the basket: back to it, the basket kept, the reason under it.
  const BACK_TO_BASKET = new Set(["PRICE_CHANGED", "RATE_LIMITED", "SERVICE_UNAVAILABLE", "TOO_MANY_UNPAID_ORDERS", "PURCHASE_LIMIT_REACHED"]);

  function fail(title, text) {
    $("failed-title").textContent = title;
    $("failed-text").textContent = text;
    show("failed");
  }

  // --- an order and its progress ------------------------------------------------------------------

  function setProgress(progress, state) {
    const at = Object.fromEntries(progress.map((s) => [s.step, s.at]));
    const reached = STEPS.filter((s) => s in at);
    const last = state === "failed" ? 2 : reached.length;
    $("fill").style.width = `${Math.max(8, (last / STEPS.length) * 100)}%`;
    $("fill").className = "fill" + (state === "paid" ? " ok" : state === "failed" ? " bad" : "");
    document.querySelectorAll(".steps li").forEach((li) => {
      const step = li.dataset.step;
      li.classList.toggle("done", step in at);
      li.querySelector("time").textContent = step in at ? clock(at[step]) : "";
    });
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
    $("order-error").textContent = "";
    const res = await api("/orders", { method: "POST", body: JSON.stringify(body),
      headers: { Prefer: "respond-async", "Idempotency-Key": key } });
    if (res.status === 401) return sessionEnded();
    if (res.status !== 202 && res.status !== 201) {
      const error = (res.body && res.body.error) || { code: `HTTP_${res.status}` };
      const field = error.details && error.details.couponCode;
      if (error.code === "COUPON_INVALID" || (error.code === "VALIDATION_ERROR" && field)) {
        // Back to the basket, the problem under the coupon field: the rest of the order stands.
        $("coupon-error").textContent = error.code === "COUPON_INVALID" ? couponProblem(error) : `Coupon: ${[].concat(field).join(" ")}`;
        show("catalog");
        updateTotal();
        $("coupon").focus();
        return;
      }
      if (BACK_TO_BASKET.has(error.code)) {
        $("order-error").textContent = explain(res, error);
        show("catalog");
        if (res.retryAfter) {
          placeBlockedUntil = Date.now() + res.retryAfter * 1000;
          setTimeout(updateTotal, res.retryAfter * 1000 + 50);
        }
        updateTotal();
        return;
      }
      const title = error.code === "OUT_OF_STOCK" ? "Sold out" : "The order did not go through";
      return fail(title, explain(res, error));
    }
    await follow(res.body.orderId);
  }

  async function follow(orderId) {
    $("progress-order").textContent = `#${orderId}`;
    for (let i = 0; i < 600; i++) {
      const res = await api(`/orders/${orderId}`);
      if (res.status === 401) return sessionEnded();
      if (res.status === 200) {
        const order = res.body;
        const done = order.progress.map((s) => s.step);
        if (order.status === "PAID") { setProgress(order.progress, "paid"); return finish(order); }
        if (done.includes("failed")) {
          setProgress(order.progress, "failed");
          return fail("Payment failed", `Your balance did not cover ${money(order.totalAmount - order.discountAmount)}. ` +
            "The order was cancelled, the items went back on sale and nothing was charged.");
        }
        if (order.status === "CANCELLED") return fail("Order cancelled", "The order was cancelled and nothing was charged.");
        setProgress(order.progress, "running");
        $("progress-text").textContent = done.includes("paying") ? "Taking the payment from your balance…" : "Items reserved. Waiting for the payment…";
      }
      await new Promise((r) => setTimeout(r, 300));
    }
    fail("Still waiting", "The payment is taking longer than usual. Check your orders later.");
  }

  async function finish(order) {
    await loadMe();
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
    $("signin-note").textContent = "";
    $("signin-button").disabled = true;
    const problem = await signIn($("username").value.trim(), $("password").value);
    $("signin-button").disabled = false;
    if (problem) {
      $("signin-error").textContent = problem;
      $("password").select();
      return;
    }
    $("password").value = "";
    await loadCatalog();
  };
  $("place").onclick = placeOrder;
  document.querySelectorAll("[data-action=again]").forEach((b) => { b.onclick = loadCatalog; });

  (async () => {
    if (token && await loadMe()) await loadCatalog();
    else forget(token ? "Your sign-in has ended. Please sign in again." : "");
  })();
})();

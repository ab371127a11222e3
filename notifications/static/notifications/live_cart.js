/**
 * Live cart signals: one WebSocket per page to /ws/cart/, opened when this session has a cart.
 *
 * The server decides which cart the socket follows (the signed-in user's, or the anonymous
 * session's); the page only says where to connect. Frames:
 *   hello  {lines: [...]}  every line of the cart with its state, right after connect;
 *   lines  {lines: [...]}  the lines a stock change just touched.
 * Each line: {product, slug, name, in_cart, available, state: ok|short|sold_out|unavailable,
 * message, stock_class, stock_label}.
 *
 * Every page toasts a change ("Only 1 left of Burr Grinder - you have 2 in your cart"); the
 * cart page also updates the line's row and the "Please check your cart" notice in place.
 * The states last seen are kept in localStorage, so a change made while no page was
 * connected (a reload, a reconnect) is toasted once when the next `hello` shows it, and a
 * state already seen is not toasted again on every page.
 */

const HEARTBEAT_MS = 25_000;
const TOAST_MS = 12_000;
const MAX_TOASTS = 5;
const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 30_000;
const BACKOFF_FLOOR_MS = 250;
// The server's "no cart for this session" and "signed out": reconnecting cannot help.
const FINAL_CLOSE_CODES = new Set([4401, 4403, 4404]);
const STORAGE_KEY = "shop.liveCart.states";

const configElement = document.getElementById("live-cart-config");
if (configElement) {
  start(JSON.parse(configElement.textContent));
}

function start(config) {
  let socket = null;
  let attempt = 0;
  let heartbeat = null;
  let reconnectTimer = null;
  let stopped = false;
  const received = []; // Every line frame this page got, for debugging and the browser tests.

  window.shopLiveCart = Object.freeze({
    get connected() { return socket !== null && socket.readyState === WebSocket.OPEN; },
    get received() { return received.slice(); },
  });

  function connect() {
    clearTimeout(reconnectTimer);
    reconnectTimer = null;
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    let ws;
    try {
      ws = new WebSocket(`${scheme}${location.host}${config.socket_path}`);
    } catch (error) {
      console.warn("live cart: cannot open the socket", error);
      scheduleReconnect();
      return;
    }
    socket = ws;
    ws.addEventListener("open", () => {
      attempt = 0;
      document.documentElement.dataset.liveCart = "live";
      heartbeat = setInterval(() => {
        if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "ping" }));
      }, HEARTBEAT_MS);
    });
    ws.addEventListener("message", (event) => handleFrame(event.data));
    ws.addEventListener("close", (event) => {
      if (socket !== ws) return;
      socket = null;
      clearInterval(heartbeat);
      heartbeat = null;
      delete document.documentElement.dataset.liveCart;
      if (FINAL_CLOSE_CODES.has(event.code)) {
        stopped = true;
        return;
      }
      scheduleReconnect();
    });
  }

  function scheduleReconnect() {
    if (stopped || reconnectTimer) return;
    // Full jitter: after a restart, thousands of pages must not reconnect in step.
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** attempt);
    attempt += 1;
    reconnectTimer = setTimeout(connect, Math.max(BACKOFF_FLOOR_MS, Math.random() * ceiling));
  }

  function handleFrame(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (frame.type === "hello") {
      const known = loadStates();
      for (const line of frame.lines || []) {
        applyToCartPage(line);
        // Toast only a change since a state this browser has seen: not the first sight of a line.
        const before = known[line.product];
        if (before !== undefined && before !== line.state) showToast(line);
        known[line.product] = line.state;
      }
      saveStates(known);
    } else if (frame.type === "lines") {
      const known = loadStates();
      for (const line of frame.lines || []) {
        received.push(line);
        applyToCartPage(line);
        if (known[line.product] !== line.state || line.state !== "ok") showToast(line);
        known[line.product] = line.state;
      }
      saveStates(known);
    } else if (frame.type === "error") {
      console.warn(`live cart: ${frame.code}: ${frame.detail}`);
    }
  }

  // The cart page ---------------------------------------------------------------------------

  function applyToCartPage(line) {
    const row = document.querySelector(`tr[data-product="${CSS.escape(String(line.slug))}"]`);
    if (!row) return;
    row.dataset.lineState = line.state;
    const stock = row.querySelector(".stock");
    if (stock) {
      stock.className = `stock stock-${line.stock_class}`;
      stock.textContent = line.stock_label;
    }
    let note = row.querySelector(".line-live-note");
    if (line.state === "ok") {
      note?.remove();
    } else {
      if (!note) {
        note = document.createElement("p");
        note.className = "line-live-note";
        note.setAttribute("role", "status");
        (row.querySelector(".cell-title") || row.firstElementChild)?.append(note);
      }
      note.textContent = line.message;
    }
    updateProblems(line);
  }

  function updateProblems(line) {
    const table = document.querySelector(".cart-table");
    if (!table) return;
    let notice = document.querySelector(".cart-problems, .notice-warning");
    let list = notice?.querySelector("ul.problems");
    // The server's own item about this product (rendered with the page) gives way to the live one.
    list?.querySelectorAll("li:not([data-live-product])").forEach((item) => {
      if (item.textContent.includes(line.name)) item.remove();
    });
    list?.querySelector(`li[data-live-product="${Number(line.product)}"]`)?.remove();
    if (line.state !== "ok") {
      if (!list) {
        notice = document.createElement("div");
        notice.className = "notice notice-warning cart-problems";
        notice.setAttribute("role", "alert");
        const heading = document.createElement("h2");
        heading.textContent = "Please check your cart";
        list = document.createElement("ul");
        list.className = "problems";
        notice.append(heading, list);
        table.before(notice);
      }
      const item = document.createElement("li");
      item.dataset.liveProduct = String(Number(line.product));
      item.textContent = line.message;
      list.append(item);
    }
    if (list && !list.children.length) notice.remove();
  }

  // Toasts --------------------------------------------------------------------------------

  function showToast(line) {
    const container = document.getElementById("toasts");
    if (!container) return;
    container.querySelector(`.toast[data-cart-product="${Number(line.product)}"]`)?.remove();
    const toast = document.createElement("div");
    toast.className = line.state === "ok" ? "toast toast-cart" : "toast toast-cart toast-warning";
    toast.setAttribute("role", "status");
    toast.dataset.cartProduct = String(Number(line.product));
    toast.dataset.state = line.state;
    // textContent only: names are data, not markup.
    const link = document.createElement("a");
    link.className = "toast-link";
    link.href = config.cart_url;
    link.textContent = line.message;
    const close = document.createElement("button");
    close.type = "button";
    close.className = "toast-close";
    close.setAttribute("aria-label", "Dismiss");
    close.textContent = "×";
    close.addEventListener("click", () => toast.remove());
    toast.append(link, close);
    container.append(toast);
    const toasts = container.querySelectorAll(".toast");
    for (let i = 0; i < toasts.length - MAX_TOASTS; i += 1) toasts[i].remove();
    autoHide(toast);
  }

  function autoHide(toast) {
    // Never hide a toast while someone is reading it.
    let timer = null;
    let hovered = false;
    let focused = false;
    const arm = () => {
      clearTimeout(timer);
      if (!hovered && !focused) timer = setTimeout(() => toast.remove(), TOAST_MS);
    };
    toast.addEventListener("mouseenter", () => { hovered = true; arm(); });
    toast.addEventListener("mouseleave", () => { hovered = false; arm(); });
    toast.addEventListener("focusin", () => { focused = true; arm(); });
    toast.addEventListener("focusout", (event) => {
      if (toast.contains(event.relatedTarget)) return;
      focused = false;
      arm();
    });
    arm();
  }

  window.addEventListener("online", () => { if (!stopped && !socket) connect(); });
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && !stopped && !socket) connect();
  });
  connect();
}

function loadStates() {
  try {
    const value = JSON.parse(localStorage.getItem(STORAGE_KEY) || "{}");
    return value && typeof value === "object" && !Array.isArray(value) ? value : {};
  } catch {
    return {}; // Storage off (private mode, a policy): every page simply starts fresh.
  }
}

function saveStates(states) {
  try {
    localStorage.setItem(STORAGE_KEY, JSON.stringify(states));
  } catch {
    // Nothing to do: the next page toasts what it sees change.
  }
}

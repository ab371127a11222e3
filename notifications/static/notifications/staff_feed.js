/**
 * The staff feed: one WebSocket per staff page (the admin's and the shop's) to /ws/staff/.
 *
 * Frames: `order_paid` (a new paid order: number, amount, customer) and `payment_attention`
 * (a payment left pending past PAYMENT_TIMEOUT, or released by reconciliation), each shown
 * as a toast linking to the order in the admin. On the admin's order list, new paid orders
 * also add up in a bar: "3 new orders - refresh". The server closes a socket that is not
 * staff's with 4403 before it joins anything; this client then stops.
 */

const HEARTBEAT_MS = 25_000;
const TOAST_MS = 15_000;
const MAX_TOASTS = 5;
const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 30_000;
const BACKOFF_FLOOR_MS = 250;
const FINAL_CLOSE_CODES = new Set([4401, 4403]);

const configElement = document.getElementById("staff-feed-config");
if (configElement) {
  start(JSON.parse(configElement.textContent));
}

function start(config) {
  let socket = null;
  let attempt = 0;
  let heartbeat = null;
  let reconnectTimer = null;
  let stopped = false;
  let newOrders = 0;
  const onOrderList = location.pathname === config.order_list_path;

  window.shopStaffFeed = Object.freeze({
    get connected() { return socket !== null && socket.readyState === WebSocket.OPEN; },
    get newOrders() { return newOrders; },
  });

  function connect() {
    clearTimeout(reconnectTimer);
    reconnectTimer = null;
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    let ws;
    try {
      ws = new WebSocket(`${scheme}${location.host}${config.socket_path}`);
    } catch (error) {
      console.warn("staff feed: cannot open the socket", error);
      scheduleReconnect();
      return;
    }
    socket = ws;
    ws.addEventListener("message", (event) => handleFrame(event.data));
    ws.addEventListener("close", (event) => {
      if (socket !== ws) return;
      socket = null;
      clearInterval(heartbeat);
      heartbeat = null;
      delete document.documentElement.dataset.staffFeed;
      if (FINAL_CLOSE_CODES.has(event.code)) {
        stopped = true;
        return;
      }
      scheduleReconnect();
    });
    ws.addEventListener("open", () => {
      heartbeat = setInterval(() => {
        if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "ping" }));
      }, HEARTBEAT_MS);
    });
  }

  function scheduleReconnect() {
    if (stopped || reconnectTimer) return;
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
    switch (frame.type) {
      case "hello":
        attempt = 0;
        // Set on hello, not on open: only now has the server joined the staff group.
        document.documentElement.dataset.staffFeed = "live";
        break;
      case "order_paid":
        showToast(frame, "staff-toast-order");
        if (onOrderList) countNewOrder();
        break;
      case "payment_attention":
        showToast(frame, "staff-toast-attention");
        break;
      case "error":
        console.warn(`staff feed: ${frame.code}: ${frame.detail}`);
        break;
      default:
        break;
    }
  }

  // The order list's bar ----------------------------------------------------------------------

  function countNewOrder() {
    newOrders += 1;
    let bar = document.getElementById("live-orders-bar");
    if (!bar) {
      bar = document.createElement("div");
      bar.id = "live-orders-bar";
      bar.className = "live-orders-bar";
      bar.setAttribute("role", "status");
      const text = document.createElement("span");
      text.className = "live-orders-count";
      const refresh = document.createElement("a");
      refresh.href = location.pathname + location.search;
      refresh.textContent = "refresh";
      bar.append(text, document.createTextNode(" - "), refresh);
      const anchor = document.getElementById("changelist") || document.getElementById("content");
      (anchor?.parentNode ? anchor : document.body).before(bar);
    }
    bar.querySelector(".live-orders-count").textContent = `${newOrders} new order${newOrders === 1 ? "" : "s"}`;
  }

  // Toasts ---------------------------------------------------------------------------------------

  function toastContainer() {
    // The shop's pages have one; the admin gets its own.
    let container = document.getElementById("toasts");
    if (!container) {
      container = document.createElement("div");
      container.id = "toasts";
      container.className = "live-toasts";
      container.setAttribute("aria-live", "polite");
      document.body.append(container);
    }
    return container;
  }

  function showToast(frame, kind) {
    const container = toastContainer();
    const toast = document.createElement("div");
    toast.className = `toast staff-toast ${kind}`;
    toast.setAttribute("role", "status");
    toast.dataset.staffEvent = String(frame.type);
    toast.dataset.orderNumber = String(frame.number ?? "");
    // textContent only: names and numbers are data, not markup.
    const link = document.createElement("a");
    link.className = "toast-link";
    link.href = localPath(frame.url) ?? config.order_list_path;
    link.textContent = String(frame.title ?? "");
    const body = document.createElement("p");
    body.className = "toast-body";
    body.textContent = String(frame.detail ?? "");
    const close = document.createElement("button");
    close.type = "button";
    close.className = "toast-close";
    close.setAttribute("aria-label", "Dismiss");
    close.textContent = "×";
    close.addEventListener("click", () => toast.remove());
    toast.append(link, body, close);
    container.append(toast);
    const toasts = container.querySelectorAll(".toast");
    for (let i = 0; i < toasts.length - MAX_TOASTS; i += 1) toasts[i].remove();
    let timer = null;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => toast.remove(), TOAST_MS);
    };
    toast.addEventListener("mouseenter", () => clearTimeout(timer));
    toast.addEventListener("mouseleave", arm);
    arm();
  }

  window.addEventListener("online", () => { if (!stopped && !socket) connect(); });
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && !stopped && !socket) connect();
  });
  connect();
}

function localPath(url) {
  if (!url) return null;
  try {
    const parsed = new URL(url, location.origin);
    return parsed.origin === location.origin ? parsed.pathname + parsed.search : null;
  } catch {
    return null;
  }
}

/**
 * Live order notifications: one WebSocket per tab to /ws/notifications/.
 *
 * The Notification rows in the database are the source of truth and the socket is only
 * a nudge. Each user's notifications are numbered 1, 2, 3... in commit order (`seq`), so
 * this client knows the last number up to which it has everything (`lastSeq`). On every
 * (re)connect it asks for what follows; while connected, a frame that skips a number, or a
 * pong/hello whose `last_seq` is ahead (a push lost while the socket stayed open), makes it
 * resume from `lastSeq`. It drops anything it has already seen (a push and a replay can
 * overlap), and acknowledges what it has shown so the next page does not show it again.
 *
 * The page renders the configuration with json_script; without it (signed out) we do nothing.
 */

const HEARTBEAT_MS = 25_000; // Below common proxy idle timeouts; also renews group membership.
const TOAST_MS = 8_000;
const MAX_TOASTS = 5;
const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 30_000;
const BACKOFF_FLOOR_MS = 250;
const CLOSE_SIGNED_OUT = 4401; // The server's "not signed in" code: retrying cannot help.
// A push can overtake an earlier one (two servers, two commits): wait this long for the
// missing number before asking the server to resume.
const GAP_GRACE_MS = 1_000;
// A resume the server has not answered (refused, or lost with the socket) is asked again after this.
const RESUME_RETRY_MS = 10_000;

const STATE_LABELS = {
  connecting: "Connecting to live updates…",
  live: "Live updates on",
  reconnecting: "Connection lost, reconnecting…",
  offline: "Live updates off",
};

const configElement = document.getElementById("notifications-config");
if (configElement) {
  start(JSON.parse(configElement.textContent));
}

function start(config) {
  let socket = null;
  let state = "connecting";
  let newestId = Number(config.last_id) || 0;
  let lastSeq = Number(config.last_seq) || 0; // Every notification up to this number has been received.
  let knownSeq = lastSeq; // The newest number the server has told about.
  const aheadSeqs = new Set(); // Numbers received past a gap.
  let resumeAskedAt = 0; // When the pending resume was asked (0: none pending).
  let gapTimer = null;
  let attempt = 0;
  let heartbeat = null;
  let reconnectTimer = null;
  let stopped = false; // Set once the server says we are signed out.
  const seenIds = new Set();
  const pendingAcks = []; // Ids shown before the socket was open.

  // Read-only handles for debugging and the browser tests; nothing else is global.
  window.shopNotifications = Object.freeze({
    get state() { return state; },
    get newestId() { return newestId; },
    get lastSeq() { return lastSeq; },
  });

  // Connection ------------------------------------------------------------------------

  function setState(next) {
    state = next;
    const element = document.getElementById("connection-state");
    if (!element) return;
    element.dataset.state = next;
    element.title = STATE_LABELS[next];
    const label = element.querySelector(".visually-hidden");
    if (label) label.textContent = STATE_LABELS[next];
  }

  function send(message) {
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify(message));
      return true;
    }
    return false;
  }

  function connect() {
    clearTimeout(reconnectTimer);
    reconnectTimer = null;
    // The URL is built now, from the current lastSeq: ?after_seq= makes the server replay
    // whatever we missed while away (it counts as the pending resume, so none is sent twice).
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const url = `${scheme}${location.host}${config.socket_path}?after_seq=${lastSeq}`;
    resumeAskedAt = Date.now();
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (error) {
      console.warn("notifications: cannot open the socket", error);
      scheduleReconnect();
      return;
    }
    socket = ws;

    ws.addEventListener("open", () => {
      attempt = 0;
      setState("live");
      while (pendingAcks.length && send({ type: "ack", id: pendingAcks[0] })) pendingAcks.shift();
      heartbeat = setInterval(() => send({ type: "ping" }), HEARTBEAT_MS);
    });
    ws.addEventListener("message", (event) => handleFrame(event.data));
    ws.addEventListener("close", (event) => {
      if (socket !== ws) return; // A socket we already replaced.
      socket = null;
      clearInterval(heartbeat);
      heartbeat = null;
      clearTimeout(gapTimer);
      gapTimer = null;
      resumeAskedAt = 0; // Whatever was asked is lost with the socket; the next connect asks again.
      // Any other code, 4013 ("try again later": the server cannot reach Redis) included, backs off.
      if (event.code === CLOSE_SIGNED_OUT) {
        // Signed out (here or in another tab), or the session ended: reconnecting would only be refused again.
        stopped = true;
        setState("offline");
        return;
      }
      setState("reconnecting");
      scheduleReconnect();
    });
  }

  function scheduleReconnect() {
    if (stopped || reconnectTimer) return;
    // Full jitter: after a daphne restart, thousands of tabs must not reconnect in step.
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** attempt);
    const delay = Math.max(BACKOFF_FLOOR_MS, Math.random() * ceiling);
    attempt += 1;
    reconnectTimer = setTimeout(connect, delay);
  }

  function reconnectNow() {
    // Coming back online or to the tab is a good moment: skip the rest of the backoff.
    if (stopped || socket) return;
    connect();
  }

  // Frames ---------------------------------------------------------------------------

  function handleFrame(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      console.warn("notifications: ignoring a frame that is not JSON");
      return;
    }
    switch (frame.type) {
      case "hello":
        setUnread(frame.unread); // The replay itself comes from ?after_seq= on the URL.
        noteServerSeq(frame.last_seq);
        break;
      case "notification":
        receive(frame);
        break;
      case "replayed":
        // The end of a replay: nothing up to last_seq is missing (a deleted notification included).
        resumeAskedAt = 0;
        clearTimeout(gapTimer);
        gapTimer = null;
        advanceTo(Number(frame.last_seq));
        break;
      case "pong":
        noteServerSeq(frame.last_seq);
        break;
      case "unread":
        setUnread(frame.count);
        break;
      case "error":
        console.warn(`notifications: ${frame.code}: ${frame.detail}`);
        if (frame.code === "rate_limited" && resumeAskedAt) resumeAskedAt = Date.now(); // Ask again later.
        break;
      default:
        break; // Anything newer than this client: nothing to do.
    }
  }

  // Gaps ---------------------------------------------------------------------------------

  function noteSeq(value) {
    const seq = Number(value);
    if (!Number.isSafeInteger(seq) || seq <= lastSeq) return;
    aheadSeqs.add(seq);
    if (seq > knownSeq) knownSeq = seq;
    advanceTo(lastSeq);
  }

  function noteServerSeq(value) {
    const seq = Number(value);
    if (Number.isSafeInteger(seq) && seq > knownSeq) knownSeq = seq;
    checkGap();
  }

  function advanceTo(seq) {
    if (Number.isSafeInteger(seq) && seq > lastSeq) lastSeq = seq;
    while (aheadSeqs.delete(lastSeq + 1)) lastSeq += 1;
    for (const seen of aheadSeqs) if (seen <= lastSeq) aheadSeqs.delete(seen);
    if (lastSeq > knownSeq) knownSeq = lastSeq;
    checkGap();
  }

  function checkGap() {
    if (lastSeq >= knownSeq) {
      clearTimeout(gapTimer);
      gapTimer = null;
      return;
    }
    if (gapTimer) return;
    // A resume already asked gets its answer (or RESUME_RETRY_MS) first; a fresh gap its grace.
    const wait = resumeAskedAt ? Math.max(0, resumeAskedAt + RESUME_RETRY_MS - Date.now()) : GAP_GRACE_MS;
    gapTimer = setTimeout(() => {
      gapTimer = null;
      if (lastSeq >= knownSeq) return;
      if (resumeAskedAt && Date.now() - resumeAskedAt < RESUME_RETRY_MS) {
        checkGap();
        return;
      }
      if (send({ type: "resume", after_seq: lastSeq })) resumeAskedAt = Date.now();
    }, wait);
  }

  function remember(id) {
    seenIds.add(id);
    if (id > newestId) newestId = id;
  }

  function receive(frame) {
    const id = Number(frame.id);
    noteSeq(frame.seq);
    if (!Number.isSafeInteger(id) || seenIds.has(id)) return; // Push and replay overlap: show once.
    remember(id);
    if (!frame.read) showToast(frame);
    send({ type: "ack", id });
    prependToInbox(frame);
    refreshLiveRegions(frame.url);
  }

  // A page showing an order marks its changing part with data-live-url (and an id). When
  // a notification concerns that URL, fetch the page again and swap the part in, so the
  // status and timeline follow staff changes without a reload. A burst of notifications
  // (a replay after reconnect) costs one fetch.
  let refreshTimer = null;
  function refreshLiveRegions(url) {
    const path = sameOriginPath(url);
    if (!path) return;
    const regions = [...document.querySelectorAll("[data-live-url][id]")].filter((region) =>
      path.startsWith(region.dataset.liveUrl),
    );
    if (!regions.length) return;
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(async () => {
      try {
        // The header tells the page not to consume flash messages meant for the next real page.
        const response = await fetch(location.href, { headers: { "X-Live-Refresh": "1" }, credentials: "same-origin" });
        if (!response.ok) return;
        const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
        regions.forEach((region) => {
          const replacement = fresh.getElementById(region.id);
          if (replacement) region.replaceWith(document.importNode(replacement, true));
        });
      } catch {
        // The toast has told the shopper already; the next page load shows the rest.
      }
    }, 150);
  }

  function setUnread(count) {
    const n = Math.max(0, Number(count) || 0);
    document.querySelectorAll("[data-unread-count]").forEach((element) => {
      element.textContent = String(n);
      element.classList.toggle("is-zero", n === 0);
    });
    const bell = document.getElementById("notification-bell");
    if (bell) bell.setAttribute("aria-label", `Notifications: ${n} unread`);
    // Reads made in another tab arrive only as a count; zero still tells us every item is read.
    if (n === 0) markItemsRead(null);
  }

  // Marking read: over the socket when it is open, else over HTTP. ---------------------

  async function requestRead(id, { keepalive = false } = {}) {
    // The server answers a socket read with an "unread" frame to every tab of the user.
    if (send(id === null ? { type: "read_all" } : { type: "read", id })) return;
    const response = await fetch(config.read_url, {
      method: "POST",
      credentials: "same-origin",
      keepalive, // Lets the request outlive the page when a toast click navigates away.
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": cookie("csrftoken") },
      body: JSON.stringify(id === null ? { all: true } : { id }),
    });
    if (!response.ok) throw new Error(`marking read failed with HTTP ${response.status}`);
    setUnread((await response.json()).unread);
  }

  function markItemsRead(id) {
    const selector = id === null ? "li.notification.unread" : `li.notification[data-notification-id="${id}"]`;
    document.querySelectorAll(selector).forEach((item) => {
      item.classList.remove("unread");
      item.querySelector("form.mark-read")?.remove();
    });
  }

  // The inbox's forms work without JavaScript; here they just avoid a page reload.
  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (!(form instanceof HTMLFormElement)) return;
    const all = form.classList.contains("mark-all-read");
    if (!all && !form.classList.contains("mark-read")) return;
    event.preventDefault();
    const id = all ? null : Number(form.querySelector('input[name="id"]')?.value);
    requestRead(id)
      .then(() => markItemsRead(id))
      .catch(() => HTMLFormElement.prototype.submit.call(form)); // Neither path worked: plain post.
  });

  // Toasts -----------------------------------------------------------------------------

  function showToast(frame) {
    const container = document.getElementById("toasts");
    if (!container) return;
    const toast = document.createElement("div");
    toast.className = "toast";
    toast.setAttribute("role", "status");
    toast.dataset.notificationId = String(frame.id);

    // Built with textContent, never innerHTML: titles and bodies are data, not markup.
    const link = document.createElement("a");
    link.className = "toast-link";
    link.href = sameOriginPath(frame.url) ?? config.inbox_url;
    link.textContent = frame.title;
    // A normal link navigates; the read is fire and forget on the way out.
    link.addEventListener("click", () => requestRead(Number(frame.id), { keepalive: true }).catch(() => {}));

    const body = document.createElement("p");
    body.className = "toast-body";
    body.textContent = frame.body || "";

    const close = document.createElement("button");
    close.type = "button";
    close.className = "toast-close";
    close.setAttribute("aria-label", "Dismiss");
    close.textContent = "×";
    close.addEventListener("click", () => toast.remove());

    toast.append(link, body, close);
    container.append(toast);
    const toasts = container.querySelectorAll(".toast");
    for (let i = 0; i < toasts.length - MAX_TOASTS; i += 1) toasts[i].remove(); // Oldest go first.
    autoHide(toast);
  }

  function autoHide(toast) {
    // Never hide a toast while someone is reading it (pointer over it or focus inside).
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

  // Inbox --------------------------------------------------------------------------------

  function prependToInbox(frame) {
    const list = document.getElementById("notification-list");
    // Only the first page of the inbox grows at the top; later pages would be out of order.
    if (!list || !("live" in list.dataset)) return;
    if (list.querySelector(`[data-notification-id="${Number(frame.id)}"]`)) return;

    const item = document.createElement("li");
    item.className = frame.read ? "notification" : "notification unread";
    item.dataset.notificationId = String(frame.id);
    const main = document.createElement("div");
    main.className = "notification-main";
    const title = document.createElement("a");
    title.className = "notification-title";
    title.href = sameOriginPath(frame.url) ?? config.inbox_url;
    title.textContent = frame.title;
    const body = document.createElement("p");
    body.className = "notification-body";
    body.textContent = frame.body || "";
    const time = document.createElement("time");
    time.className = "notification-time";
    time.dateTime = frame.created_at;
    time.textContent = "just now";
    main.append(title, body, time);
    item.append(main);
    if (!frame.read) item.append(markReadForm(frame.id));

    list.prepend(item);
    document.getElementById("notification-empty")?.remove();
  }

  function markReadForm(id) {
    // The same form the server renders, so the no-socket, no-fetch fallback still posts.
    const form = document.createElement("form");
    form.method = "post";
    form.action = config.read_url;
    form.className = "mark-read";
    const fields = {
      csrfmiddlewaretoken: document.querySelector('input[name="csrfmiddlewaretoken"]')?.value ?? cookie("csrftoken"),
      id: String(id),
      next: location.pathname + location.search,
    };
    for (const [name, value] of Object.entries(fields)) {
      const input = document.createElement("input");
      input.type = "hidden";
      input.name = name;
      input.value = value;
      form.append(input);
    }
    const button = document.createElement("button");
    button.type = "submit";
    button.className = "button small subtle";
    button.textContent = "Mark read";
    form.append(button);
    return form;
  }

  // Start ------------------------------------------------------------------------------------

  // What arrived while no tab was open: toast it once (oldest first), ack when we can.
  for (const frame of config.missed || []) {
    const id = Number(frame.id);
    if (!Number.isSafeInteger(id) || seenIds.has(id)) continue;
    remember(id);
    showToast(frame);
    pendingAcks.push(id);
  }

  window.addEventListener("online", reconnectNow);
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") reconnectNow();
  });

  setState("connecting");
  connect();
}

function cookie(name) {
  const pair = document.cookie.split("; ").find((entry) => entry.startsWith(`${name}=`));
  return pair ? decodeURIComponent(pair.slice(name.length + 1)) : "";
}

function sameOriginPath(url) {
  // Notification URLs are our own pages; anything pointing elsewhere is not followed.
  if (!url) return null;
  try {
    const parsed = new URL(url, location.origin);
    return parsed.origin === location.origin ? parsed.pathname + parsed.search + parsed.hash : null;
  } catch {
    return null;
  }
}

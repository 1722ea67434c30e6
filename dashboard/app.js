// Workmatic dashboard. Job data is untrusted: it is only ever put into the page as text
// (textContent, createTextNode, element properties); no markup is ever parsed from data.
// Every URL is relative, so the page works under any mount path.
"use strict";

(function () {
  const REFRESH_MS = 2000;
  const REQUEST_TIMEOUT_MS = 10000;
  const STATUSES = ["ready", "running", "done", "failed", "dead"];
  const RETRYABLE = ["dead", "failed"];
  const PREVIEW_CHARS = 140;

  const state = {
    status: "",
    queue: "",
    offset: 0,
    limit: 20,
    jobId: null,
    live: true,
    skewMs: 0,
    stats: null,
    jobs: null,
    job: null,
    timer: null,
    inFlight: false,
    again: false,
  };
  const lastRendered = {};

  // --- DOM helpers (text only)

  function $(id) {
    return document.getElementById(id);
  }

  // el("td", {className: "num", title: "x"}, "text", childNode, ...): properties are set as
  // properties (never HTML); children are strings (text nodes) or nodes.
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    if (props) {
      for (const [key, value] of Object.entries(props)) {
        if (key === "dataset") {
          Object.assign(node.dataset, value);
        } else if (key === "onclick") {
          node.addEventListener("click", value);
        } else if (value !== undefined && value !== null) {
          node[key] = value;
        }
      }
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // A button that stays disabled while its action runs (no double submissions).
  function button(label, action, className, title) {
    const onclick = (event) => {
      const target = event.currentTarget;
      target.disabled = true;
      Promise.resolve(action(event)).finally(() => {
        target.disabled = false;
      });
    };
    return el("button", { type: "button", className: "btn " + (className || ""), onclick, title }, label);
  }

  function badge(status) {
    return el("span", { className: "badge badge-" + safeClass(status) }, status || "?");
  }

  function safeClass(value) {
    return STATUSES.includes(value) ? value : "unknown";
  }

  function fmt(n) {
    return typeof n === "number" ? n.toLocaleString("en-US") : "–";
  }

  function nowMs() {
    return Date.now() + state.skewMs;
  }

  function relative(ms) {
    if (typeof ms !== "number") return "–";
    const diff = Math.round((ms - nowMs()) / 1000);
    const abs = Math.abs(diff);
    let text;
    if (abs < 2) return "now";
    if (abs < 60) text = abs + " s";
    else if (abs < 3600) text = Math.floor(abs / 60) + " min";
    else if (abs < 86400) text = Math.floor(abs / 3600) + " h";
    else text = Math.floor(abs / 86400) + " d";
    return diff < 0 ? text + " ago" : "in " + text;
  }

  function absolute(ms) {
    return typeof ms === "number" ? new Date(ms).toISOString().replace("T", " ").replace("Z", " UTC") : "";
  }

  function timeCell(ms) {
    return el("td", { className: "time", title: absolute(ms) }, relative(ms));
  }

  function pretty(value) {
    if (value === undefined) return "";
    try {
      return JSON.stringify(value, null, 2);
    } catch (err) {
      return String(value);
    }
  }

  function compact(value) {
    try {
      return JSON.stringify(value);
    } catch (err) {
      return String(value);
    }
  }

  function preview(text) {
    const flat = String(text).replace(/\s+/g, " ");
    return flat.length > PREVIEW_CHARS ? flat.slice(0, PREVIEW_CHARS - 1) + "…" : flat;
  }

  // Rebuild a container only when what it shows has changed (keeps focus and selection).
  function renderInto(container, key, data, build) {
    const signature = JSON.stringify(data) + "|" + Math.floor(Date.now() / 5000);
    if (lastRendered[key] === signature) return;
    lastRendered[key] = signature;
    container.replaceChildren(...build());
  }

  // --- network

  async function request(url, options) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
    let response;
    try {
      response = await fetch(url, Object.assign({
        headers: { Accept: "application/json" },
        credentials: "same-origin",
        signal: controller.signal,
      }, options));
    } catch (err) {
      throw new Error(err.name === "AbortError" ? "the server did not answer in time" : "the server cannot be reached");
    } finally {
      clearTimeout(timer);
    }
    let body = null;
    try {
      body = await response.json();
    } catch (err) {
      body = null;
    }
    if (!response.ok) {
      const message = body && body.error ? body.error : response.status + " " + response.statusText;
      const error = new Error(message);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  function post(url) {
    return request(url, { method: "POST" });
  }

  function q(value) {
    return encodeURIComponent(value);
  }

  // --- URL hash <-> state

  function readHash() {
    const params = new URLSearchParams(location.hash.replace(/^#/, ""));
    const status = params.get("status") || "";
    state.status = STATUSES.includes(status) ? status : "";
    state.queue = params.get("queue") || "";
    const offset = parseInt(params.get("offset") || "0", 10);
    state.offset = Number.isFinite(offset) && offset > 0 ? offset : 0;
    state.jobId = params.get("job") || null;
  }

  function writeHash() {
    const params = new URLSearchParams();
    if (state.status) params.set("status", state.status);
    if (state.queue) params.set("queue", state.queue);
    if (state.offset) params.set("offset", String(state.offset));
    if (state.jobId) params.set("job", state.jobId);
    const hash = params.toString();
    history.replaceState(null, "", hash ? "#" + hash : location.pathname + location.search);
  }

  function setFilter(changes) {
    Object.assign(state, changes);
    if (!("offset" in changes)) state.offset = 0;
    writeHash();
    renderStatusTabs();
    refreshNow();
  }

  // --- rendering: header, totals, queues, workers

  function setLive(ok, text) {
    const live = $("live");
    live.classList.toggle("live-error", !ok);
    live.classList.toggle("live-paused", ok && !state.live);
    $("live-text").textContent = text;
  }

  let bannerTimer = null;
  function showBanner(message, kind) {
    const banner = $("banner");
    banner.textContent = message;
    banner.className = "banner banner-" + (kind || "error");
    banner.hidden = false;
    clearTimeout(bannerTimer);
    if (kind === "info") bannerTimer = setTimeout(() => (banner.hidden = true), 3000);
  }

  function hideErrorBanner() {
    const banner = $("banner");
    if (banner.classList.contains("banner-error")) banner.hidden = true;
  }

  function renderTotals(stats) {
    const totals = stats.totals || {};
    const database = stats.database || {};
    $("database").textContent = database.path ? String(database.path) : "in-memory database";
    $("database").title = "durability: " + String(database.durability || "?");
    renderInto($("totals"), "totals", [totals, state.status], () => {
      const cards = [["total", "All jobs"]].concat(STATUSES.map((s) => [s, s]));
      return cards.map(([key, label]) => {
        const active = (key === "total" && !state.status) || key === state.status;
        return el(
          "button",
          {
            type: "button",
            className: "card card-" + key + (active ? " card-active" : ""),
            title: "Show " + (key === "total" ? "all" : key) + " jobs",
            dataset: { status: key },
            onclick: () => setFilter({ status: key === "total" ? "" : key }),
          },
          el("span", { className: "card-label" }, label),
          el("span", { className: "card-value" }, fmt(totals[key]))
        );
      });
    });
  }

  function renderQueues(stats) {
    const queues = stats.queues || [];
    $("queues-count").textContent = queues.length === 1 ? "1 queue" : queues.length + " queues";
    renderInto($("queues"), "queues", queues, () => {
      if (!queues.length) return [emptyRow(9, "No queues yet: add a job to create one.")];
      return queues.map((queue) => {
        const s = queue.stats || {};
        const retryable = (s.dead || 0) + (s.failed || 0);
        const count = (status) =>
          el(
            "td",
            { className: "num" },
            s[status]
              ? el("a", { href: "#", className: "count count-" + status, onclick: (e) => {
                  e.preventDefault();
                  setFilter({ queue: queue.name, status });
                } }, fmt(s[status]))
              : el("span", { className: "zero" }, "0")
          );
        return el(
          "tr",
          { dataset: { queue: queue.name } },
          el("td", { className: "name" }, el("a", { href: "#", onclick: (e) => {
            e.preventDefault();
            setFilter({ queue: queue.name, status: "" });
          } }, queue.name)),
          el("td", null, queue.is_paused
            ? el("span", { className: "pill pill-paused" }, "paused")
            : el("span", { className: "pill pill-active" }, "active")),
          count("ready"), count("running"), count("done"), count("failed"), count("dead"),
          el("td", { className: "num strong" }, fmt(s.total)),
          el("td", { className: "actions" },
            queue.is_paused
              ? button("Resume", () => act(post("api/queues/" + q(queue.name) + "/resume"), "Queue “" + queue.name + "” resumed"), "btn-primary")
              : button("Pause", () => act(post("api/queues/" + q(queue.name) + "/pause"), "Queue “" + queue.name + "” paused"), "btn-pause"),
            retryable
              ? button("Retry " + fmt(retryable), () => act(post("api/queues/" + q(queue.name) + "/retry"), "Dead and failed jobs of “" + queue.name + "” queued again"), "btn-retry", "Run this queue's dead and failed jobs again")
              : null)
        );
      });
    });
  }

  function workerState(worker) {
    if (!worker.is_running) return ["stopped", "pill-stopped"];
    if (worker.is_paused) return ["paused", "pill-paused"];
    return [worker.active ? "working" : "idle", worker.active ? "pill-working" : "pill-active"];
  }

  function renderWorkers(stats) {
    const workers = stats.workers || [];
    $("workers-count").textContent = workers.length === 1 ? "1 worker" : workers.length + " workers";
    renderInto($("workers"), "workers", workers, () => {
      if (!workers.length) return [emptyRow(8, "No workers were given to this dashboard (workers=[...]).")];
      return workers.map((worker) => {
        const [label, pill] = workerState(worker);
        return el(
          "tr",
          { dataset: { worker: String(worker.id) } },
          el("td", { className: "mono" }, String(worker.id)),
          el("td", { className: "name" }, String(worker.queue)),
          el("td", null, el("span", { className: "pill " + pill }, label)),
          el("td", { className: "num" }, fmt(worker.active)),
          el("td", { className: "num" }, fmt(worker.concurrency)),
          el("td", { className: "num" }, fmt(worker.processed)),
          el("td", { className: "num" }, fmt(worker.failed)),
          el("td", { className: "actions" },
            worker.is_paused
              ? button("Resume", () => act(post("api/workers/" + q(worker.queue) + "/resume"), "Workers of “" + worker.queue + "” resumed"), "btn-primary")
              : button("Pause", () => act(post("api/workers/" + q(worker.queue) + "/pause"), "Workers of “" + worker.queue + "” paused"), "btn-pause"))
        );
      });
    });
  }

  function emptyRow(columns, text) {
    return el("tr", null, el("td", { colSpan: columns, className: "empty" }, text));
  }

  // --- rendering: job filters, list, pager

  function renderStatusTabs() {
    const tabs = [["", "All"]].concat(STATUSES.map((s) => [s, s]));
    $("status-tabs").replaceChildren(
      ...tabs.map(([value, label]) =>
        el("button", {
          type: "button",
          role: "tab",
          className: "tab" + (state.status === value ? " tab-active" : "") + (value ? " tab-" + value : ""),
          ariaSelected: String(state.status === value),
          dataset: { status: value || "all" },
          onclick: () => setFilter({ status: value }),
        }, label)
      )
    );
  }

  function renderQueueFilter(stats) {
    const select = $("queue-filter");
    const names = (stats.queues || []).map((queue) => queue.name);
    if (state.queue && !names.includes(state.queue)) names.push(state.queue);
    const key = JSON.stringify([names, state.queue]);
    if (lastRendered.queueFilter === key) return;
    lastRendered.queueFilter = key;
    select.replaceChildren(
      el("option", { value: "" }, "All queues"),
      ...names.map((name) => el("option", { value: name }, name))
    );
    select.value = state.queue;
  }

  function renderJobs(page) {
    renderInto($("jobs"), "jobs", [page.jobs, state.jobId], () => {
      if (!page.jobs.length) {
        const what = (state.status ? state.status + " " : "") + "jobs" + (state.queue ? " in “" + state.queue + "”" : "");
        return [emptyRow(8, "No " + what + ".")];
      }
      return page.jobs.map((job) => {
        if (job.broken) {
          return el("tr", { className: "row-broken" },
            el("td", { className: "mono" }, String(job.id)),
            el("td", { className: "name" }, String(job.queue)),
            el("td", null, badge(job.status)),
            el("td", { colSpan: 5, className: "error-text" }, String(job.broken)));
        }
        const text = job.last_error ? job.last_error : compact(job.payload);
        return el(
          "tr",
          {
            className: "job-row" + (job.id === state.jobId ? " row-selected" : ""),
            tabIndex: 0,
            dataset: { job: String(job.id) },
            onclick: () => openJob(job.id),
          },
          el("td", { className: "mono id", title: String(job.id) }, String(job.id)),
          el("td", { className: "name" }, String(job.queue)),
          el("td", null, badge(job.status)),
          el("td", { className: "num col-optional" }, fmt(job.priority)),
          el("td", { className: "num" }, fmt(job.attempts) + " / " + fmt(job.max_attempts)),
          timeCell(job.created_at_ms),
          el("td", { className: "time col-optional", title: absolute(job.run_at_ms) }, relative(job.run_at_ms)),
          el("td", { className: "preview" + (job.last_error ? " error-text" : " mono") }, preview(text))
        );
      });
    });
    const first = page.total ? page.offset + 1 : 0;
    const last = page.offset + page.jobs.length;
    $("page-info").textContent = page.total
      ? fmt(first) + "–" + fmt(last) + " of " + fmt(page.total) + " jobs"
      : "0 jobs";
    $("prev-page").disabled = page.offset <= 0;
    $("next-page").disabled = last >= page.total;
  }

  // --- job detail drawer

  function openJob(id) {
    state.jobId = id;
    writeHash();
    showDrawer(true);
    loadJob();
  }

  function closeJob() {
    state.jobId = null;
    state.job = null;
    writeHash();
    showDrawer(false);
    delete lastRendered.jobs;
    if (state.jobs) renderJobs(state.jobs);
  }

  function showDrawer(open) {
    const wasOpen = !$("detail").hidden;
    $("detail").hidden = !open;
    $("detail-backdrop").hidden = !open;
    if (open && !wasOpen) $("detail-close").focus();
    if (!open) delete lastRendered.detail;
  }

  async function loadJob() {
    if (!state.jobId) return;
    const id = state.jobId;
    try {
      const body = await request("api/jobs/" + q(id));
      if (state.jobId !== id) return;
      state.job = body.job;
      renderDetail(body.job);
    } catch (err) {
      if (state.jobId !== id) return;
      renderInto($("detail-body"), "detail", ["error", String(err.message)], () => [
        el("p", { className: "error-text" }, err.status === 404 ? "This job no longer exists." : String(err.message)),
      ]);
    }
  }

  function field(label, value, className) {
    return [el("dt", null, label), el("dd", { className: className || "" }, value)];
  }

  function timeField(label, ms) {
    return field(label, typeof ms === "number" ? el("span", { title: absolute(ms) }, absolute(ms) + " (" + relative(ms) + ")") : "–");
  }

  function block(title, text, className) {
    return el("section", { className: "block" },
      el("h3", null, title),
      el("pre", { className: "code " + (className || "") }, text));
  }

  function renderDetail(job) {
    $("detail-title").textContent = "Job " + String(job.id);
    renderInto($("detail-body"), "detail", job, () => {
      if (job.broken) return [el("p", { className: "error-text" }, String(job.broken))];
      const nodes = [];
      const head = el("div", { className: "detail-status" }, badge(job.status));
      if (RETRYABLE.includes(job.status)) {
        head.append(button("Retry now", () => act(post("api/jobs/" + q(job.id) + "/retry"), "Job queued again").then(loadJob), "btn-primary"));
      }
      nodes.push(head);
      nodes.push(el("dl", { className: "fields" },
        ...field("ID", String(job.id), "mono"),
        ...field("Queue", String(job.queue)),
        ...field("Priority", fmt(job.priority)),
        ...field("Attempts", fmt(job.attempts) + " of " + fmt(job.max_attempts) + " allowed runs"),
        ...field("Key", job.key === null || job.key === undefined ? "–" : String(job.key), "mono"),
        ...timeField("Created", job.created_at_ms),
        ...timeField("Updated", job.updated_at_ms),
        ...timeField("Run at", job.run_at_ms),
        ...(job.status === "running" && job.lease_until_ms > 0
          ? timeField("Lease until", job.lease_until_ms)
          : field("Lease until", "–"))));
      nodes.push(block("Payload", pretty(job.payload)));
      if (job.last_error !== null && job.last_error !== undefined) {
        nodes.push(block("Last error", String(job.last_error), "code-error"));
      }
      if (job.result !== null && job.result !== undefined) {
        nodes.push(block("Result", pretty(job.result)));
      }
      return nodes;
    });
  }

  // --- actions and refresh

  async function act(promise, message) {
    try {
      await promise;
      showBanner(message, "info");
    } catch (err) {
      showBanner(String(err.message), "error");
    }
    await refreshNow();
  }

  function jobsUrl() {
    const params = new URLSearchParams({ limit: String(state.limit), offset: String(state.offset) });
    if (state.status) params.set("status", state.status);
    if (state.queue) params.set("queue", state.queue);
    return "api/jobs?" + params.toString();
  }

  async function refresh() {
    if (state.inFlight) {
      state.again = true; // an action happened mid-refresh: refresh once more afterwards
      return;
    }
    state.inFlight = true;
    state.again = false;
    try {
      const [stats, page] = await Promise.all([request("api/stats"), request(jobsUrl())]);
      if (typeof stats.now_ms === "number") state.skewMs = stats.now_ms - Date.now();
      state.stats = stats;
      if (page.offset > 0 && page.offset >= page.total) {
        // The page emptied under us (jobs purged): go back to the first page.
        state.offset = 0;
        writeHash();
        state.inFlight = false;
        return refresh();
      }
      state.jobs = page;
      renderTotals(stats);
      renderQueues(stats);
      renderWorkers(stats);
      renderQueueFilter(stats);
      renderJobs(page);
      if (state.jobId) await loadJob();
      hideErrorBanner();
      setLive(true, state.live ? "live" : "updates paused");
      document.body.dataset.loaded = "true";
    } catch (err) {
      setLive(false, "offline");
      showBanner("Cannot load the dashboard data: " + err.message, "error");
    } finally {
      state.inFlight = false;
    }
    if (state.again) await refresh();
  }

  function schedule() {
    clearTimeout(state.timer);
    if (state.live) state.timer = setTimeout(tick, REFRESH_MS);
  }

  async function tick() {
    if (!document.hidden) await refresh();
    schedule();
  }

  async function refreshNow() {
    clearTimeout(state.timer);
    await refresh();
    schedule();
  }

  function init() {
    readHash();
    renderStatusTabs();
    $("queue-filter").addEventListener("change", (e) => setFilter({ queue: e.target.value }));
    $("prev-page").addEventListener("click", () => setFilter({ offset: Math.max(0, state.offset - state.limit) }));
    $("next-page").addEventListener("click", () => setFilter({ offset: state.offset + state.limit }));
    $("detail-close").addEventListener("click", closeJob);
    $("detail-backdrop").addEventListener("click", closeJob);
    $("jobs").addEventListener("keydown", (e) => {
      const row = e.target.closest("tr[data-job]");
      if (row && (e.key === "Enter" || e.key === " ")) {
        e.preventDefault();
        openJob(row.dataset.job);
      }
    });
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && state.jobId) closeJob();
    });
    $("toggle-refresh").addEventListener("click", () => {
      state.live = !state.live;
      $("toggle-refresh").textContent = state.live ? "Pause updates" : "Resume updates";
      setLive(true, state.live ? "live" : "updates paused");
      if (state.live) refreshNow();
      else clearTimeout(state.timer);
    });
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && state.live) refreshNow();
    });
    window.addEventListener("hashchange", () => {
      readHash();
      renderStatusTabs();
      showDrawer(Boolean(state.jobId));
      refreshNow();
    });
    if (state.jobId) showDrawer(true);
    refreshNow();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();

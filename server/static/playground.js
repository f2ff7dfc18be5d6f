// bonserve playground: plain JavaScript, no libraries, no external requests. Every API call
// carries the key typed on the page (kept in sessionStorage: this tab only); the admin
// section uses the admin key. Model output is only ever inserted as text, never as HTML.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const STORE = window.sessionStorage;
  const KEY_FIELDS = { api: "api-key", admin: "admin-key" };
  const SIDES = ["a", "b"];

  // ------------------------------------------------------------------ helpers

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "text") node.textContent = v;
      else if (k === "className") node.className = v;
      else node.setAttribute(k, v);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  class ApiError extends Error {
    constructor(status, body) {
      const info = (body && body.error) || {};
      super(info.message || `HTTP ${status}`);
      this.status = status;
      this.code = info.code || null;
      this.param = info.param || null;
    }
  }

  async function call(method, path, body, keyKind) {
    const key = $(KEY_FIELDS[keyKind || "api"]).value.trim();
    const headers = {};
    if (key) headers.Authorization = `Bearer ${key}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (exc) {
      throw new ApiError(0, { error: { message: `cannot reach the server: ${exc.message}` } });
    }
    let data = null;
    try {
      data = await response.json();
    } catch (exc) {
      data = null;
    }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  function explain(err, keyKind) {
    if (err.status === 401) {
      const which = keyKind === "admin" ? "admin key" : "API key";
      return `401: wrong or missing ${which}. ${err.message}`;
    }
    if (err.status === 403 && err.code === "admin_disabled") {
      return (
        "403 admin_disabled: the admin API is off on this server. Start bonserve with " +
        "--admin-key KEY (or --open-admin on a loopback address) to browse the registry " +
        "and promote aliases."
      );
    }
    const where = err.param ? ` (param: ${err.param})` : "";
    return err.status ? `${err.status}: ${err.message}${where}` : err.message;
  }

  function setStatus(node, text, isError) {
    node.textContent = text;
    node.classList.toggle("error", Boolean(isError));
  }

  function intOrNull(id) {
    const raw = $(id).value.trim();
    return raw === "" ? null : Number.parseInt(raw, 10);
  }

  function fmt(value, digits) {
    if (!finite(value)) return "–";
    return Number(value).toFixed(digits);
  }

  // A number to show or scale by (JSON has no NaN: a missing value is null or absent).
  function finite(value) {
    return typeof value === "number" && Number.isFinite(value);
  }

  // ------------------------------------------------------------------ keys

  for (const [kind, id] of Object.entries(KEY_FIELDS)) {
    const field = $(id);
    field.value = STORE.getItem(`bonserve.${kind}Key`) || "";
    field.addEventListener("change", () => {
      STORE.setItem(`bonserve.${kind}Key`, field.value.trim());
      if (kind === "api") loadModels();
    });
  }

  // ------------------------------------------------------------------ conversation

  function addMessage(role, content) {
    const select = el("select", { "aria-label": "role" });
    for (const r of ["system", "user", "assistant"]) {
      const option = el("option", { value: r, text: r });
      if (r === role) option.selected = true;
      select.append(option);
    }
    const text = el("textarea", { "aria-label": "content", rows: "2" });
    text.value = content || "";
    const remove = el("button", { type: "button", title: "remove", text: "×" });
    const row = el("div", { className: "message" }, select, text, remove);
    remove.addEventListener("click", () => row.remove());
    $("messages").append(row);
    return row;
  }

  function messages() {
    return Array.from($("messages").querySelectorAll(".message"))
      .map((row) => ({
        role: row.querySelector("select").value,
        content: row.querySelector("textarea").value,
      }))
      .filter((m) => m.content.trim() !== "");
  }

  $("add-message").addEventListener("click", () => addMessage("user", "").querySelector("textarea").focus());
  addMessage("user", "Suggest a name for a pet goldfish.");

  // ------------------------------------------------------------------ models

  async function loadModels() {
    const status = $("models-status");
    setStatus(status, "loading models…");
    let list;
    try {
      list = await call("GET", "/v1/models");
    } catch (err) {
      setStatus(status, explain(err, "api"), true);
      return;
    }
    const cards = list.data || [];
    SIDES.forEach((side, i) => {
      const select = $(`model-${side}`);
      const previous = select.value;
      select.replaceChildren();
      for (const card of cards) {
        const detail = card.kind === "alias" ? `alias → ${card.parent}` : [card.kind, card.format].filter(Boolean).join(", ");
        select.append(el("option", { value: card.id, text: detail ? `${card.id} (${detail})` : card.id }));
      }
      const ids = cards.map((c) => c.id);
      if (ids.includes(previous)) select.value = previous;
      else if (ids.length > i) select.value = ids[i];
    });
    setStatus(status, `${cards.length} model${cards.length === 1 ? "" : "s"} served`);
  }

  $("reload-models").addEventListener("click", loadModels);

  // ------------------------------------------------------------------ runs

  function request(side) {
    const body = {
      model: $(`model-${side}`).value,
      messages: messages(),
      n: intOrNull(`n-${side}`) || 1,
      return_candidates: true,
    };
    const bestOf = intOrNull(`best-of-${side}`);
    if (bestOf !== null) body.best_of = bestOf;
    const temperature = $(`temperature-${side}`).value.trim();
    if (temperature !== "") body.temperature = Number(temperature);
    const maxTokens = intOrNull(`max-tokens-${side}`);
    if (maxTokens !== null) body.max_tokens = maxTokens;
    const seed = intOrNull(`seed-${side}`);
    if (seed !== null) body.seed = seed;
    // The selector only applies when there is something to rank: best_of > n, or the
    // server's default best_of (which may be > n; a selector with best_of == n is ignored).
    const selector = $(`selector-${side}`).value;
    if (selector && (bestOf === null || bestOf > body.n)) body.bon_selector = selector;
    return body;
  }

  // The selector control is live only where it can apply (see `request`).
  function syncSelector(side) {
    const bestOf = intOrNull(`best-of-${side}`);
    const n = intOrNull(`n-${side}`) || 1;
    $(`selector-${side}`).disabled = bestOf !== null && bestOf <= n;
  }
  for (const side of SIDES) {
    for (const field of [`n-${side}`, `best-of-${side}`]) $(field).addEventListener("input", () => syncSelector(side));
    syncSelector(side);
  }

  const MAJORITY = new Set(["majority", "reward+majority"]);

  // Which selector ranked: the response says (usage.bonserve.selector); else the one sent.
  function selectorOf(body, response) {
    const extra = (response.usage && response.usage.bonserve) || {};
    if (extra.selector) return { name: extra.selector, from: "response" };
    if ((response.candidates || []).length && body.bon_selector) return { name: body.bon_selector, from: "request" };
    return { name: null, from: "none" };
  }

  function stat(label, value, name) {
    return el("div", { className: "stat", "data-stat": name }, el("div", { className: "k", text: label }), el("div", { className: "v", text: value }));
  }

  function usd(cost) {
    if (cost === null || cost === undefined) return "–";
    const v = Number(cost);
    if (v === 0) return "$0 (no price set)";
    return `$${v < 0.01 ? v.toFixed(8) : v.toFixed(4)}`;
  }

  function renderStats(response, latencyMs, selector) {
    const usage = response.usage || {};
    const extra = usage.bonserve || {};
    const cost = extra.estimated_cost_usd;
    const selectorStat = stat("selector", selector.name || "–", "selector");
    selectorStat.dataset.from = selector.from;
    if (selector.from === "request") selectorStat.title = "as sent: the response does not say which selector ranked";
    return el(
      "div",
      { className: "stats" },
      stat("latency", `${Math.round(latencyMs)} ms`, "latency"),
      selectorStat,
      stat("reward model", extra.reward_model || "none", "reward_model"),
      stat("candidates", extra.candidates ?? "–", "candidates"),
      stat("prompt tokens", usage.prompt_tokens ?? "–", "prompt_tokens"),
      stat("decoded tokens", extra.decoded_tokens ?? usage.completion_tokens ?? "–", "decoded_tokens"),
      stat("delivered tokens", extra.delivered_tokens ?? "–", "delivered_tokens"),
      stat("reward-model tokens", extra.reward_model_tokens ?? 0, "reward_model_tokens"),
      stat("engine seconds", fmt(extra.engine_seconds, 3), "engine_seconds"),
      stat("est. cost", usd(cost), "estimated_cost_usd"),
    );
  }

  // What each candidate's bar shows, as a share in [0, 1] (null: no bar): the reward, scaled
  // from the lowest to the highest; without rewards (majority, logprob) the value the selector
  // ranked by: the answer's share of the votes as it is, the mean logprob scaled.
  function bars(candidates, selector) {
    const scaled = (values) => {
      const known = values.filter(finite);
      const lo = Math.min(...known);
      const hi = Math.max(...known);
      return values.map((v) => (finite(v) ? (hi > lo ? (v - lo) / (hi - lo) : 1) : null));
    };
    const rewards = candidates.map((c) => c.reward);
    if (rewards.some(finite)) return { label: "reward", shares: scaled(rewards) };
    const scores = candidates.map((c) => c.score);
    if (!scores.some(finite)) return { label: null, shares: scores.map(() => null) };
    if (MAJORITY.has(selector)) return { label: "share of the votes", shares: scores.map((v) => (finite(v) ? Math.min(1, Math.max(0, v)) : null)) };
    return { label: selector === "logprob" ? "mean token logprob" : "score", shares: scaled(scores) };
  }

  function scoreText(c, selector) {
    if (!finite(c.score) || !selector || selector === "reward") return null; // reward: the score is the reward
    if (MAJORITY.has(selector)) return `votes ${Math.round(c.score * 100)}%`;
    if (selector === "logprob") return `logprob ${fmt(c.score, 3)}`;
    return `score ${fmt(c.score, 4)}`;
  }

  function candidateCard(c, share, n, selector) {
    const picked = c.choice_index !== null && c.choice_index !== undefined;
    let bar = null;
    if (finite(share)) {
      bar = el("div", { className: "bar" }, el("span"));
      bar.firstChild.style.width = `${Math.max(3, Math.round(share * 100))}%`;
    }
    const score = scoreText(c, selector);
    const answer = MAJORITY.has(selector) && c.answer ? (c.answer.length > 40 ? `${c.answer.slice(0, 39)}…` : c.answer) : null;
    return el(
      "div",
      { className: picked ? "candidate picked" : "candidate", "data-rank": c.rank, "data-index": c.index },
      el(
        "div",
        { className: "meta" },
        el("span", { text: `#${c.rank + 1}` }),
        el("span", { className: "reward", text: `reward ${fmt(c.reward, 4)}` }),
        score ? el("span", { className: "score", text: score }) : null,
        answer ? el("span", { className: "answer", title: c.answer, text: `answer ${answer}` }) : null,
        el("span", { text: `finish ${c.finish_reason}` }),
        el("span", { text: `${c.completion_tokens} token${c.completion_tokens === 1 ? "" : "s"}` }),
        el("span", { text: `sample ${c.index}` }),
        picked ? el("span", { className: "badge", text: n > 1 ? `picked · choice ${c.choice_index}` : "picked" }) : null,
      ),
      el("div", { className: "text", text: c.text }),
      bar,
    );
  }

  function choiceCard(choice) {
    return el(
      "div",
      { className: "candidate picked", "data-choice": choice.index },
      el(
        "div",
        { className: "meta" },
        el("span", { text: `choice ${choice.index}` }),
        el("span", { text: `finish ${choice.finish_reason}` }),
      ),
      el("div", { className: "text", text: (choice.message && choice.message.content) || "" }),
    );
  }

  function render(target, body, response, latencyMs) {
    const candidates = response.candidates || [];
    const extra = (response.usage && response.usage.bonserve) || {};
    const sampled = extra.candidates ?? candidates.length;
    const selector = selectorOf(body, response);
    const title = `${response.model} · n=${body.n} · best_of=${sampled}` + (body.best_of === undefined ? " (server default)" : "");
    target.replaceChildren(el("div", { className: "title", text: title }), renderStats(response, latencyMs, selector));
    target.dataset.selector = selector.name || "";
    if (candidates.length) {
      const { label, shares } = bars(candidates, selector.name);
      const ranked = `ranked by bon_selector ${selector.name || "?"}` + (label ? ` · bars: ${label}` : "");
      target.append(el("div", { className: "hint ranked", text: ranked }));
      candidates.forEach((c, i) => target.append(candidateCard(c, shares[i], body.n, selector.name)));
    } else {
      target.append(el("div", { className: "hint", text: "best_of = n: returned as sampled, nothing was ranked." }));
      for (const choice of response.choices || []) target.append(choiceCard(choice));
    }
  }

  async function runSide(side) {
    const target = $(`result-${side}`);
    const body = request(side);
    target.replaceChildren(el("div", { className: "status", text: `running on ${body.model}…` }));
    const t0 = performance.now();
    try {
      const response = await call("POST", "/v1/chat/completions", body);
      render(target, body, response, performance.now() - t0);
      target.dataset.state = "done";
    } catch (err) {
      target.replaceChildren(el("div", { className: "error-box", text: explain(err, "api") }));
      target.dataset.state = "error";
    }
  }

  function compare() {
    const on = $("compare").checked;
    $("run-b").classList.toggle("hidden", !on);
    $("result-b").classList.toggle("hidden", !on);
    for (const grid of document.querySelectorAll("#runs .columns")) grid.classList.toggle("single", !on);
  }
  $("compare").addEventListener("change", compare);
  compare();

  $("run").addEventListener("click", async () => {
    const button = $("run");
    button.disabled = true;
    for (const side of SIDES) delete $(`result-${side}`).dataset.state;
    try {
      // One after the other, so each run's latency is its own (they share the engine).
      await runSide("a");
      if ($("compare").checked) await runSide("b");
    } finally {
      button.disabled = false;
    }
  });

  // ------------------------------------------------------------------ admin

  function lineage(entry, byName) {
    const chain = [entry.name];
    const seen = new Set(chain);
    let parent = entry.parent;
    while (parent && !seen.has(parent)) {
      chain.unshift(parent);
      seen.add(parent);
      parent = byName.has(parent) ? byName.get(parent).parent : null;
    }
    return chain.join(" → ");
  }

  function metricsText(metrics) {
    const entries = Object.entries(metrics || {});
    if (!entries.length) return "–";
    return entries
      .map(([k, v]) => `${k}: ${typeof v === "number" ? Number(v.toPrecision(4)) : JSON.stringify(v)}`)
      .join("\n");
  }

  async function loadRegistry() {
    const status = $("admin-status");
    status.replaceChildren();
    status.className = "status";
    $("registry").replaceChildren();
    let data;
    let state = null;
    try {
      data = await call("GET", "/admin/registry", undefined, "admin");
      state = await call("GET", "/admin/state", undefined, "admin");
    } catch (err) {
      const box = err.status === 403 ? "warn-box" : "error-box";
      status.replaceChildren(el("div", { className: box, text: explain(err, "admin") }));
      status.dataset.code = err.code || String(err.status);
      return;
    }
    delete status.dataset.code;
    const entries = data.entries || [];
    const byName = new Map(entries.map((e) => [e.name, e]));
    const aliases = (state && state.aliases) || {};
    const aliasOf = {};
    for (const [alias, target] of Object.entries(aliases)) (aliasOf[target] = aliasOf[target] || []).push(alias);
    const served = new Set(((state && state.models) || []).map((m) => m.name));
    const table = el("table", { id: "registry-table" });
    table.append(el("tr", {}, ...["name", "kind", "format", "lineage", "served", "created", "metrics"].map((h) => el("th", { text: h }))));
    for (const e of entries) {
      const servedText = served.has(e.name) ? `yes${aliasOf[e.name] ? ` (${aliasOf[e.name].join(", ")})` : ""}` : "";
      const created = e.created_at ? new Date(e.created_at * 1000).toISOString().slice(0, 16).replace("T", " ") : "–";
      table.append(
        el(
          "tr",
          { "data-entry": e.name },
          el("td", { text: e.name }),
          el("td", { text: e.kind }),
          el("td", { text: e.format }),
          el("td", { text: lineage(e, byName) }),
          el("td", { text: servedText }),
          el("td", { text: created }),
          el("td", {}, el("code", { text: metricsText(e.metrics) })),
        ),
      );
    }
    $("registry").append(el("div", { className: "hint", text: `registry ${data.root} · ${entries.length} entries · reward model ${(state && state.reward_model) || "none"}` }), table);
    for (const [name, problem] of Object.entries(data.problems || {})) {
      $("registry").append(el("div", { className: "warn-box", text: `${name}: ${problem}` }));
    }
    const select = $("promote-model");
    select.replaceChildren();
    for (const e of entries.filter((x) => x.kind !== "rm")) select.append(el("option", { value: e.name, text: `${e.name} (${e.kind}, ${e.format})` }));
  }

  $("load-registry").addEventListener("click", loadRegistry);

  $("promote-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const status = $("promote-status");
    const body = {
      alias: $("promote-alias").value.trim(),
      model: $("promote-model").value,
      unload_previous: $("promote-unload").checked,
    };
    setStatus(status, `promoting ${body.model} to ${body.alias}…`);
    $("promote").disabled = true;
    try {
      const r = await call("POST", "/admin/aliases/promote", body, "admin");
      const previous = r.previous ? ` (was ${r.previous}${r.unloaded ? ", unloaded" : ""})` : "";
      setStatus(status, `${r.alias} → ${r.model}${previous} in ${fmt(r.seconds, 1)} s`);
      await Promise.all([loadModels(), loadRegistry()]);
    } catch (err) {
      setStatus(status, explain(err, "admin"), true);
    } finally {
      $("promote").disabled = false;
    }
  });

  // ------------------------------------------------------------------ start

  fetch("/version")
    .then((r) => (r.ok ? r.json() : null))
    .then((v) => {
      if (v) $("server-version").textContent = `bonserve ${v.bonserve} · vLLM ${v.vllm}`;
    })
    .catch(() => {});
  loadModels();
})();

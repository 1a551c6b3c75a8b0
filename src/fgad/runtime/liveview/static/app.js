// The live view page: polls /api/state, shows one MJPEG <img> per source, the NG gallery and the threshold.
"use strict";
(function () {
  const token = new URLSearchParams(window.location.search).get("token");
  const withToken = (path) => (token ? path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : path);
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const cards = new Map();
  let galleryKey = "";
  const fmt = (v, digits) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));

  function card(name) {
    let el = cards.get(name);
    if (el) return el;
    el = document.getElementById("source-card").content.firstElementChild.cloneNode(true);
    el.dataset.source = name;
    el.querySelector(".name").textContent = name;
    el.querySelector(".stream").src = withToken("stream?source=" + encodeURIComponent(name));
    document.getElementById("sources").appendChild(el);
    cards.set(name, el);
    return el;
  }

  function showSources(sources) {
    for (const [name, s] of Object.entries(sources)) {
      const el = card(name);
      const decision = el.querySelector(".decision");
      decision.textContent = s.decision;
      decision.className = "decision " + s.decision;
      el.querySelector(".ok").textContent = String(s.ok);
      el.querySelector(".ng").textContent = String(s.ng);
      el.querySelector(".fps").textContent = fmt(s.fps, 1);
      el.querySelector(".p50").textContent = fmt(s.latency_p50_ms, 1);
      el.querySelector(".p99").textContent = fmt(s.latency_p99_ms, 1);
      el.querySelector(".score").textContent = fmt(s.score, 3);
      el.querySelector(".description").textContent = s.description || "";
    }
  }

  function showGallery(gallery) {
    const key = gallery.map((g) => g.id).join(",");
    if (key === galleryKey) return;
    galleryKey = key;
    const root = document.getElementById("gallery");
    root.replaceChildren();
    if (!gallery.length) {
      const p = document.createElement("p");
      p.className = "empty";
      p.textContent = "No NG frame yet.";
      root.appendChild(p);
      return;
    }
    for (const g of gallery) {
      const fig = document.createElement("figure");
      if (g.has_frame) {
        const img = document.createElement("img");
        img.src = withToken("ng?id=" + g.id);
        img.alt = "NG frame " + g.frame_index + " of " + g.source;
        fig.appendChild(img);
      }
      const cap = document.createElement("figcaption");
      cap.textContent = g.source + " #" + g.frame_index + " score " + fmt(g.score, 3)
        + " " + new Date(g.timestamp * 1000).toLocaleTimeString() + (g.description ? " " + g.description : "");
      fig.appendChild(cap);
      root.appendChild(fig);
    }
  }

  async function poll() {
    const conn = document.getElementById("connection");
    try {
      const res = await fetch("api/state", { headers, cache: "no-store" });
      if (!res.ok) throw new Error("HTTP " + res.status);
      const state = await res.json();
      document.getElementById("threshold-value").textContent = fmt(state.threshold, 4);
      showSources(state.sources);
      showGallery(state.gallery);
      conn.textContent = "live · up " + Math.round(state.uptime_s) + " s";
      conn.className = "online";
    } catch (err) {
      conn.textContent = "offline (" + err.message + ")";
      conn.className = "offline";
    }
  }

  document.getElementById("threshold-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const status = document.getElementById("threshold-status");
    const value = Number(document.getElementById("threshold-input").value);
    try {
      const res = await fetch("api/threshold", {
        method: "POST",
        headers: Object.assign({ "Content-Type": "application/json" }, headers),
        body: JSON.stringify({ threshold: value }),
      });
      const body = await res.json();
      if (!res.ok) throw new Error(body.error || "HTTP " + res.status);
      status.textContent = body.persisted ? "saved" : "applied (not persisted)";
      status.className = "";
      poll();
    } catch (err) {
      status.textContent = err.message;
      status.className = "error";
    }
  });

  poll();
  setInterval(poll, 500);
})();

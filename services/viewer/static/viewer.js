// The mushu viewer's page: a WebSocket of frames, markers and status (docs/viewer.md), drawn on a canvas.
//
// A hand-written canvas renderer rather than a charting library: an EEG display is stacked traces drawn
// column by column (min/max of the samples each pixel column spans, so no spike is hidden), and in sweep
// or scroll mode only the new columns are drawn each frame; a general chart redraws every series (uPlot:
// 21.5 ms an update for 64 x 1 kHz over 10 s, this 0.1 ms; bench/renderer_bench.py).
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const SCALES = [0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6];
  const GAINS = [0.25, 0.5, 1, 2, 4, 8];
  const MAX_S = 30;            // the longest time base: what the page keeps of the stream
  const IMPEDANCE_KOHM = [5, 20, 100]; // good up to, fair up to, and a full bar at (kOhm)
  const SWEEP_GAP = 6;         // px cleared ahead of the sweep
  const LIST_MARKERS = 50;     // markers shown in the list
  const AGES = 5000;           // data ages kept for the statistics

  const V = {                  // the page's state; window.mushuViewer for tests and benchmarks
    role: null, mode: null, info: null, fs: 0, nch: 0, cap: 0,
    raw: [], filt: [], firstRow: 0, lastRow: 0, frameTimes: [],
    markers: [], base: [], gains: [], scale: null, quality: null, status: null,
    drawnCol: null, filters: [], ws: null, nextId: 1, replies: {},
    stats: { frames: 0, columns: 0, ages: [], drawMs: [], markersDrawn: [], received: 0, lastDraw: 0 },
  };
  window.mushuViewer = V;

  // -- display-only filters: biquads (RBJ's cookbook), a high-pass and a notch per channel ----------------
  function biquad(kind, f0, fs) {
    if (!f0 || f0 >= fs / 2) return null;
    const w = 2 * Math.PI * f0 / fs, cw = Math.cos(w), sw = Math.sin(w);
    const q = kind === "notch" ? 30 : Math.SQRT1_2, alpha = sw / (2 * q);
    const a0 = 1 + alpha;
    const b = kind === "notch" ? [1, -2 * cw, 1] : [(1 + cw) / 2, -(1 + cw), (1 + cw) / 2];
    return { b0: b[0] / a0, b1: b[1] / a0, b2: b[2] / a0, a1: -2 * cw / a0, a2: (1 - alpha) / a0 };
  }
  function makeFilters() {
    const hp = biquad("highpass", +$("highpass").value, V.fs), notch = biquad("notch", +$("notch").value, V.fs);
    V.filters = [];
    for (let c = 0; c < V.nch; c++) V.filters.push([hp, notch].filter(Boolean).map((k) => ({ k, x1: 0, x2: 0, y1: 0, y2: 0, primed: false })));
  }
  function filterValue(c, x) {
    if (Number.isNaN(x)) { for (const s of V.filters[c]) s.primed = false; return NaN; }
    for (const s of V.filters[c]) {
      if (!s.primed) {  // start as if the first value had always been there: no step response
        const k = s.k; s.x1 = s.x2 = x; s.y1 = s.y2 = x * (k.b0 + k.b1 + k.b2) / (1 + k.a1 + k.a2); s.primed = true;
      }
      const k = s.k, y = k.b0 * x + k.b1 * s.x1 + k.b2 * s.x2 - k.a1 * s.y1 - k.a2 * s.y2;
      s.x2 = s.x1; s.x1 = x; s.y2 = s.y1; s.y1 = y; x = y;
    }
    return x;
  }
  function refilter() {  // after a filter change: the kept samples again, from the oldest
    makeFilters();
    for (let r = V.firstRow; r < V.lastRow; r++) {
      const i = r % V.cap;
      for (let c = 0; c < V.nch; c++) V.filt[c][i] = filterValue(c, V.raw[c][i]);
    }
    recentre(); fullRedraw();
  }

  // -- the stream ----------------------------------------------------------------------------------------
  function setStream(info) {
    V.info = info; V.fs = info.page_fs || info.fs; V.nch = info.channels.length;
    V.cap = Math.ceil(V.fs * MAX_S) + 1;
    if (info.recording) V.cap = Math.max(V.cap, 4);
    V.raw = []; V.filt = []; V.base = []; V.gains = [];
    for (let c = 0; c < V.nch; c++) {
      V.raw.push(new Float32Array(V.cap).fill(NaN)); V.filt.push(new Float32Array(V.cap).fill(NaN));
      V.base.push(0); V.gains.push(1);
    }
    V.firstRow = V.lastRow = 0; V.frameTimes = []; V.markers = []; V.drawnCol = null; V.quality = null;
    V.started = false;
    makeFilters();
    $("stream-name").textContent = `${info.stream} · ${info.amp || "?"} · ${V.nch} channels at ${info.fs} Hz` +
      (info.recording ? ` · recording ${info.recording}` : "");
    $("markers").textContent = "";
    channelTable();
    impedanceBars();
    if (info.recording) {
      $("offline").hidden = false;
      const seconds = info.n_samples / info.fs;
      $("position").max = Math.max(0, seconds - timebase()).toFixed(1);
      requestWindow();
    }
    resize();
  }

  function ingest(buffer) {
    const view = new DataView(buffer), n = view.getUint32(0, true);
    const h = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, n)));
    const data = new Float32Array(buffer, 4 + n, h.n * h.channels);
    if (!V.info || h.channels !== V.nch) return;
    V.stats.received += h.n;
    if (V.mode === "recording") {  // a window of the recording: it replaces what is shown
      if (h.fs !== V.fs || V.cap < h.n) { V.fs = h.fs; V.cap = Math.max(h.n, 4); reallocate(); }
      V.firstRow = V.lastRow = h.first_sample; makeFilters();
      V.windowCol = colOf(h.first_sample, geometry().rpc) + 1;
      V.rowsPerSample = h.fs / V.info.fs;  // a long window comes as min/max envelopes: rows are not samples
    }
    let first = h.first_sample, skip = 0;
    if (first < V.lastRow) { skip = V.lastRow - first; first = V.lastRow; }  // already held
    if (skip >= h.n) return;
    if (V.lastRow === 0 && V.firstRow === 0) V.firstRow = V.lastRow = first;
    for (let r = V.lastRow; r < first && r < V.lastRow + V.cap; r++) put(r, null);  // a gap: drawn as none
    V.lastRow = Math.max(V.lastRow, first);
    for (let j = skip; j < h.n; j++) put(first + j - skip, data, j * h.channels);
    V.frameTimes.push([h.first_sample, h.t_ms, h.fs]);
    if (V.frameTimes.length > 400) V.frameTimes.splice(0, 200);
    if (!V.started && V.lastRow - V.firstRow >= Math.min(V.fs, V.cap - 1)) { V.started = true; recentre(); autoscale(); }
    if (V.mode === "recording") { V.started = true; recentre(); autoscale(); fullRedraw(); }
  }
  function reallocate() {
    for (let c = 0; c < V.nch; c++) { V.raw[c] = new Float32Array(V.cap).fill(NaN); V.filt[c] = new Float32Array(V.cap).fill(NaN); }
  }
  function put(r, data, at) {
    const i = r % V.cap;
    for (let c = 0; c < V.nch; c++) {
      const x = data === null ? NaN : data[at + c];
      V.raw[c][i] = x; V.filt[c][i] = filterValue(c, x);
    }
    V.lastRow = r + 1;
    if (V.lastRow - V.firstRow > V.cap) V.firstRow = V.lastRow - V.cap;
  }
  function rowTime(r) {  // wall-clock ms the row was acquired (live), from its frame's stamp
    for (let k = V.frameTimes.length - 1; k >= 0; k--) {
      const [first, t, fs] = V.frameTimes[k];
      if (first <= r) return t + (r - first) * 1000 / fs;
    }
    return null;
  }

  // -- scale and baseline ------------------------------------------------------------------------------
  function recentre() {  // each trace around the mean of its last second
    const n = Math.min(V.lastRow - V.firstRow, Math.ceil(V.fs));
    for (let c = 0; c < V.nch; c++) {
      let s = 0, k = 0;
      for (let r = V.lastRow - n; r < V.lastRow; r++) { const v = V.filt[c][r % V.cap]; if (!Number.isNaN(v)) { s += v; k++; } }
      V.base[c] = k ? s / k : 0;
    }
  }
  function autoscale() {  // the scale that fits the median channel's last second in its band
    if (V.scale !== null) return;
    const n = Math.min(V.lastRow - V.firstRow, Math.ceil(V.fs)), ranges = [];
    for (let c = 0; c < V.nch; c++) {
      let lo = Infinity, hi = -Infinity;
      for (let r = V.lastRow - n; r < V.lastRow; r++) { const v = V.filt[c][r % V.cap]; if (v < lo) lo = v; if (v > hi) hi = v; }
      if (hi > lo) ranges.push(hi - lo);
    }
    ranges.sort((a, b) => a - b);
    const want = ranges.length ? ranges[ranges.length >> 1] * 1.2 : 100;
    V.scale = SCALES.find((s) => s >= want) || SCALES[SCALES.length - 1];
    $("scale").value = String(V.scale);
    scalebar(); fullRedraw();
  }
  function scalebar() {
    const band = $("traces").clientHeight / Math.max(1, V.nch);
    $("scalebar-bar").style.height = `${band}px`;
    $("scalebar-text").textContent = `${V.scale ?? "?"} ${V.info ? V.info.unit : ""}`;
  }

  // -- drawing -------------------------------------------------------------------------------------------
  const traces = $("traces"), ctx = traces.getContext("2d", { alpha: false });
  const labels = $("labels"), lctx = labels.getContext("2d");
  const overlay = $("overlay"), octx = overlay.getContext("2d");
  function timebase() { return +$("timebase").value; }
  function geometry() {
    const W = traces.width, H = traces.height;
    return { W, H, band: H / Math.max(1, V.nch), rpc: timebase() * V.fs / W };
  }
  function resize() {
    const dpr = window.devicePixelRatio || 1;
    for (const c of [traces, labels, overlay]) { c.width = Math.max(1, Math.floor(c.clientWidth * dpr)); c.height = Math.max(1, Math.floor(c.clientHeight * dpr)); }
    scalebar(); drawLabels(); fullRedraw();
  }
  function drawLabels() {
    lctx.fillStyle = "#fff"; lctx.fillRect(0, 0, labels.width, labels.height);
    if (!V.info) return;
    const band = labels.height / V.nch, size = Math.max(8, Math.min(14, band * 0.8));
    lctx.font = `${size}px system-ui, sans-serif`; lctx.textBaseline = "middle";
    V.info.channels.forEach((name, c) => {
      const q = V.quality ? V.quality[c] : "ok";
      lctx.fillStyle = q === "flat" || q === "railing" ? "#b91c1c" : q === "line noise" ? "#b45309" : "#111";
      lctx.fillText(name, 4, band * (c + 0.5));
    });
  }
  function xOf(col, newest, W) {  // where column col is drawn
    if (V.mode === "recording") return col - V.windowCol;  // a window of a recording: from the left
    return $("mode").value === "sweep" ? ((col % W) + W) % W : W - 1 - (newest - col);
  }
  function drawColumns(c0, c1, newest, g) {  // columns c0..c1 (inclusive), each at its x
    const { W, band, rpc } = g;
    ctx.fillStyle = "#fff";
    for (let c = c0; c <= c1; c++) ctx.fillRect(xOf(c, newest, W), 0, 1, g.H);
    ctx.strokeStyle = "#1a3d8f"; ctx.lineWidth = 1; ctx.beginPath();
    const scale = V.scale || 100;
    for (let c = c0; c <= c1; c++) {
      const r0 = rowStart(c, rpc), r1 = Math.max(r0 + 1, rowStart(c + 1, rpc)), x = xOf(c, newest, W) + 0.5;
      if (r0 - 1 < V.firstRow || r1 > V.lastRow) continue;
      for (let ch = 0; ch < V.nch; ch++) {
        const f = V.filt[ch];
        let lo = f[(r0 - 1) % V.cap], hi = lo;  // the column before's last sample: the trace stays joined
        for (let r = r0; r < r1; r++) { const v = f[r % V.cap]; if (v < lo || Number.isNaN(lo)) lo = v; if (v > hi || Number.isNaN(hi)) hi = v; }
        if (Number.isNaN(lo) || Number.isNaN(hi)) continue;
        const k = band / scale * V.gains[ch], mid = band * (ch + 0.5), b = V.base[ch];
        const yl = mid - (lo - b) * k, yh = mid - (hi - b) * k;
        ctx.moveTo(x, yl + 0.5); ctx.lineTo(x, Math.min(yl - 0.5, yh));
      }
    }
    ctx.stroke();
    V.stats.columns += c1 - c0 + 1;
  }
  function drawMarkers(g, newest) {  // on the overlay, redrawn each frame: the traces' columns never cover them
    octx.clearRect(0, 0, overlay.width, overlay.height);
    if (newest === null) return;
    octx.strokeStyle = "#c2410c"; octx.fillStyle = "#c2410c"; octx.lineWidth = 1;
    octx.font = `${Math.round(12 * (window.devicePixelRatio || 1))}px system-ui, sans-serif`; octx.textBaseline = "top";
    const oldest = Math.max(newest - g.W + 1, colOf(V.firstRow, g.rpc) + 1);
    for (const m of V.markers) {
      if (m.row === null) continue;
      const col = colOf(V.mode === "recording" ? Math.floor(m.row * (V.rowsPerSample || 1)) : m.row, g.rpc);
      if (col < oldest || col > newest) continue;
      const x = xOf(col, newest, g.W) + 0.5;
      octx.beginPath(); octx.moveTo(x, 0); octx.lineTo(x, g.H); octx.stroke();
      octx.fillText(m.label, x + 3, 2);
      if (!m.drawn) { m.drawn = true; V.stats.markersDrawn.push(m.label); }
    }
  }
  // Columns and rows with a margin for rounding: a column is drawn once, when its last row is in, and
  // (c + 1) * rpc a hair above that row would skip it for good.
  function colOf(r, rpc) { return Math.floor((r + 1e-6) / rpc); }
  function rowStart(c, rpc) { return Math.ceil(c * rpc - 1e-6); }
  function newestCol(g) { return colOf(V.lastRow, g.rpc) - 1; }
  function fullRedraw() {
    const g = geometry();
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, g.W, g.H);
    if (!V.info || V.lastRow === V.firstRow) { V.drawnCol = null; return; }
    const newest = newestCol(g);
    drawColumns(Math.max(newest - g.W + 1, colOf(V.firstRow, g.rpc) + 1), newest, newest, g);
    V.drawnCol = newest;
    drawMarkers(g, newest);
  }
  function frame() {
    requestAnimationFrame(frame);
    if (!V.info || V.mode === "recording" || V.lastRow === V.firstRow) return;
    const g = geometry(), newest = newestCol(g), started = performance.now();
    if (V.drawnCol === null || newest - V.drawnCol >= g.W || newest < V.drawnCol) { fullRedraw(); } else if (newest > V.drawnCol) {
      const k = newest - V.drawnCol;
      if ($("mode").value === "scroll") {  // the image moves left by the new columns; they go at the right
        ctx.globalCompositeOperation = "copy"; ctx.drawImage(traces, -k, 0); ctx.globalCompositeOperation = "source-over";
      }
      drawColumns(V.drawnCol + 1, newest, newest, g);
      if ($("mode").value === "sweep") { ctx.fillStyle = "#fff"; for (let i = 1; i <= SWEEP_GAP; i++) ctx.fillRect(xOf(newest + i, newest, g.W), 0, 1, g.H); }
      V.drawnCol = newest;
      drawMarkers(g, newest);
    } else return;
    V.stats.frames++;
    V.stats.drawMs.push(performance.now() - started);
    if (V.stats.drawMs.length > AGES) V.stats.drawMs.splice(0, AGES / 2);
    const t = rowTime(rowStart(newest + 1, g.rpc) - 1);
    if (t !== null) { V.stats.ages.push(Date.now() - t); if (V.stats.ages.length > AGES) V.stats.ages.splice(0, AGES / 2); }
    V.stats.lastDraw = performance.now();
  }
  V.blankColumns = () => {  // drawn columns (past the sweep's gap) without ink: a trace with holes in it
    const g = geometry(), newest = V.drawnCol;
    if (newest === null) return null;
    const img = ctx.getImageData(0, 0, g.W, g.H).data, blank = [];
    for (let c = Math.max(newest - g.W + SWEEP_GAP + 1, colOf(V.firstRow, g.rpc) + 2); c <= newest; c++) {
      const x = xOf(c, newest, g.W);
      let ink = false;
      for (let y = 0; y < g.H && !ink; y++) ink = img[(y * g.W + x) * 4] < 200;
      if (!ink) blank.push(c);
    }
    return blank;
  };
  requestAnimationFrame(frame);
  setInterval(() => { if (V.started && V.mode === "live") recentre(); }, 1000);

  // -- markers, status, channels -------------------------------------------------------------------------
  function addMarkers(list) {
    const g = geometry();
    for (const m of list) {
      V.markers.push(m);
      const li = document.createElement("li");
      const when = m.row === null ? "not on a sample" : `sample ${m.row}`;
      li.textContent = `${m.label} (${when})`;
      li.dataset.label = m.label;
      $("markers").prepend(li);
    }
    while ($("markers").children.length > LIST_MARKERS) $("markers").lastChild.remove();
    if (V.markers.length > 2000) V.markers.splice(0, 1000);
    if (V.drawnCol !== null) drawMarkers(g, V.drawnCol);
  }
  function size(bytes) {
    return bytes < 1048576 ? `${(bytes / 1024).toFixed(0)} KiB` : bytes < 1073741824 ? `${(bytes / 1048576).toFixed(1)} MiB` :
      `${(bytes / 1073741824).toFixed(2)} GiB`;
  }
  function showStatus(s) {
    V.status = s;
    const rows = [];
    const fmt = (v, d = 1) => (v === null || v === undefined ? "–" : typeof v === "number" ? v.toFixed(d) : String(v));
    rows.push(["driver", s.driver], ["state", s.state], ["rate", `${fmt(s.fs, 0)} Hz nominal, ${fmt(s.measured_hz, 1)} Hz measured`]);
    rows.push(["samples", `${s.samples ?? 0} shown, ${s.lost_samples ?? 0} lost in ${s.n_gaps ?? 0} gaps`]);
    const r = s.recording;
    rows.push(["recording", r ? `${r.name}: ${r.n_samples} samples, ${size(r.bytes)}, ${r.markers} markers` +
      (r.gaps ? `, ${r.gaps} gaps` : "") + (r.error ? ` (error: ${r.error})` : "") : "none"]);
    if (s.markers) rows.push(["markers", `${s.markers.shown} shown, ${s.markers.lost} lost`]);
    for (const [name, state] of Object.entries(s.services || {})) rows.push([name, state]);
    const dl = $("status"); dl.textContent = "";
    for (const [k, v] of rows) { const dt = document.createElement("dt"), dd = document.createElement("dd"); dt.textContent = k; dd.textContent = fmt(v); dd.dataset.key = k; dl.append(dt, dd); }
    if (s.quality && JSON.stringify(s.quality) !== JSON.stringify(V.quality)) { V.quality = s.quality; channelQuality(); drawLabels(); }
    $("record-stop").disabled = !(r && r.mine) || V.role !== "controller";
  }
  // -- impedance: a bar per channel when the stream is in Ohm (gusbamp's impedance mode) -------------------
  function impedanceBars() {
    const on = V.info.unit === "Ohm", list = $("impedance-bars");
    $("impedance").hidden = !on; list.textContent = "";
    if (!on) return;
    for (const name of V.info.channels) {
      const li = document.createElement("li"), meter = document.createElement("span"), value = document.createElement("span");
      meter.className = "meter"; meter.append(document.createElement("div"));
      li.append(Object.assign(document.createElement("span"), { textContent: name }), meter, value);
      list.append(li);
    }
  }
  function updateImpedance() {  // each channel's median of its last quarter second
    if (!V.info || V.info.unit !== "Ohm" || V.lastRow === V.firstRow) return;
    const n = Math.max(1, Math.min(V.lastRow - V.firstRow, Math.ceil(V.fs / 4)));
    [...$("impedance-bars").children].forEach((li, c) => {
      const values = [];
      for (let r = V.lastRow - n; r < V.lastRow; r++) { const v = V.raw[c][r % V.cap]; if (!Number.isNaN(v)) values.push(v); }
      if (!values.length) return;
      values.sort((a, b) => a - b);
      const kohm = values[values.length >> 1] / 1000, [good, fair, full] = IMPEDANCE_KOHM;
      li.children[1].className = `meter ${kohm < 0 || kohm > fair ? "poor" : kohm > good ? "fair" : "good"}`;
      li.children[1].firstChild.style.width = `${Math.max(1, Math.min(100, 100 * kohm / full))}%`;
      li.children[2].textContent = `${kohm.toFixed(1)} kΩ`;
      li.dataset.kohm = kohm.toFixed(3); li.dataset.rows = `${V.lastRow - n}:${V.lastRow}`;
    });
  }
  setInterval(updateImpedance, 250);

  function channelTable() {
    const body = $("channels").tBodies[0]; body.textContent = "";
    V.info.channels.forEach((name, c) => {
      const tr = body.insertRow(), sel = document.createElement("select");
      tr.insertCell().textContent = name; tr.insertCell().textContent = "…";
      for (const g of GAINS) sel.add(new Option(`×${g}`, String(g), false, g === 1));
      sel.setAttribute("aria-label", `gain of ${name}`);
      sel.onchange = () => { V.gains[c] = +sel.value; fullRedraw(); };
      tr.insertCell().append(sel);
    });
  }
  function channelQuality() {
    [...$("channels").tBodies[0].rows].forEach((tr, c) => {
      const q = V.quality[c], cell = tr.cells[1];
      cell.textContent = q; cell.className = q.replace(" ", "-");
    });
  }
  function message(text, error = false) {
    const li = document.createElement("li"); li.textContent = text; if (error) li.className = "error";
    $("messages").prepend(li);
    while ($("messages").children.length > 30) $("messages").lastChild.remove();
  }

  // -- the connection ----------------------------------------------------------------------------------------
  function send(command) {  // a command for the service; its reply (a Promise)
    const id = V.nextId++;
    return new Promise((resolve) => { V.replies[id] = resolve; V.ws.send(JSON.stringify({ ...command, id })); });
  }
  V.send = send;
  function requestWindow() {
    if (!V.info || !V.info.recording) return;
    const start = Math.round(+$("position").value * V.info.fs), n = Math.round(timebase() * V.info.fs);
    $("position-text").textContent = `${(+$("position").value).toFixed(1)} s of ${(V.info.n_samples / V.info.fs).toFixed(1)} s`;
    send({ type: "window", start, n });
  }
  function connect() {
    const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
    ws.binaryType = "arraybuffer"; V.ws = ws;
    ws.onopen = () => { $("connection").textContent = "connected"; $("connection").className = "badge ok"; };
    ws.onclose = () => {
      $("connection").textContent = "disconnected: reconnecting"; $("connection").className = "badge bad";
      setTimeout(connect, 1000);
    };
    ws.onmessage = (ev) => {
      if (ev.data instanceof ArrayBuffer) { ingest(ev.data); return; }
      const m = JSON.parse(ev.data);
      if (m.type === "hello") { V.role = m.role; V.mode = m.mode; roleControls(); }
      else if (m.type === "stream") setStream(m);
      else if (m.type === "markers") addMarkers(m.markers);
      else if (m.type === "status") showStatus(m);
      else if (m.type === "reply") {
        const done = V.replies[m.id]; delete V.replies[m.id];
        if (m.command !== "window") message(m.ok ? `${m.command.replace("_", " ")}: done${m.recording ? ` (${m.recording})` : ""}` : m.error, !m.ok);
        if (done) done(m);
      } else if (m.type === "error") message(m.text, true);
    };
  }
  function roleControls() {
    $("role").textContent = V.role;
    const controller = V.role === "controller" && V.mode === "live";
    for (const id of ["record-name", "record-start", "marker-label", "marker-send"]) $(id).disabled = !controller;
    $("record-stop").disabled = true;
    $("controls-note").textContent = controller ? "" : V.mode === "recording" ? "a recording is only looked at" :
      "this page may look only: open the controller's URL that mushu view printed to record or send markers";
  }
  $("record-form").onsubmit = (ev) => { ev.preventDefault(); send({ type: "record", name: $("record-name").value }); };
  $("record-stop").onclick = () => send({ type: "stop_recording" });
  $("marker-form").onsubmit = (ev) => { ev.preventDefault(); send({ type: "marker", label: $("marker-label").value }); };

  // -- settings ---------------------------------------------------------------------------------------------
  for (const s of SCALES) $("scale").add(new Option(String(s), String(s)));
  $("scale").onchange = () => { V.scale = +$("scale").value; scalebar(); fullRedraw(); };
  $("timebase").onchange = () => { if (V.info && V.info.recording) { $("position").max = Math.max(0, V.info.n_samples / V.info.fs - timebase()).toFixed(1); requestWindow(); } else fullRedraw(); };
  $("mode").onchange = fullRedraw;
  $("highpass").onchange = refilter;
  $("notch").onchange = refilter;
  let pending = null;
  $("position").oninput = () => { clearTimeout(pending); pending = setTimeout(requestWindow, 50); };
  window.addEventListener("resize", resize);
  connect();
})();

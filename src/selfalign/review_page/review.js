// selfalign review page: every text is set with textContent (never parsed as markup).
(function () {
  "use strict";
  var t0 = performance.now();
  var DATA = JSON.parse(document.getElementById("review-data").textContent);
  var meta = DATA.meta, rows = DATA.rows, PAGE = 50;
  var $ = function (id) { return document.getElementById(id); };
  var STORE = "selfalign-review:" + meta.key;
  var labels = {};  // source id -> "keep" | "drop"
  var notes = {};   // source id -> a note (exported with the pair's label)
  var shown = [];   // indices of rows matching the filters, sorted
  var page = 0, cur = 0;  // page number; the current row's position in `shown`
  var against = function (r, d) { return d && ((d === "keep") !== r.kept); };

  // the search index: lower-case text of each row, built once
  for (var i = 0; i < rows.length; i++) {
    var r = rows[i];
    r.i = i;
    r.q = (r.id + "\n" + r.src + "\n" + r.ins + "\n" + r.resp + "\n" + r.reason + "\n" + r.flags.join(" ")).toLowerCase();
  }

  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function fmt(x, nd) { return x === null || x === undefined ? "–" : Number(x).toFixed(nd === undefined ? 2 : nd); }

  // --- stored decisions ---------------------------------------------------------------
  function load() {
    try { labels = JSON.parse(localStorage.getItem(STORE) || "{}") || {}; } catch (e) { labels = {}; }
    try { notes = JSON.parse(localStorage.getItem(STORE + ":notes") || "{}") || {}; } catch (e) { notes = {}; }
    if (!Object.keys(labels).length) {  // first visit: the labels this round was curated with
      rows.forEach(function (r) { if (r.label) labels[r.id] = r.label; });
    }
  }
  function save() {
    try {
      localStorage.setItem(STORE, JSON.stringify(labels));
      localStorage.setItem(STORE + ":notes", JSON.stringify(notes));
    } catch (e) { /* storage full or off: kept in memory */ }
  }

  // --- page head ------------------------------------------------------------------------
  function about() {
    $("title").textContent = meta.title;
    var dl = $("about");
    [["Run", meta.run], ["Config", meta.config], ["Curation mode", meta.mode], ["Rater", meta.rater],
     ["Threshold", "keep score ≥ " + meta.threshold], ["Round", "curate_" + meta.iteration],
     ["Pairs", meta.n + (meta.hygiene_rows ? " (" + meta.hygiene_rows + " hygiene flags)" : "")],
     ["Curated with labels", meta.labels_file || "none"]].forEach(function (kv) {
      dl.appendChild(el("dt", kv[0])); dl.appendChild(el("dd", kv[1]));
    });
    var flags = {}, srcs = {};
    rows.forEach(function (r) { r.flags.forEach(function (f) { flags[f] = (flags[f] || 0) + 1; }); srcs[r.src] = (srcs[r.src] || 0) + 1; });
    fill($("flag"), [["", "any"], ["(none)", "no flag"]], flags);
    fill($("source"), [["", "all"]], srcs);
  }
  function fill(sel, first, counts) {
    first.forEach(function (o) { var e = el("option", o[1]); e.value = o[0]; sel.appendChild(e); });
    Object.keys(counts).sort().forEach(function (k) { var e = el("option", k + " (" + counts[k] + ")"); e.value = k; sel.appendChild(e); });
  }

  // --- filter and sort -------------------------------------------------------------------
  var SORTS = {
    "score-desc": function (a, b) { return nz(b.score) - nz(a.score) || a.i - b.i; },
    "score-asc": function (a, b) { return nz(a.score, 9) - nz(b.score, 9) || a.i - b.i; },
    "value-desc": function (a, b) { return nz(b.value) - nz(a.value) || a.i - b.i; },
    "resp-desc": function (a, b) { return b.resp.length - a.resp.length || a.i - b.i; },
    "resp-asc": function (a, b) { return a.resp.length - b.resp.length || a.i - b.i; },
    "ins-asc": function (a, b) { return a.ins.length - b.ins.length || a.i - b.i; },
    "id": function (a, b) { return a.id < b.id ? -1 : a.id > b.id ? 1 : a.i - b.i; },
    "order": function (a, b) { return a.i - b.i; }
  };
  var orders = {};  // each sort's order of all rows, computed once: a filter then only scans
  function sorted(key) {
    if (!orders[key]) orders[key] = rows.slice().sort(SORTS[key] || SORTS.order);
    return orders[key];
  }
  function nz(x, none) { return x === null || x === undefined ? (none === undefined ? -1e9 : none) : x; }

  function apply(keepPage) {
    var t = performance.now();
    var q = $("q").value.trim().toLowerCase(), lo = parseFloat($("min").value), hi = parseFloat($("max").value);
    var rater = $("rater").value, mine = $("mine").value, flag = $("flag").value, src = $("source").value;
    var out = [], base = sorted($("sort").value);
    for (var i = 0; i < base.length; i++) {
      var r = base[i], d = labels[r.id];
      if (q && r.q.indexOf(q) < 0) continue;
      if (!isNaN(lo) && (r.score === null || r.score < lo - 1e-9)) continue;
      if (!isNaN(hi) && (r.score === null || r.score > hi + 1e-9)) continue;
      if (rater === "kept" && !r.kept) continue;
      if (rater === "dropped" && r.kept) continue;
      if (mine === "none" && d) continue;
      if ((mine === "keep" || mine === "drop") && d !== mine) continue;
      if (mine === "against" && !against(r, d)) continue;
      if (flag === "(none)" && r.flags.length) continue;
      if (flag && flag !== "(none)" && r.flags.indexOf(flag) < 0) continue;
      if (src && r.src !== src) continue;
      out.push(r);
    }
    shown = out;
    if (!keepPage) { page = 0; cur = 0; }
    page = Math.max(0, Math.min(page, Math.ceil(shown.length / PAGE) - 1));
    cur = Math.max(0, Math.min(cur, shown.length - 1));
    render();
    window.__review.applyMs = performance.now() - t;
  }

  // --- render ------------------------------------------------------------------------------
  function counts() {
    var keptShown = 0, k = 0, d = 0, ag = 0;
    for (var i = 0; i < shown.length; i++) if (shown[i].kept) keptShown++;
    rows.forEach(function (r) {
      var x = labels[r.id];
      if (x === "keep") k++; else if (x === "drop") d++;
      if (against(r, x)) ag++;
    });
    var first = shown.length ? page * PAGE + 1 : 0, last = Math.min(shown.length, (page + 1) * PAGE);
    $("counts").textContent = shown.length + " of " + rows.length + " pairs match (rater keeps " + keptShown +
      " of them); your labels: " + k + " keep, " + d + " drop, " + ag + " against the rater.";
    $("page").textContent = "Rows " + first + "–" + last + " of " + shown.length;
    $("prev").disabled = page === 0;
    $("next").disabled = last >= shown.length;
    $("empty").hidden = shown.length > 0;
  }

  function decideCell(r) {
    var td = el("td", null, "decide"), d = labels[r.id];
    ["keep", "drop"].forEach(function (what) {
      var b = el("button", what === "keep" ? "Keep" : "Drop", what);
      b.type = "button";
      b.setAttribute("aria-pressed", d === what ? "true" : "false");
      b.setAttribute("aria-label", (what === "keep" ? "Keep " : "Drop ") + r.id);
      b.dataset.act = what;
      td.appendChild(b);
    });
    if (against(r, d)) td.appendChild(el("span", "against the rater", "against"));
    var note = el("input", null, "note");
    note.type = "text";
    note.placeholder = "note";
    note.value = notes[r.id] || "";
    note.setAttribute("aria-label", "Note on " + r.id);
    td.appendChild(note);
    return td;
  }

  function folded(text, n, label) {
    var det = el("details"), sum = el("summary");
    sum.appendChild(el("span", text.length > n ? text.slice(0, n) + "…" : text, "text"));
    sum.appendChild(el("span", " (" + text.length + " characters)", "len"));
    sum.setAttribute("aria-label", label + ", " + text.length + " characters: open to read");
    det.appendChild(sum);
    det.addEventListener("toggle", function () {  // the full text only once opened: long responses stay cheap
      if (det.open && !det.querySelector(".full")) det.appendChild(el("div", text, "text full"));
    });
    return det;
  }

  function rowEl(r, pos) {
    var tr = el("tr");
    tr.tabIndex = -1;
    tr.dataset.pos = pos;
    tr.appendChild(el("td", pos + 1));
    tr.appendChild(decideCell(r));
    var sc = el("td", fmt(r.score), "score");
    if (r.value !== null) sc.appendChild(el("div", "value " + fmt(r.value, 3), "len"));
    tr.appendChild(sc);
    tr.appendChild(el("td", r.score === null ? "unscored" : r.kept ? "kept" : "dropped", r.kept ? "kept" : "dropped"));
    var ins = el("td"); ins.appendChild(el("div", r.ins, "text")); ins.firstChild.dir = "auto"; tr.appendChild(ins);
    var resp = el("td"); resp.appendChild(folded(r.resp, 160, "Response")); resp.className = "resp"; tr.appendChild(resp);
    var why = el("td");
    if (r.reason) why.appendChild(r.reason.length > 300 ? folded(r.reason, 200, "Reasoning") : el("div", r.reason, "text"));
    var keys = Object.keys(r.parts);
    if (keys.length) why.appendChild(el("div", keys.map(function (k) { return k + " " + fmt(r.parts[k], 3); }).join(" · "), "signals"));
    tr.appendChild(why);
    var fl = el("td");
    r.flags.forEach(function (f) { fl.appendChild(el("span", f, "badge")); });
    r.details.forEach(function (x) { fl.appendChild(el("div", x, "len")); });
    tr.appendChild(fl);
    var src = el("td", null, "src"); src.appendChild(el("div", r.src)); src.appendChild(el("div", r.id, "len")); tr.appendChild(src);
    if (pos === cur) tr.classList.add("current");
    return tr;
  }

  function render() {
    var body = $("rows"), frag = document.createDocumentFragment();
    for (var p = page * PAGE; p < Math.min(shown.length, (page + 1) * PAGE); p++) frag.appendChild(rowEl(shown[p], p));
    body.replaceChildren(frag);
    counts();
  }

  function rowAt(pos) { return $("rows").querySelector('tr[data-pos="' + pos + '"]'); }
  function move(to, focus) {
    if (!shown.length) return;
    to = Math.max(0, Math.min(to, shown.length - 1));
    var old = rowAt(cur);
    if (old) old.classList.remove("current");
    cur = to;
    if (Math.floor(cur / PAGE) !== page) { page = Math.floor(cur / PAGE); render(); }
    var tr = rowAt(cur);
    if (tr) { tr.classList.add("current"); if (focus !== false) tr.focus(); tr.scrollIntoView({ block: "nearest" }); }
  }

  function decide(pos, what) {
    var r = shown[pos];
    if (!r) return;
    if (!what || labels[r.id] === what) delete labels[r.id]; else labels[r.id] = what;
    save();
    var old = rowAt(pos);
    if (old) old.replaceWith(rowEl(r, pos));
    counts();
  }

  // --- export / import ----------------------------------------------------------------------
  function exportLabels() {
    var byId = {};
    rows.forEach(function (r) { byId[r.id] = r; });
    var lines = Object.keys(labels).filter(function (id) { return byId[id]; }).map(function (id) {
      var r = byId[id];
      return JSON.stringify({ source_id: id, decision: labels[id], note: notes[id] || "", instruction: r.ins, response: r.resp,
                              rater_score: r.score, rater_kept: r.kept });
    });
    var blob = new Blob([lines.join("\n") + (lines.length ? "\n" : "")], { type: "application/x-ndjson" });
    var a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = "labels-curate_" + meta.iteration + ".jsonl";
    document.body.appendChild(a);
    a.click();
    setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  }
  function importLabels(file) {
    var fr = new FileReader();
    fr.onload = function () {
      var n = 0;
      String(fr.result).split("\n").forEach(function (line) {
        try {
          var o = JSON.parse(line);
          if (o && typeof o.source_id === "string" && (o.decision === "keep" || o.decision === "drop")) {
            labels[o.source_id] = o.decision; n++;
            if (o.note) notes[o.source_id] = String(o.note);
          }
        } catch (e) { /* not a labels line */ }
      });
      save(); apply(true);
      $("counts").textContent += " Imported " + n + " labels.";
    };
    fr.readAsText(file);
  }

  // --- events ----------------------------------------------------------------------------------
  ["q", "min", "max"].forEach(function (id) { $(id).addEventListener("input", function () { apply(false); }); });
  ["rater", "mine", "flag", "source", "sort"].forEach(function (id) { $(id).addEventListener("change", function () { apply(false); }); });
  $("prev").addEventListener("click", function () { move((page - 1) * PAGE, false); });
  $("next").addEventListener("click", function () { move((page + 1) * PAGE, false); });
  $("export").addEventListener("click", exportLabels);
  $("import").addEventListener("change", function (e) { if (e.target.files[0]) importLabels(e.target.files[0]); });
  $("clear").addEventListener("click", function () {
    if (window.confirm("Clear all your labels of this round?")) { labels = {}; notes = {}; save(); apply(true); }
  });
  $("rows").addEventListener("click", function (e) {
    var b = e.target.closest("button[data-act]");
    var tr = e.target.closest("tr");
    if (!tr) return;
    var pos = Number(tr.dataset.pos);
    if (b) { decide(pos, b.dataset.act); move(pos, false); var nb = rowAt(pos); if (nb) nb.querySelector('button[data-act="' + b.dataset.act + '"]').focus(); }
    else if (pos !== cur) move(pos, false);
  });
  $("rows").addEventListener("change", function (e) {
    if (!e.target.classList.contains("note")) return;
    var r = shown[Number(e.target.closest("tr").dataset.pos)];
    if (e.target.value.trim()) notes[r.id] = e.target.value; else delete notes[r.id];
    save();
  });
  document.addEventListener("keydown", function (e) {
    var tag = e.target.tagName;
    if (e.altKey || e.ctrlKey || e.metaKey) return;
    if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA") {
      if (e.key === "Escape") { e.target.blur(); move(cur); }
      return;
    }
    var k = e.key, done = true;
    if (k === "j" || k === "ArrowDown") move(cur + 1);
    else if (k === "k" || k === "ArrowUp") move(cur - 1);
    else if (k === "y") { decide(cur, "keep"); move(cur + 1); }
    else if (k === "n") { decide(cur, "drop"); move(cur + 1); }
    else if (k === "u") { decide(cur, null); move(cur); }
    else if (k === "o" || (k === "Enter" && tag === "TR")) { var tr = rowAt(cur); if (tr) { var d = tr.querySelector(".resp details"); d.open = !d.open; } }
    else if (k === "]") move((page + 1) * PAGE);
    else if (k === "[") move((page - 1) * PAGE);
    else if (k === "/") $("q").focus();
    else done = false;
    if (done) e.preventDefault();
  });

  window.__review = { rows: rows.length, applyMs: 0, loadMs: 0, labels: function () { return labels; },
                      notes: function () { return notes; } };
  load();
  about();
  apply(false);
  window.__review.loadMs = performance.now() - t0;  // this script: parse the data, index, draw
  window.__review.readyAt = performance.now();  // since navigation start: the HTML read too
  requestAnimationFrame(function () { setTimeout(function () { window.__review.paintedAt = performance.now(); }, 0); });
  document.documentElement.dataset.ready = "1";
})();

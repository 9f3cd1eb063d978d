// bitmcu demo page: draw / upload / camera -> POST /api/infer -> input preview, 7-segment digit, logit bars.
"use strict";
(function () {
  var SEGMENTS = ["abcdef", "bc", "abdeg", "abcdg", "bcfg", "acdfg", "acdefg", "abc", "abcdefg", "abcdfg"];
  var $ = function (id) { return document.getElementById(id); };
  var pad = $("pad"), ctx = pad.getContext("2d"), backend = $("backend"), errorBox = $("error");
  var latest = 0, answers = 0, camera = null, cameraBusy = false, drawTimer = null, drawing = false;

  function showError(msg) {
    errorBox.textContent = msg;
    errorBox.hidden = !msg;
  }

  function showDigit(cls) {
    var lit = cls >= 0 && cls < SEGMENTS.length ? SEGMENTS[cls] : "";
    "abcdefg".split("").forEach(function (s) { $("seg-" + s).classList.toggle("on", lit.indexOf(s) >= 0); });
    $("cls").textContent = cls >= 0 ? String(cls) : "-";
  }

  function showInput(rows) {
    var n = rows.length, c = $("input");
    c.width = n; c.height = n;
    var g = c.getContext("2d"), img = g.createImageData(n, n);
    for (var y = 0; y < n; y++) {
      for (var x = 0; x < n; x++) {
        var i = 4 * (y * n + x), v = rows[y][x];
        img.data[i] = img.data[i + 1] = img.data[i + 2] = v;
        img.data[i + 3] = 255;
      }
    }
    g.putImageData(img, 0, 0);
    $("input-caption").textContent = "the model's input, " + n + "x" + n;
  }

  function showBars(logits, cls) {
    var box = $("bars"), lo = Math.min.apply(null, logits), hi = Math.max.apply(null, logits);
    box.textContent = "";
    logits.forEach(function (v, k) {
      var bar = document.createElement("div"), key = document.createElement("span"),
          track = document.createElement("span"), fill = document.createElement("span"),
          val = document.createElement("span");
      bar.className = "bar" + (k === cls ? " top" : "");
      key.className = "k"; key.textContent = String(k);
      track.className = "track"; fill.className = "fill";
      fill.style.width = (hi > lo ? 100 * (v - lo) / (hi - lo) : 100).toFixed(1) + "%";
      val.className = "v"; val.textContent = String(v);
      track.appendChild(fill);
      bar.appendChild(key); bar.appendChild(track); bar.appendChild(val);
      box.appendChild(bar);
    });
  }

  function show(r, source, roundTrip) {
    showError("");
    showInput(r.input);
    showDigit(r["class"]);
    showBars(r.logits, r["class"]);
    var t = r.backend + ": server " + r.server_ms.toFixed(1) + " ms, round trip " + roundTrip.toFixed(1) + " ms";
    if (r.cycles !== null) {
      t += "; on the " + r.target + ": " + r.cycles.toLocaleString("en") + " cycles = " + r.ms.toFixed(2) +
           " ms at " + (r.clock_hz / 1e6).toFixed(0) + " MHz";
    }
    $("timing").textContent = t;
    $("notes").textContent = r.notes.join("; ");
    answers += 1;
    document.body.dataset.answers = String(answers);
    document.body.dataset.source = source;
  }

  function send(blob, source) {
    var seq = ++latest, form = new FormData(), t0 = performance.now();
    form.append("image", blob, blob.name || source + (blob.type === "image/jpeg" ? ".jpg" : ".png"));
    form.append("backend", backend.value);
    return fetch("/api/infer", { method: "POST", body: form })
      .then(function (resp) { return resp.json().then(function (body) { return [resp.ok, body]; }); })
      .then(function (got) {
        if (seq !== latest) return;            // a newer picture was sent meanwhile
        if (got[0]) show(got[1], source, performance.now() - t0);
        else showError(got[1].error || "the server gave no reason");
      })
      .catch(function (e) { if (seq === latest) showError("no answer from the server: " + e); });
  }

  // ---- drawing ----
  function clearPad() {
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, pad.width, pad.height);
  }
  function point(e) {
    var r = pad.getBoundingClientRect();
    return [(e.clientX - r.left) * pad.width / r.width, (e.clientY - r.top) * pad.height / r.height];
  }
  function sendPad() { pad.toBlob(function (b) { send(b, "drawing"); }, "image/png"); }
  pad.addEventListener("pointerdown", function (e) {
    drawing = true;
    pad.setPointerCapture(e.pointerId);
    var p = point(e);
    ctx.lineWidth = 20; ctx.lineCap = ctx.lineJoin = "round"; ctx.strokeStyle = "#000";
    ctx.beginPath(); ctx.moveTo(p[0], p[1]); ctx.lineTo(p[0], p[1]); ctx.stroke();
    e.preventDefault();
  });
  pad.addEventListener("pointermove", function (e) {
    if (!drawing) return;
    var p = point(e);
    ctx.lineTo(p[0], p[1]); ctx.stroke();
    if (!drawTimer) drawTimer = setTimeout(function () { drawTimer = null; if (drawing) sendPad(); }, 250);
  });
  function endStroke() {
    if (!drawing) return;
    drawing = false;
    sendPad();
  }
  pad.addEventListener("pointerup", endStroke);
  pad.addEventListener("pointercancel", endStroke);
  $("clear").addEventListener("click", function () {
    clearPad(); latest++; showDigit(-1); showError("");
    $("bars").textContent = ""; $("timing").textContent = ""; $("notes").textContent = "";
  });

  // ---- photo ----
  $("photo").addEventListener("change", function () {
    var f = this.files[0];
    if (f) send(f, "photo");
  });

  // ---- camera ----
  var video = $("video"), grab = document.createElement("canvas");
  video.hidden = true;
  function frame() {
    if (!camera || cameraBusy || !video.videoWidth) return;
    grab.width = video.videoWidth; grab.height = video.videoHeight;
    grab.getContext("2d").drawImage(video, 0, 0);
    cameraBusy = true;
    grab.toBlob(function (b) {
      send(b, "camera").then(function () { cameraBusy = false; });
    }, "image/jpeg", 0.85);
  }
  function stopCamera() {
    if (!camera) return;
    clearInterval(camera.timer);
    camera.stream.getTracks().forEach(function (t) { t.stop(); });
    camera = null;
    video.srcObject = null; video.hidden = true;
    $("camera").textContent = "Start camera";
  }
  $("camera").addEventListener("click", function () {
    if (camera) { stopCamera(); return; }
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      showError("this browser offers no camera here (the page must come from 127.0.0.1, localhost or an https address)");
      return;
    }
    navigator.mediaDevices.getUserMedia({ video: true, audio: false }).then(function (stream) {
      camera = { stream: stream, timer: setInterval(frame, 300) };
      video.srcObject = stream; video.hidden = false;
      $("camera").textContent = "Stop camera";
    }).catch(function (e) { showError("camera: " + e.name + ": " + e.message); });
  });

  // ---- backends ----
  fetch("/api/backends").then(function (r) { return r.json(); }).then(function (list) {
    list.forEach(function (b) {
      var o = document.createElement("option");
      o.value = b.name;
      o.textContent = b.name + " (" + b.image_size + "x" + b.image_size + (b.target ? ", " + b.target : "") + ")";
      backend.appendChild(o);
    });
    document.body.dataset.ready = "1";
  }).catch(function (e) { showError("cannot list the backends: " + e); });

  clearPad();
  showDigit(-1);
})();

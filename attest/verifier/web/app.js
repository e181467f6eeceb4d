// Cloister verifier page: reads a document from the text area or a file,
// POSTs it to /v1/verify as a JSON envelope and renders the answer. Every
// value from the server is inserted with textContent, never as HTML.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function row(tbody, cells, cls) {
    const tr = document.createElement("tr");
    if (cls) tr.className = cls;
    for (const c of cells) tr.appendChild(c instanceof Node ? c : el("td", c));
    tbody.appendChild(tr);
    return tr;
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

  function showError(msg) {
    $("result").hidden = true;
    const e = $("error");
    e.textContent = msg;
    e.hidden = false;
  }

  function toBase64(buf) {
    const bytes = new Uint8Array(buf);
    let s = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(s);
  }

  async function readEvidence() {
    const f = $("file").files[0];
    if (f) {
      if (f.size > 256 * 1024) throw new Error("The file is " + f.size + " bytes: an attestation document is at most 16 KiB.");
      return toBase64(await f.arrayBuffer());
    }
    return $("evidence").value.trim();
  }

  function render(r) {
    $("error").hidden = true;
    const v = $("verdict");
    v.textContent = r.verdict;
    v.className = "verdict " + r.verdict;
    $("summary").textContent = "Policy " + r.policy + ", certificates checked at " + r.verified_at + ".";

    const failed = (r.checks || []).filter((c) => !c.ok);
    const fl = $("failed");
    clear(fl);
    for (const c of failed) fl.appendChild(el("li", c.name + ": " + (c.detail || "failed")));
    $("failed-box").hidden = failed.length === 0;

    const cb = $("checks").tBodies[0];
    clear(cb);
    for (const c of r.checks || []) {
      row(cb, [el("td", c.name), el("td", c.ok ? "ok" : "FAIL", c.ok ? "ok" : "fail"), el("td", c.detail || "")], c.ok ? "" : "bad");
    }

    const claims = r.claims;
    $("claims-box").hidden = !claims;
    if (claims) {
      const fb = $("fields").tBodies[0];
      clear(fb);
      const opt = (x) => (x === null || x === undefined ? "(none)" : x);
      const fields = [
        ["module_id", claims.module_id], ["timestamp", claims.timestamp], ["digest", claims.digest],
        ["debug mode", claims.debug ? "yes (PCR0..2 are zero)" : "no"],
        ["user_data", opt(claims.user_data)], ["nonce", opt(claims.nonce)], ["public_key", opt(claims.public_key)],
      ];
      for (const [k, val] of fields) row(fb, [el("th", k), el("td", val, "hex")]);

      const badPCR = new Set(failed.filter((c) => /^pcr\d+$/.test(c.name)).map((c) => c.name.slice(3)));
      const pb = $("pcrs").tBodies[0];
      clear(pb);
      const idx = Object.keys(claims.pcrs || {}).map(Number).sort((a, b) => a - b);
      for (const i of idx) {
        const tr = row(pb, [el("td", String(i)), el("td", claims.pcrs[String(i)], "hex")], badPCR.has(String(i)) ? "bad" : "");
        tr.dataset.pcr = String(i);
      }

      const chb = $("chain").tBodies[0];
      clear(chb);
      const at = Date.parse(r.verified_at);
      const certs = claims.certificates || [];
      certs.forEach((c, i) => {
        const role = i === 0 ? "leaf" : i === certs.length - 1 ? "root" : "intermediate";
        const nb = Date.parse(c.not_before), na = Date.parse(c.not_after);
        const ok = at >= nb && at <= na;
        const state = at < nb ? "not yet valid" : at > na ? "expired" : "valid";
        row(chb, [el("td", String(i)), el("td", role), el("td", c.subject), el("td", c.not_before), el("td", c.not_after),
          el("td", state, ok ? "ok" : "fail")], ok ? "" : "bad");
      });
    }
    $("token").textContent = r.token || "";
    $("result").hidden = false;
  }

  async function verify(ev) {
    ev.preventDefault();
    const btn = $("verify");
    btn.disabled = true;
    try {
      const evidence = await readEvidence();
      if (!evidence) {
        showError("Paste an attestation document or choose a file first.");
        return;
      }
      const body = { evidence };
      const pol = $("policy").value.trim();
      if (pol) body.policy = pol;
      const t = $("time").value.trim();
      if (t) body.time = t;
      const resp = await fetch("/v1/verify", {
        method: "POST",
        headers: { "Content-Type": "application/json", "Accept": "application/json, application/problem+json" },
        body: JSON.stringify(body),
      });
      let data = null;
      try { data = await resp.json(); } catch (e) { data = null; }
      if (!resp.ok) {
        const what = data && data.detail ? data.detail : "HTTP " + resp.status;
        showError("Not verified: " + (data && data.title ? data.title + ": " : "") + what);
        return;
      }
      render(data);
    } catch (e) {
      showError("Error: " + e.message);
    } finally {
      btn.disabled = false;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("form").addEventListener("submit", verify);
    $("evidence").addEventListener("input", () => { $("file").value = ""; });
  });
})();

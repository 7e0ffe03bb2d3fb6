// Live updates without a framework: every element with data-refresh="URL" is replaced by the
// HTML that URL returns, every data-every seconds. A failed fetch keeps the last content and
// says so; the next tick tries again.
(function () {
  "use strict";
  function refresh(el) {
    var url = el.getAttribute("data-refresh");
    fetch(url, { headers: { "Accept": "text/html" }, cache: "no-store" })
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.text(); })
      .then(function (html) { el.innerHTML = html; el.removeAttribute("data-stale"); })
      .catch(function (err) {
        el.setAttribute("data-stale", "1");
        var note = el.querySelector("#updated");
        if (note) { note.textContent = "Dashboard server unreachable (" + err.message + "); retrying"; }
      });
  }
  document.querySelectorAll("[data-refresh]").forEach(function (el) {
    var every = parseFloat(el.getAttribute("data-every") || "2") * 1000;
    setInterval(function () { refresh(el); }, every);
  });
})();

// werkbank's trainer console: the buttons call the service's REST API (with JupyterHub's XSRF token).
(function () {
  var table = document.getElementById("werkbank-participants");
  if (!table) return;
  var base = document.body.dataset.api + "/courses/" + table.dataset.course + "/";
  var result = document.getElementById("werkbank-result");
  function show(text) { result.textContent = text; result.classList.remove("d-none"); }
  function call(method, path, body, download) {
    return fetch(base + path, {method: method, headers: {"X-XSRFToken": document.body.dataset.xsrf, "Content-Type": "application/json"},
      body: body ? JSON.stringify(body) : undefined}).then(function (r) {
      if (!r.ok) return r.json().then(function (e) { throw new Error(e.message); });
      if (download) return r.blob().then(function (b) {
        var a = document.createElement("a"); a.href = URL.createObjectURL(b);
        a.download = (r.headers.get("Content-Disposition") || "").split('"')[1] || "work.tar.gz"; a.click();
        return {};
      });
      return r.json();
    });
  }
  document.querySelectorAll("[data-action]").forEach(function (button) {
    button.addEventListener("click", function () {
      if (button.dataset.confirm && !confirm(button.dataset.confirm)) return;
      var parts = button.dataset.action.split(" ");
      button.disabled = true;
      call(parts[0], parts[1], null, button.dataset.download).then(function (data) {
        show("Done: " + JSON.stringify(data)); setTimeout(function () { location.reload(); }, 1500);
      }).catch(function (e) { show("Refused: " + e.message); button.disabled = false; });
    });
  });
  var form = document.getElementById("werkbank-broadcast");
  if (form) form.addEventListener("submit", function (event) {
    event.preventDefault();
    call("POST", "broadcast", {message: form.message.value}).then(function () {
      show("Sent to everyone: " + form.message.value); form.reset();
    }).catch(function (e) { show("Refused: " + e.message); });
  });
})();

// The console's live sessions page (docs/console.md): polls /live.json every two
// seconds and brings the table up to date. Rows of sessions still running stay as they
// are (a reason being typed is kept) with their seconds updated; ended ones go; new
// ones come, each with its End session form and the sign-in's CSRF token.
"use strict";

(function () {
  const table = document.getElementById("live");
  if (!table) {
    return;
  }
  const csrf = table.dataset.csrf;
  const rows = table.tBodies[0];
  const count = document.getElementById("count");
  const updated = document.getElementById("updated");

  function cell(row, text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) {
      td.className = className;
    }
    row.append(td);
    return td;
  }

  function newRow(s) {
    const row = document.createElement("tr");
    row.dataset.id = s.id;
    const since = document.createElement("a");
    since.href = "/session/" + encodeURIComponent(s.id);
    since.textContent = s.since;
    cell(row, "").append(since);
    cell(row, s.user);
    cell(row, s.source);
    cell(row, s.target);
    cell(row, s.login);
    cell(row, s.action, s.action);
    cell(row, String(s.seconds), "n");
    cell(row, s.replica);
    const form = document.createElement("form");
    form.method = "post";
    form.action = "/live/" + encodeURIComponent(s.id) + "/end";
    const token = document.createElement("input");
    token.type = "hidden";
    token.name = "csrf";
    token.value = csrf;
    const reason = document.createElement("input");
    reason.name = "reason";
    reason.placeholder = "reason";
    reason.required = true;
    reason.maxLength = 200;
    const button = document.createElement("button");
    button.textContent = "End session";
    form.append(token, reason, " ", button);
    cell(row, "").append(form);
    return row;
  }

  async function refresh() {
    let sessions;
    try {
      const response = await fetch("/live.json", { credentials: "same-origin" });
      if (!response.ok) {
        updated.textContent = "cannot update (" + response.status + "); reload the page";
        return;
      }
      sessions = (await response.json()).sessions;
    } catch (e) {
      updated.textContent = "cannot reach the console; retrying";
      return;
    }
    const running = new Map(sessions.map((s) => [s.id, s]));
    for (const row of [...rows.rows]) {
      const s = running.get(row.dataset.id);
      if (!s) {
        row.remove();
        continue;
      }
      row.cells[6].textContent = String(s.seconds);
      running.delete(s.id);
    }
    for (const s of running.values()) {
      rows.append(newRow(s));
    }
    count.textContent = String(sessions.length);
    updated.textContent = "updated " + new Date().toLocaleTimeString();
  }

  setInterval(refresh, 2000);
})();

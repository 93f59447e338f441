"""The live page served at ``/``: one self-contained HTML document (no CDN, no build step).

It fetches ``/tree`` every second and draws the agents as an indented table:
name, class, phase, state, mailbox depth and bound, messages handled,
restarts. Text from the tree is set with ``textContent`` only, never parsed
as HTML, and the server sends a Content-Security-Policy that allows nothing
but this inline code and requests to its own origin.
"""

from __future__ import annotations

__all__ = ["PAGE"]

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>hybrid: agents</title>
<style>
  :root { color-scheme: light dark; --muted: #6a737d; --line: #d0d7de; --accent: #0969da; }
  @media (prefers-color-scheme: dark) { :root { --muted: #8b949e; --line: #30363d; --accent: #4493f8; } }
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; }
  h1 { font-size: 1.3em; margin: 0 0 .3em; }
  #status { margin: 0 0 1em; color: var(--muted); }
  #status.ready b { color: #1a7f37; }
  #status.down b, #status.stopping b, #status.ended b { color: #cf222e; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: .25em .6em; border-bottom: 1px solid var(--line); vertical-align: top; }
  th { font-weight: 600; color: var(--muted); }
  td.name { font-weight: 600; white-space: nowrap; }
  td.state { font-family: ui-monospace, monospace; font-size: .9em; word-break: break-all; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
  tr.phase-state td.phase { color: var(--accent); }
  tr.phase-starting td.phase, tr.phase-restarting td.phase, tr.phase-finishing td.phase { color: #9a6700; }
  .full { color: #cf222e; }
  pre { overflow: auto; padding: .5em; border: 1px solid var(--line); }
  footer { margin-top: 1em; color: var(--muted); }
  a { color: var(--accent); }
</style>
</head>
<body>
<h1>Agents</h1>
<p id="status">loading&hellip;</p>
<table>
  <thead><tr>
    <th>agent</th><th>class</th><th>phase</th><th>state</th>
    <th class="num">mailbox</th><th class="num">handled</th><th class="num">restarts</th>
  </tr></thead>
  <tbody id="agents"></tbody>
</table>
<section id="diagrams" hidden><h2>State diagrams</h2><div id="diagram-list"></div></section>
<footer>Refreshed every second from <a href="tree">/tree</a>.
  Also: <a href="metrics">/metrics</a>, <a href="health/ready">/health/ready</a>.</footer>
<script>
"use strict";
const rowsEl = document.getElementById("agents");
const statusEl = document.getElementById("status");
const diagramsEl = document.getElementById("diagrams");
const diagramListEl = document.getElementById("diagram-list");

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  td.className = className;
  row.appendChild(td);
  return td;
}

function addAgent(rows, agent, parent, level) {
  const row = document.createElement("tr");
  row.className = "agent phase-" + agent.phase;
  row.dataset.name = agent.name;
  row.dataset.level = String(level);
  const prefix = parent === null ? "" : parent + "/";
  const shown = prefix && agent.name.startsWith(prefix) ? agent.name.slice(prefix.length) : agent.name;
  const name = cell(row, (level ? "\\u2514 " : "") + shown, "name");
  name.title = agent.name;
  name.style.paddingLeft = (0.6 + 1.5 * level) + "em";
  cell(row, agent["class"], "class");
  cell(row, agent.phase, "phase");
  cell(row, agent.state === null ? "" : agent.state, "state");
  const bound = agent.mailbox_capacity === null ? "" : " / " + agent.mailbox_capacity;
  const mailbox = cell(row, agent.mailbox_depth + bound, "num mailbox");
  if (agent.mailbox_capacity !== null && agent.mailbox_depth >= agent.mailbox_capacity) {
    mailbox.classList.add("full");
  }
  cell(row, String(agent.messages_handled), "num handled");
  cell(row, String(agent.restarts), "num restarts");
  rows.push(row);
  for (const child of agent.children) {
    addAgent(rows, child, agent.name, level + 1);
  }
}

function showDiagrams(diagrams) {
  const names = Object.keys(diagrams || {}).sort();
  const open = new Set(Array.from(diagramListEl.querySelectorAll("details[open]"), (d) => d.dataset.name));
  const items = names.map((name) => {
    const details = document.createElement("details");
    details.dataset.name = name;
    details.open = open.has(name);
    const summary = document.createElement("summary");
    summary.textContent = name;
    const source = document.createElement("pre");
    source.textContent = diagrams[name];
    details.append(summary, source);
    return details;
  });
  diagramListEl.replaceChildren(...items);
  diagramsEl.hidden = names.length === 0;
}

async function refresh() {
  try {
    const response = await fetch("tree", { cache: "no-store" });
    if (!response.ok) {
      throw new Error("HTTP " + response.status);
    }
    const tree = await response.json();
    const rows = [];
    for (const agent of tree.agents) {
      addAgent(rows, agent, null, 0);
    }
    rowsEl.replaceChildren(...rows);
    showDiagrams(tree.diagrams);
    statusEl.className = tree.status;
    statusEl.replaceChildren();
    const word = document.createElement("b");
    word.textContent = tree.status;
    statusEl.append(word, " \\u00b7 " + rows.length + " agents \\u00b7 updated " + new Date().toLocaleTimeString());
  } catch (error) {
    statusEl.className = "down";
    statusEl.textContent = "disconnected (" + error.message + "); retrying";
  }
}

async function loop() {
  await refresh();
  setTimeout(loop, 1000);
}
loop();
</script>
</body>
</html>
"""

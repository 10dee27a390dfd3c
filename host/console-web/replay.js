// The console's replay page (docs/console.md). The auditor picks their private key
// file; this script fetches the sealed command log from the console, decrypts it with
// the project's log reader built for WebAssembly (/assets/decrypt.wasm, from
// host/console-web/src/lib.rs), and plays the asciicast it returns in the bundled
// asciinema-player. The key and the plaintext stay in this page: nothing here sends
// anything but the two GETs, and the Content-Security-Policy allows nothing else
// (connect-src 'self').
"use strict";

(function () {
  const root = document.getElementById("replay");
  if (!root) {
    return;
  }
  const keyInput = document.getElementById("key");
  const statusLine = document.getElementById("status");
  const controls = document.getElementById("controls");
  const speed = document.getElementById("speed");
  const searchForm = document.getElementById("search");
  const query = document.getElementById("query");
  const hits = document.getElementById("hits");
  const playerBox = document.getElementById("player");

  let cast = null; // the asciicast text
  let output = null; // { text, starts: [offset], times: [seconds] } of the output events
  let player = null;

  function say(text, isError) {
    statusLine.textContent = text;
    statusLine.className = isError ? "block" : "";
  }

  async function decryptor() {
    const response = await fetch("/assets/decrypt.wasm");
    if (!response.ok) {
      throw new Error("cannot load the decryptor: " + response.status);
    }
    const { instance } = await WebAssembly.instantiateStreaming(response, {});
    return instance.exports;
  }

  async function sealedLog() {
    const response = await fetch(root.dataset.log, { credentials: "same-origin" });
    if (!response.ok) {
      throw new Error("cannot fetch the sealed log: " + response.status + " " + (await response.text()));
    }
    return new Uint8Array(await response.arrayBuffer());
  }

  // Decrypts `log` with `key` inside the module: both are written to its memory, the
  // module zeroes them once read, and the local copy of the key is zeroed here.
  function decrypt(wasm, key, log) {
    const at = wasm.input(key.length + log.length);
    const input = new Uint8Array(wasm.memory.buffer, at, key.length + log.length);
    input.set(key, 0);
    input.set(log, key.length);
    key.fill(0);
    const status = wasm.open_log(key.length);
    const result = new TextDecoder().decode(
      new Uint8Array(wasm.memory.buffer, wasm.output_ptr(), wasm.output_len()),
    );
    wasm.release();
    if (status !== 0) {
      throw new Error(result);
    }
    const newline = result.indexOf("\n");
    return { about: JSON.parse(result.slice(0, newline)), cast: result.slice(newline + 1) };
  }

  // Terminal escapes out of the output, for the search.
  const ESCAPES = /\x1b\[[0-?]*[ -\/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]|\r/g;

  function indexOutput(text) {
    const starts = [];
    const times = [];
    let all = "";
    for (const line of text.split("\n").slice(1)) {
      if (!line) {
        continue;
      }
      const [time, kind, data] = JSON.parse(line);
      if (kind !== "o") {
        continue;
      }
      starts.push(all.length);
      times.push(time);
      all += data.replace(ESCAPES, "");
    }
    return { text: all, lower: all.toLowerCase(), starts, times };
  }

  function timeAt(offset) {
    let lo = 0;
    let hi = output.starts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (output.starts[mid] <= offset) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    return output.times[lo] || 0;
  }

  function play(startAt) {
    if (player) {
      player.dispose();
    }
    player = AsciinemaPlayer.create({ data: cast }, playerBox, {
      speed: Number(speed.value),
      startAt: startAt || 0,
      fit: "width",
      controls: true,
    });
  }

  keyInput.addEventListener("change", async () => {
    const file = keyInput.files[0];
    if (!file) {
      return;
    }
    say("Fetching the sealed log and decrypting it in this page…", false);
    try {
      const [wasm, log, key] = await Promise.all([
        decryptor(),
        sealedLog(),
        file.arrayBuffer().then((b) => new Uint8Array(b)),
      ]);
      keyInput.value = "";
      const opened = decrypt(wasm, key, log);
      cast = opened.cast;
      output = indexOutput(cast);
      const about = opened.about;
      let text = "Decrypted in this page: " + about.packets + " packets";
      if (about.exit && about.exit.status !== null && about.exit.status !== undefined) {
        text += ", exit status " + about.exit.status;
      }
      if (!about.pty) {
        text += " (not a terminal session: the target's output as it came)";
      }
      if (about.warning) {
        text += ". Warning: " + about.warning;
      }
      say(text + ".", Boolean(about.warning));
      controls.hidden = false;
      play(0);
    } catch (e) {
      say(String(e.message || e), true);
    }
  });

  speed.addEventListener("change", () => {
    if (cast) {
      play(player ? player.getCurrentTime() : 0);
    }
  });

  searchForm.addEventListener("submit", (event) => {
    event.preventDefault();
    hits.replaceChildren();
    const needle = query.value.toLowerCase();
    if (!output || !needle) {
      return;
    }
    let at = output.lower.indexOf(needle);
    let found = 0;
    while (at !== -1 && found < 200) {
      const time = timeAt(at);
      const context = output.text.slice(Math.max(0, at - 30), at + needle.length + 30);
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = time.toFixed(1) + " s: " + context.replace(/\s+/g, " ");
      button.addEventListener("click", async () => {
        await player.seek(time + 0.001);
        await player.pause();
      });
      item.append(button);
      hits.append(item);
      found += 1;
      at = output.lower.indexOf(needle, at + needle.length);
    }
    if (found === 0) {
      const item = document.createElement("li");
      item.textContent = "Not in the output.";
      hits.append(item);
    }
  });
})();

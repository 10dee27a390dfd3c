"""Load with integrity, for scripts/load: see that script for what it checks."""
import argparse, glob, json, os, random, subprocess, sys, tempfile, time, zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import BIN, USER, serve, setup, wait_port  # noqa: E402


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def client(d, ports, i, pty, size, slow):
    """Starts one recorded session (to 127.0.0.2, which the network-audit policy records)
    through the username form. Its output begins with a marker naming it."""
    base = ["ssh", "-F", f"{d}/ssh_config", "-p", str(ports["proxy"]),
            f"{USER}%127.0.0.2:{ports['target']}@127.0.0.1"]
    body = f"echo MARKER-{i}-; head -c {size} /dev/urandom | base64 -w 76"
    if slow:
        body = f"echo MARKER-{i}-; for n in $(seq 1 40); do echo line $n; sleep 0.1; done"
    if pty:
        return subprocess.Popen(base[:3] + ["-tt"] + base[3:], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL), (body + "; exit\n").encode()
    return subprocess.Popen(base + [body], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL), None


def run_clients(d, ports, n, first, slow=False, kill=None):
    """Runs sessions `first`..`first + n` (their markers), all at once, and returns
    {marker: (pty, what the client received, exit status)}."""
    procs = []
    for i in range(first, first + n):
        pty = i % 2 == 1
        size = random.randint(1_000, 2_000_000)
        p, stdin = client(d, ports, i, pty, size, slow)
        if stdin:
            # Typed at once (the terminal buffers it), so a pty session starts
            # producing output without waiting for the others.
            p.stdin.write(stdin)
            p.stdin.flush()
        procs.append((i, pty, p))
        if i % 20 == 19:
            time.sleep(0.3)
    if kill:
        kill()
    out = {}
    for i, pty, p in procs:
        stdout, _ = p.communicate(timeout=600)
        out[i] = (pty, stdout, p.returncode)
    return out


def decrypt_all(d):
    """Decrypts every finished command log; returns {marker: (log, server output)}."""
    found, failed = {}, []
    for log in sorted(glob.glob(f"{d}/command-logs/*.sshlog")):
        z = log + "-decrypted.zip"
        r = subprocess.run([BIN, "decrypt", "-i", log, "-k", f"{d}/sshkey", "-o", z],
                           capture_output=True)
        if r.returncode != 0:
            failed.append((log, r.stderr.decode().strip()))
            continue
        with zipfile.ZipFile(z) as zf:
            names = zf.namelist()
            data = zf.read("term_data.txt" if "term_data.txt" in names else "data_from_server.txt")
        marker = data.split(b"MARKER-", 1)[1].split(b"-", 1)[0] if b"MARKER-" in data else None
        if marker is not None:
            found[int(marker)] = (log, data)
    return found, failed


def sessions(d):
    path = f"{d}/sessions.jsonl"
    return [json.loads(l) for l in open(path)] if os.path.exists(path) else []


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    random.seed(a.seed)
    d = tempfile.mkdtemp(prefix="portcullis-load-")
    ports, procs, proxy = setup(d)
    problems = []
    try:
        # 1. N concurrent recorded sessions, pty and exec, random sizes.
        warm = run_clients(d, ports, 10, 10_000)
        time.sleep(1)
        pid = proxy.pid
        fds0, rss0 = fds(pid), rss_kib(pid)
        t = time.time()
        out = run_clients(d, ports, a.sessions, 0)
        took = time.time() - t
        time.sleep(3)
        fds1, rss1 = fds(pid), rss_kib(pid)
        # The same again: memory the allocator keeps after the first round is reused,
        # memory that leaks grows again.
        again = run_clients(d, ports, a.sessions, 20_000)
        time.sleep(3)
        fds2, rss2 = fds(pid), rss_kib(pid)
        ok = sum(1 for _, (_, _, rc) in out.items() if rc == 0)
        found, failed = decrypt_all(d)
        problems += [f"log {l} does not decrypt: {e}" for l, e in failed]
        for i, (pty, stdout, rc) in out.items():
            if rc != 0:
                problems.append(f"session {i} exited {rc}")
                continue
            if i not in found:
                problems.append(f"session {i}: no command log found")
                continue
            if stdout not in found[i][1]:
                problems.append(f"session {i}: what the client received is not all in its log")
        recs = [s for s in sessions(d) if s["target_ip"] == "127.0.0.2"]
        by_marker = {}
        for i, (log, _) in found.items():
            for s in recs:
                if any(os.path.basename(log) in c for c in s["command_logs"]):
                    by_marker[i] = s
        for i, (pty, stdout, rc) in out.items():
            s = by_marker.get(i)
            if s is None:
                problems.append(f"session {i}: not in the session log")
            elif s["bytes_to_client"] != len(stdout):
                problems.append(f"session {i}: session log says {s['bytes_to_client']} bytes to the "
                                f"client, the client received {len(stdout)}")
        expected = a.sessions * 2 + len(warm)
        if len(recs) != expected:
            problems.append(f"{len(recs)} session records, expected {expected}")
        failed_again = sum(1 for _, (_, _, rc) in again.items() if rc != 0)
        if failed_again:
            problems.append(f"{failed_again} sessions of the second round failed")
        print(f"load: {a.sessions} concurrent recorded sessions (half pty, half exec, 1 KB-2 MB each) "
              f"in {took:.1f} s; {ok} exited 0; {len(found)} command logs decrypted (with the warm-up and "
              f"second rounds), each client's output found whole in its log")
        print(f"load: proxy file descriptors {fds0} before, {fds1} after, {fds2} after a second "
              f"round; RSS {rss0 // 1024} MiB before, {rss1 // 1024} MiB after, "
              f"{rss2 // 1024} MiB after the second round")
        if fds1 > fds0 + 2 or fds2 > fds0 + 2:
            problems.append(f"file descriptors grew from {fds0} to {fds1} and {fds2}")
        if rss2 > rss1 * 1.25:
            problems.append(f"RSS grew again in the second round: {rss1} -> {rss2} KiB")

        # 2. Kill -9 the proxy in the middle of a run, restart it.
        before = {os.path.basename(p) for p in glob.glob(f"{d}/command-logs/*.sshlog")}
        records_before = len(sessions(d))
        kill_n = max(a.sessions // 4, 10)

        def kill():
            time.sleep(2.5)
            proxy.kill()
            proxy.wait()

        out = run_clients(d, ports, kill_n, 30_000, slow=True, kill=kill)
        restarted = serve([BIN, "serve", "--config", f"{d}/portcullis.toml"],
                          stderr=open(f"{d}/proxy2.log", "w"))
        procs.append(restarted)
        wait_port(ports["proxy"], restarted, "portcullis (restarted)")
        time.sleep(1)
        found, failed = decrypt_all(d)
        problems += [f"after the kill, log {l} does not decrypt: {e}" for l, e in failed]
        new_logs = {os.path.basename(p) for p in glob.glob(f"{d}/command-logs/*.sshlog")} - before
        received = sum(1 for _, (_, stdout, _) in out.items() if b"MARKER-" in stdout)
        # Each client that saw its marker finds all it received in a recovered log: data
        # is sealed before it is forwarded, and a killed proxy's logs are finalised at
        # its next start.
        recovered = [data for _, data in found.values()]
        missing = 0
        for i, (pty, stdout, rc) in out.items():
            mark = f"MARKER-{i}-".encode()
            if mark in stdout and not any(stdout in data for data in recovered if mark in data):
                missing += 1
        if missing:
            problems.append(f"{missing} killed sessions lost what their client received")
        interrupted = [s for s in sessions(d)[records_before:] if s["close_reason"].startswith("interrupted")]
        if len(interrupted) < received:
            problems.append(f"{len(interrupted)} sessions logged as interrupted, {received} were running")
        print(f"load: killed the proxy with {kill_n} recorded sessions running ({received} had output); "
              f"after the restart {len(new_logs)} command logs, all decrypt; {len(interrupted)} sessions "
              f"logged as interrupted")
    finally:
        for p in procs:
            p.kill()
    if problems:
        print("load: FAILED:\n  " + "\n  ".join(problems[:30]))
        sys.exit(1)
    print(f"load: OK (work directory {d})")


if __name__ == "__main__":
    main()

"""Benchmark driver for scripts/bench: see that script for what it measures."""
import argparse, atexit, glob, json, os, platform, re, resource, shutil, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# PORTCULLIS_BIN runs another build (an older commit's, to compare) with the same bench.
BIN = os.environ.get("PORTCULLIS_BIN", os.path.join(ROOT, "target/release/portcullis"))
WASM = os.path.join(ROOT, "target/wasm/wasm32-wasip2/release")
USER = "pclbench"


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def wait_port(port, proc, what, within=20):
    t = time.time()
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close(); return
        except OSError:
            if proc.poll() is not None or time.time() - t > within:
                sys.exit(f"{what} did not start on {port}")
            time.sleep(0.05)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def serve(cmd, **kw):
    """Starts a server the way a service manager would, in a session of its own. Where
    the kernel shares the CPU out by session (autogroup, `kernel.sched_autogroup_enabled`,
    on in most distributions), a server started in the bench's session would share one
    share with every client the bench runs; the target's sshd never does (it starts a
    session per connection). With the proxy in the clients' session, a -J download
    found the proxy waiting to run half of the time while a core sat idle
    (docs/benchmarks.md, session 21)."""
    return subprocess.Popen(cmd, start_new_session=True, **kw)


def setup(d, serve_under=(), start_within=20):
    """The bench's target and bastion sshd, the proxy (run under `serve_under`, e.g.
    valgrind for scripts/instructions, and given `start_within` seconds to listen) and
    the splice relay, with their keys and the client's configuration in `d`."""
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", USER], stderr=subprocess.DEVNULL)
    run(["usermod", "-p", "*", USER])
    home = os.path.expanduser(f"~{USER}")
    for k in ["client", "target_host", "bastion_host", "host_key"]:
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{d}/{k}"])
    os.makedirs(f"{home}/.ssh", exist_ok=True)
    shutil.copy(f"{d}/client.pub", f"{home}/.ssh/authorized_keys")
    run(["chown", "-R", f"{USER}:{USER}", f"{home}/.ssh"])
    ports = {"target": free_port(), "bastion": free_port(), "proxy": free_port(), "relay": free_port()}
    policies = f"{d}/policies"; os.makedirs(policies)
    shutil.copy(f"{WASM}/network_audit.wasm", f"{policies}/20-network-audit.wasm")
    open(f"{policies}/20-network-audit.toml", "w").write('[[rule]]\ndestinations = ["127.0.0.2"]\ncommand_logging = true\n')
    shutil.copy(f"{WASM}/default_principal.wasm", f"{policies}/90-default-principal.wasm")
    open(f"{d}/portcullis.toml", "w").write(
        # One user, one address, many sessions at once: the admission limits meant for
        # floods and for one user's share are lifted for the bench.
        f'[server]\nlisten = "127.0.0.1:{ports["proxy"]}"\nmax_startups = "200"\n'
        f'per_source_max_startups = 0\nmax_connections_per_user = 0\n[policy]\ndir = "policies"\n'
        f'[recording]\npublic_key = "sshkey.pub"\n')
    run([BIN, "ca", "init", "--config", f"{d}/portcullis.toml"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run([BIN, "keygen", "-o", f"{d}/sshkey"], stderr=subprocess.DEVNULL)
    ca = subprocess.run([BIN, "ca", "show", "--config", f"{d}/portcullis.toml"], check=True, capture_output=True).stdout
    open(f"{d}/ca.pub", "wb").write(ca)
    open(f"{d}/users.toml", "w").write(
        f'[[user]]\nemail = "{USER}@example.com"\nkeys = ["{open(d + "/client.pub").read().strip()}"]\n')
    os.makedirs("/run/sshd", exist_ok=True)
    procs = []
    # MaxStartups: the concurrency step opens sessions 16 at a time.
    for name, extra in [("target", f"ListenAddress 127.0.0.2\nTrustedUserCAKeys {d}/ca.pub\nMaxStartups 200\n"),
                        ("bastion", "AllowTcpForwarding yes\n")]:
        conf = f"{d}/{name}_sshd_config"
        open(conf, "w").write(
            f"ListenAddress 127.0.0.1\n{extra}HostKey {d}/{name}_host\nPasswordAuthentication no\n"
            f"KbdInteractiveAuthentication no\nUsePAM no\nPidFile none\nSubsystem sftp internal-sftp\n")
        p = serve(["/usr/sbin/sshd", "-D", "-e", "-f", conf, "-p", str(ports[name])],
                  stderr=subprocess.DEVNULL)
        wait_port(ports[name], p, name); procs.append(p)
    proxy = serve([*serve_under, BIN, "serve", "--config", f"{d}/portcullis.toml"],
                  stderr=open(f"{d}/proxy.log", "w"))
    wait_port(ports["proxy"], proxy, "portcullis", start_within); procs.append(proxy)
    # One more hop and nothing else (splice, no crypto): the floor under any proxy here.
    relay = serve([sys.executable, os.path.join(ROOT, "scripts/relay.py"), str(ports["relay"]),
                   str(ports["target"])])
    wait_port(ports["relay"], relay, "the relay"); procs.append(relay)
    kh = open(f"{d}/known_hosts", "w")
    for name in ["target", "bastion"]:
        key = " ".join(open(f"{d}/{name}_host.pub").read().split()[:2])
        kh.write(f"[127.0.0.1]:{ports[name]} {key}\n[127.0.0.2]:{ports[name]} {key}\n")
        if name == "target":
            kh.write(f"[127.0.0.1]:{ports['relay']} {key}\n")
    kh.write(f"[127.0.0.1]:{ports['proxy']} {' '.join(open(d + '/host_key.pub').read().split()[:2])}\n")
    kh.write(subprocess.run([BIN, "ca", "show", "--known-hosts", "--config", f"{d}/portcullis.toml"],
                            check=True, capture_output=True, text=True).stdout)
    kh.close()
    open(f"{d}/ssh_config", "w").write(
        f"Host *\n  IdentityFile {d}/client\n  IdentitiesOnly yes\n  UserKnownHostsFile {d}/known_hosts\n"
        f"  StrictHostKeyChecking yes\n  BatchMode yes\n  LogLevel ERROR\n"
        f"Host bastion\n  HostName 127.0.0.1\n  Port {ports['bastion']}\n  User {USER}\n"
        f"Host portcullis\n  HostName 127.0.0.1\n  Port {ports['proxy']}\n  User {USER}\n")
    return ports, procs, proxy, relay


def paths(d, ports):
    base = ["ssh", "-F", f"{d}/ssh_config"]
    t = str(ports["target"])
    return {
        "direct": base + ["-p", t, f"{USER}@127.0.0.1"],
        # OpenSSH picks chacha20-poly1305 by default; Portcullis offers clients AES-GCM
        # only. This row shows what direct OpenSSH does with the cipher Portcullis uses.
        "direct-aes-gcm": base + ["-c", "aes128-gcm@openssh.com", "-p", t, f"{USER}@127.0.0.1"],
        # The same through scripts/relay.py: what the extra hop alone costs.
        "relay-aes-gcm": base + ["-c", "aes128-gcm@openssh.com", "-p", str(ports["relay"]), f"{USER}@127.0.0.1"],
        "openssh-jump": base + ["-J", "bastion", "-p", t, f"{USER}@127.0.0.1"],
        "portcullis": base + ["-J", "portcullis", "-p", t, f"{USER}@127.0.0.1"],
        "portcullis-user": base + ["-p", str(ports["proxy"]), f"{USER}%127.0.0.1:{t}@127.0.0.1"],
        "portcullis-log": base + ["-J", "portcullis", "-p", t, f"{USER}@127.0.0.2"],
        "portcullis-user-log": base + ["-p", str(ports["proxy"]), f"{USER}%127.0.0.2:{t}@127.0.0.1"],
    }


def fleet(d, ports, total, concurrency):
    """Sessions per second through HAProxy (send-proxy-v2) in front of one, then two
    replicas sharing their state in PostgreSQL (a throwaway cluster). Returns
    {1: rate, 2: rate}, or None when HAProxy or PostgreSQL is missing."""
    import concurrent.futures
    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdb or not shutil.which("haproxy"):
        return None
    pgbin = os.path.dirname(initdb[-1])
    pgdir = tempfile.mkdtemp(prefix="portcullis-bench-pg-"); os.chmod(pgdir, 0o777)
    pgport = free_port()
    as_pg = ["runuser", "-u", "postgres", "--"]
    run(as_pg + [f"{pgbin}/initdb", "-D", f"{pgdir}/data", "-A", "trust", "-U", "postgres", "--no-sync"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run(as_pg + [f"{pgbin}/pg_ctl", "-D", f"{pgdir}/data", "-l", f"{pgdir}/log", "-w", "-o",
                 f"-p {pgport} -k {pgdir} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
        stdout=subprocess.DEVNULL)
    procs, rates = [], {}
    try:
        base = open(f"{d}/portcullis.toml").read().replace(
            "[server]\n", '[server]\nproxy_protocol_from = ["127.0.0.1/32"]\n', 1)
        state = f'[state]\npostgres = "host=127.0.0.1 port={pgport} user=postgres dbname=postgres"\n'
        replicas = []
        for name in ["ra", "rb"]:
            port = free_port()
            conf = f"{d}/fleet-{name}.toml"
            open(conf, "w").write(base.replace(f'127.0.0.1:{ports["proxy"]}', f"127.0.0.1:{port}")
                                  + state + f'replica = "{name}"\n')
            pr = serve([BIN, "serve", "--config", conf], stderr=open(f"{d}/{name}.log", "w"))
            wait_port(port, pr, name); procs.append(pr); replicas.append(port)
        key = " ".join(open(d + "/host_key.pub").read().split()[:2])
        for n in (1, 2):
            lb = free_port()
            servers = "".join(f"  server r{i} 127.0.0.1:{p} send-proxy-v2\n" for i, p in enumerate(replicas[:n]))
            open(f"{d}/haproxy-{n}.cfg", "w").write(
                "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n"
                f"frontend ssh\n  bind 127.0.0.1:{lb}\n  default_backend r\nbackend r\n  balance roundrobin\n{servers}")
            ha = serve(["haproxy", "-db", "-f", f"{d}/haproxy-{n}.cfg"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
            wait_port(lb, ha, "haproxy")
            with open(f"{d}/known_hosts", "a") as kh:
                kh.write(f"[127.0.0.1]:{lb} {key}\n")
            cmd = ["ssh", "-F", f"{d}/ssh_config", "-p", str(lb), f"{USER}%127.0.0.1:{ports['target']}@127.0.0.1", "true"]
            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
                ok = sum(pool.map(lambda _: subprocess.run(cmd, stdout=subprocess.DEVNULL,
                                                           stderr=subprocess.DEVNULL).returncode == 0,
                                  range(total)))
            rates[n] = (ok / (time.perf_counter() - start), total - ok)
            ha.terminate(); ha.wait()
    finally:
        for pr in procs:
            pr.terminate()
        subprocess.run(as_pg + [f"{pgbin}/pg_ctl", "-D", f"{pgdir}/data", "-m", "immediate", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(pgdir, ignore_errors=True)
    return rates


def s3_store(d, ports, size, runs):
    """Logged throughput with the command logs shipped to object storage (s3s-fs, a real
    S3 server, on this machine) by a second proxy, for the two logged paths. Returns
    {path: (download B/s list, upload B/s list, seconds until uploaded list)}, or None
    when s3s-fs is not built (scripts/setup builds it)."""
    s3bin = os.path.join(ROOT, "target/tools/bin/s3s-fs")
    if not os.path.exists(s3bin):
        return None
    data = tempfile.mkdtemp(prefix="portcullis-bench-s3-"); os.makedirs(f"{data}/bench")
    s3port, pport = free_port(), free_port()
    procs = []
    try:
        s3 = serve([s3bin, "--host", "127.0.0.1", "--port", str(s3port), "--access-key", "bench",
                    "--secret-key", "bench-secret-key", data],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(s3); wait_port(s3port, s3, "s3s-fs")
        open(f"{d}/aws-credentials", "w").write(
            "[default]\naws_access_key_id = bench\naws_secret_access_key = bench-secret-key\n")
        conf = open(f"{d}/portcullis.toml").read().replace(f'127.0.0.1:{ports["proxy"]}', f"127.0.0.1:{pport}")
        conf = conf.replace("[recording]\n", '[recording]\ndir = "command-logs-s3"\nstore = "s3"\n', 1)
        conf += (f'[recording.s3]\nbucket = "bench"\nendpoint = "http://127.0.0.1:{s3port}"\n'
                 f'credentials_file = "{d}/aws-credentials"\n')
        open(f"{d}/portcullis-s3.toml", "w").write(conf)
        pr = serve([BIN, "serve", "--config", f"{d}/portcullis-s3.toml"], stderr=open(f"{d}/proxy-s3.log", "w"))
        procs.append(pr); wait_port(pport, pr, "portcullis (s3)")
        with open(f"{d}/known_hosts", "a") as kh:
            kh.write(f"[127.0.0.1]:{pport} {' '.join(open(d + '/host_key.pub').read().split()[:2])}\n")
        with open(f"{d}/ssh_config", "a") as c:
            c.write(f"Host portcullis-s3\n  HostName 127.0.0.1\n  Port {pport}\n  User {USER}\n")
        base = ["ssh", "-F", f"{d}/ssh_config"]
        t = str(ports["target"])
        spool = f"{d}/command-logs-s3"
        cmds = {"portcullis-log": base + ["-J", "portcullis-s3", "-p", t, f"{USER}@127.0.0.2"],
                "portcullis-user-log": base + ["-p", str(pport), f"{USER}%127.0.0.2:{t}@127.0.0.1"]}
        out = {k: ([], [], []) for k in cmds}

        def settled():  # seconds from the client's exit until the spool is empty (uploaded, checked)
            start = time.perf_counter()
            while os.path.isdir(spool) and os.listdir(spool):
                if time.perf_counter() - start > 600:
                    raise RuntimeError(f"uploads did not finish: {os.listdir(spool)}")
                time.sleep(0.05)
            shutil.rmtree(f"{data}/bench"); os.makedirs(f"{data}/bench")  # keep the disk free
            return time.perf_counter() - start
        for _ in range(runs):
            for k, cmd in cmds.items():
                out[k][0].append(size / transfer(cmd, "down", size))
                out[k][2].append(settled())
                out[k][1].append(size / transfer(cmd, "up", size))
                out[k][2].append(settled())
        return out
    finally:
        for pr in procs:
            pr.terminate()
        shutil.rmtree(data, ignore_errors=True)


def spare_proxy(d, sd, extra=""):
    """A second proxy with the bench's configuration, keys and users, its own state in
    directory `sd` and `extra` appended to its configuration. Returns (process, SSH port)."""
    port = free_port()
    conf = re.sub(r'^listen = "127\.0\.0\.1:\d+"$', f'listen = "127.0.0.1:{port}"',
                  open(f"{d}/portcullis.toml").read(), count=1, flags=re.M)
    conf = conf.replace('dir = "policies"', f'dir = "{d}/policies"').replace('"sshkey.pub"', f'"{d}/sshkey.pub"')
    open(f"{sd}/portcullis.toml", "w").write(conf + extra)
    for name in ["ca", "host_key", "users.toml"]:
        src = f"{d}/{name}"
        (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, f"{sd}/{name}")
    pr = serve([BIN, "serve", "--config", f"{sd}/portcullis.toml"], stderr=open(f"{sd}/proxy.log", "w"))
    wait_port(port, pr, "portcullis (spare)")
    return pr, port


# The bench targets a run calls, by name: copies made before anything is measured
# (`freeze`), so that a run never compiles and measures one build throughout, even when
# the sources change or another build finishes while it runs.
BENCHES = {}


def freeze(d):
    """Builds the bench targets (host/benches/floor.rs, idle_sessions.rs, decision.rs) and
    copies them and the proxy's binary into `d`; BIN then names the copy."""
    global BIN
    out = subprocess.run(["cargo", "bench", "--no-run", "-q", "--message-format=json", "-p", "portcullis",
                          *(f"--bench={b}" for b in ("floor", "idle_sessions", "decision"))],
                         cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"building the bench targets failed:\n{out.stderr.strip()[-2000:]}")
    os.makedirs(f"{d}/bin")
    for line in out.stdout.splitlines():
        m = json.loads(line) if line.startswith("{") else {}
        if m.get("reason") == "compiler-artifact" and m.get("executable") and "bench" in m["target"]["kind"]:
            BENCHES[m["target"]["name"]] = shutil.copy(m["executable"], f"{d}/bin/")
    BIN = shutil.copy(BIN, f"{d}/bin/portcullis")


def run_bench(name, *args):
    """Runs bench target `name` as `cargo bench -p portcullis --bench NAME -- ARGS` would
    (from the package's directory, `--bench` first), from its copy. CARGO_TARGET_DIR
    tells criterion where the target directory is (under cargo it asks cargo)."""
    return subprocess.run([BENCHES[name], "--bench", *args], cwd=os.path.join(ROOT, "host"),
                          env={**os.environ, "CARGO_TARGET_DIR": os.path.join(ROOT, "target")},
                          capture_output=True, text=True)


def idle_bench(d, server, levels, *args):
    """The idle_sessions bench (host/benches/idle_sessions.rs) against `server` with the
    bench's client key: one JSON row per level it reached (said on stderr when it failed)."""
    out = run_bench("idle_sessions", "--proxy", server, "--key", f"{d}/client", "--levels", str(levels), *args)
    rows = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode != 0 or not rows:
        print(f"idle sessions step failed: {out.stderr.strip()[-2000:]}", file=sys.stderr)
    return rows


def light_sessions(d, n):
    """`n` idle sessions through a fresh proxy to the bench's light target (a russh server
    in the client's process: sshd cannot hold 10,000 sessions here). Returns the
    idle_sessions row, or None when it failed."""
    sd = f"{d}/light"; os.makedirs(sd)
    pr, port = spare_proxy(d, sd)
    try:
        rows = idle_bench(d, f"127.0.0.1:{port}", n, "--light-target", USER, "--pid", str(pr.pid))
        return rows[-1] if rows else None
    finally:
        pr.terminate(); pr.wait()


def console_index(d, records):
    """The web console over a session log of `records` records: the first page (reading
    the log into the index), then filtered, sorted and deep-paged queries. Returns
    {"first_ms", "queries": [(what, median ms)], "rss_mib"}. The records are copies of
    a real one the bench made, with users, targets, actions, bytes and days varied."""
    base = json.loads(open(f"{d}/sessions.jsonl").readline())
    cd = f"{d}/console"; os.makedirs(cd)
    with open(f"{cd}/sessions.jsonl", "w") as f:
        for i in range(records):
            r = dict(base)
            r["id"] = f"{i:016x}"; r["email"] = f"user-{i % 500}@example.com"
            r["target_host"] = f"host-{i % 2000}.example.com"; r["login"] = ["root", "deploy", USER][i % 3]
            r["action"] = ["allow", "audit", "block"][i % 3]
            r["start"] = f"2026-{1 + i % 12:02}-{1 + i % 28:02}T{i % 24:02}:00:00.000Z"
            r["bytes_to_client"] = i * 37 % 100000
            f.write(json.dumps(r) + "\n")
    token = "bench-console-token-0123456789abcdef"
    open(f"{cd}/token", "w").write(token); os.chmod(f"{cd}/token", 0o600)
    cport = free_port()
    pr, _ = spare_proxy(d, cd, f'[session_log]\npath = "{cd}/sessions.jsonl"\n[console]\n'
                               f'listen = "127.0.0.1:{cport}"\ntoken_file = "{cd}/token"\n')
    try:
        wait_port(cport, pr, "portcullis (console)")
        import http.client
        def get(path, cookie=None, body=None):
            c = http.client.HTTPConnection("127.0.0.1", cport, timeout=120)
            headers = {"Cookie": f"portcullis_console={cookie}"} if cookie else {}
            if body:
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            c.request("POST" if body else "GET", path, body=body, headers=headers)
            resp = c.getresponse(); resp.read()
            if resp.status not in (200, 303):
                raise RuntimeError(f"console {path}: {resp.status}")
            return resp
        cookie = get("/login", body=f"token={token}").getheader("Set-Cookie").split(";")[0].split("=", 1)[1]
        start = time.perf_counter(); get("/sessions", cookie); first = time.perf_counter() - start
        queries = [("the newest page", "/sessions"),
                   ("one user", "/sessions?user=user-7%40example.com"),
                   ("a target and an action", "/sessions?target=host-42&action=block"),
                   ("a month, by bytes", "/sessions?from=2026-03-01&to=2026-03-31&sort=bytes"),
                   ("page 1,000 by user", f"/sessions?sort=user&order=asc&page={records // 100}"),
                   ("JSON, recorded only", "/sessions.json?recorded=yes")]
        out = []
        for what, path in queries:
            times = []
            for _ in range(7):
                t0 = time.perf_counter(); get(path, cookie); times.append(time.perf_counter() - t0)
            out.append((what, statistics.median(times) * 1000))
        rss = int([l for l in open(f"/proc/{pr.pid}/status") if l.startswith("VmRSS")][0].split()[1]) / 1024
        return {"first_ms": first * 1000, "queries": out, "rss_mib": rss}
    finally:
        pr.terminate(); pr.wait()


def open_files(pid):
    """The paths a process has open."""
    fds = f"/proc/{pid}/fd"
    out = []
    for fd in os.listdir(fds):
        try:
            out.append(os.readlink(f"{fds}/{fd}"))
        except OSError:
            pass  # closed meanwhile
    return out


def proc_ticks(pid):
    """CPU clock ticks (user + system) a process has used."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def machine_ticks():
    """Busy clock ticks of the whole machine (every CPU; idle and iowait left out)."""
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(v) - v[3] - v[4]


TICK = os.sysconf("SC_CLK_TCK")


def client_group():
    """A cgroup (v2) of its own for the clients the bench runs, so that the CPU of a
    client's whole process tree is counted: with -J, `ssh` starts `ssh -W` for the outer
    connection and does not wait for it, so its time never reaches this script's
    RUSAGE_CHILDREN. None where no cgroup v2 hierarchy is writable (then the
    children's usage is the fallback, and says less for -J)."""
    for line in open("/proc/mounts"):
        _, mount, kind = line.split()[:3]
        if kind == "cgroup2":
            path = os.path.join(mount, f"portcullis-bench-{os.getpid()}")
            try:
                os.mkdir(path)
            except OSError:
                return None
            # Where processes cannot be moved into it (no delegation), do without.
            probe = subprocess.run(in_group(path, ["true"]), capture_output=True)
            if probe.returncode == 0:
                return path
            os.rmdir(path)
            return None
    return None


CLIENT_GROUP = None


def in_group(group, cmd):
    """`cmd` run inside the cgroup `group`, its children with it."""
    return ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh"] + cmd


def remove_group(path):
    """Removes the clients' cgroup when the bench ends, however it ends (its processes
    have all exited by then)."""
    try:
        os.rmdir(path)
    except OSError as e:
        print(f"note: {path} was left: {e}", file=sys.stderr)


def client_seconds():
    """CPU seconds (user + system) the clients have used so far."""
    if CLIENT_GROUP:
        for line in open(os.path.join(CLIENT_GROUP, "cpu.stat")):
            if line.startswith("usage_usec "):
                return int(line.split()[1]) / 1e6
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmd, stdin=None):
    if CLIENT_GROUP:
        cmd = in_group(CLIENT_GROUP, cmd)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdin=stdin, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def transfer(cmd, direction, size):
    """Seconds to move `size` bytes of zeros by `cmd` (a path's ssh command): read from
    the target ("down") or piped into it ("up")."""
    if direction == "down":
        return timed(cmd + [f"head -c {size} /dev/zero"])
    with open("/dev/zero", "rb") as z:
        src = subprocess.Popen(["head", "-c", str(size)], stdin=z, stdout=subprocess.PIPE)
        seconds = timed(cmd + ["cat > /dev/null"], stdin=src.stdout)
        src.wait()
    return seconds


BEGIN, END = "<!-- bench:latest -->", "<!-- /bench:latest -->"


def floor_once():
    """One run of each model of `benches/floor.rs` (the bare work of a proxy that ends
    SSH: sockets, copies, AES-GCM passes): its relay thread's CPU seconds per GiB."""
    run = run_bench("floor", "1")
    if run.returncode != 0:
        # The rest of the run is still worth having: the floor column shows "-".
        print(f"note: the floor bench failed: {run.stderr.strip()[-500:]}", file=sys.stderr)
        return {}
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"floor (.+?): ([\d.]+) s per GiB", run.stdout)}


def busy_share(rate, machine):
    """The machine's busy share of its cores while moving data at `rate` bytes/s and
    `machine` busy CPU seconds per GiB."""
    return machine / (os.cpu_count() * 2**30 / rate)


def proxy_budget(rates, ref_rates, c, ratio=0.9):
    """The proxy's CPU per GiB under which a path would reach `ratio` times the reference's
    throughput, the rest of the machine's work per GiB (the client, the target) and its
    busy share staying as measured: the machine then needs (others + x) / (cores * share)
    seconds per GiB, at most the reference's time / ratio."""
    med = statistics.median
    rate, ref, machine, proxy = med(rates), med(ref_rates), med(c[1]), med(c[0])
    share = busy_share(rate, machine)
    return os.cpu_count() * share * (2**30 / ref) / ratio - (machine - proxy)


def budget(down, up, cpu, paths, floors):
    """Where the machine's CPU went per GiB, path by path, and what the throughput goals
    leave the proxy, against the floor measured in the same rounds (issue 19;
    docs/benchmarks.md explains the reading)."""
    med = statistics.median
    lines = ["", "Where the machine's time went per GiB, median (CPU seconds: the proxy, the client's ssh "
             "processes (their whole tree where a cgroup counts it), the rest (the target's sshd and the program at its end, the relay or bastion, "
             f"the kernel's threads), and idle = {os.cpu_count()} cores x the elapsed time - all of that):", "",
             "| path | direction | elapsed | proxy | client | rest | idle |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for k in paths:
        for direction, rates in (("down", down), ("up", up)):
            c = cpu[k][direction]
            elapsed = 2**30 / med(rates[k])
            proxy = med(c[0]) if k.startswith("portcullis") else 0.0
            machine, client = med(c[1]), med(c[2])
            rest = machine - proxy - client
            idle = os.cpu_count() * elapsed - machine
            lines.append(f"| {k} | {direction} | {elapsed:.2f} | {proxy:.2f} | {client:.2f} | {rest:.2f} | {idle:.2f} |")
    lines += ["", "What the throughput goals leave the proxy: its CPU per GiB under which the path would "
              "reach 0.9x the reference, the rest of the machine's work and its busy share as measured; and "
              "the floor, the bare work of any proxy that ends SSH on that path (`benches/floor.rs`: sockets, "
              "copies and AES-GCM passes, no SSH), median over the rounds:", "",
              "| path | reference | direction | proxy now | proxy budget | floor |",
              "| --- | --- | --- | ---: | ---: | ---: |"]
    # The floor bench's model of each path and direction.
    models = {("portcullis-user", "down"): "user-name form", ("portcullis-user", "up"): "user-name form",
              ("portcullis", "down"): "-J down", ("portcullis", "up"): "-J up"}
    for k, ref in (("portcullis-user", "direct-aes-gcm"), ("portcullis", "direct")):
        for direction, rates in (("down", down), ("up", up)):
            c = cpu[k][direction]
            model = models[(k, direction)]
            got = [f[model] for f in floors if model in f]
            floor = f"{med(got):.2f}" if got else "-"
            lines.append(f"| {k} | {ref} | {direction} | {med(c[0]):.2f} | "
                         f"{proxy_budget(rates[k], rates[ref], c):.2f} | {floor} |")
    return lines


def goals(down, up, cpu, idle_ticks, idle_seconds, conc, light):
    """Issue 19's goals (docs/benchmarks.md, "Goals of CPU efficiency") against this
    run: what was measured and whether it meets the goal. Medians, as above."""
    med = statistics.median
    rows = []

    def row(goal, value, met):
        rows.append(f"| {goal} | {value} | {'yes' if met else 'no'} |")

    for k, what, limit in [("portcullis-user", "user-name form", 1.0), ("portcullis", "-J", 1.5),
                           ("portcullis-user-log", "user-name form, logged", 2.0),
                           ("portcullis-log", "-J, logged", 2.0)]:
        d, u = med(cpu[k]["down"][0]), med(cpu[k]["up"][0])
        row(f"proxy CPU per GiB, {what} <= {limit:.1f} s", f"{d:.2f} down, {u:.2f} up", max(d, u) <= limit)
    # With the same cipher, the relay (the hop alone) is shown for scale.
    for k, ref, what, floor in [
            ("portcullis-user", "direct-aes-gcm", "user-name form >= 0.9x direct with aes128-gcm", "relay-aes-gcm"),
            ("portcullis", "direct", "-J >= 0.9x direct with OpenSSH's default cipher", None)]:
        d, u = med(down[k]) / med(down[ref]), med(up[k]) / med(up[ref])
        scale = (f" (the splice relay: {med(down[floor]) / med(down[ref]):.2f}, "
                 f"{med(up[floor]) / med(up[ref]):.2f})") if floor else ""
        row(what, f"{d:.2f} down, {u:.2f} up{scale}", min(d, u) >= 0.9)
    if idle_ticks is not None:
        row(f"at rest, policies loaded: 0 CPU ticks over {idle_seconds} s", f"{idle_ticks}", idle_ticks == 0)
    thousand = [c for c in conc if c["open"] == 1000 and c.get("idle_cpu_percent") is not None]
    if thousand:
        c = thousand[0]["idle_cpu_percent"]
        row("1,000 idle sessions <= 1% of a core", f"{c:.2f}%", c <= 1.0)
    if light:
        # The level reached, and its RSS scaled to 10,000 at the measured cost per session.
        at_10k = light["rss_kib"] + (10000 - light["open"]) * light["per_session_kib"]
        row("10,000 idle sessions < 1 GiB RSS",
            f"{light['rss_kib'] / 1024:.0f} MiB at {light['open']:,} ({at_10k / 1024:.0f} MiB at 10,000 by "
            f"its cost per session)", at_10k < 1024 * 1024 and light["failed"] == 0)
    return ["", "Goals of CPU efficiency (issue 19) in this run:", "",
            "| goal | measured | met |", "| --- | --- | --- |"] + rows


def write_latest(path, table):
    """Replaces the latest run between the markers; the rest of the file (the
    explanations and the earlier runs kept by hand) stays."""
    text = open(path).read() if os.path.exists(path) else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    with open(path, "w") as f:
        f.write(f"{head}{BEGIN}\n{table}\n{END}{tail}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--setups", type=int, default=50)
    ap.add_argument("--sessions", default="200,500,1000",
                    help="concurrent idle session levels, comma-separated; empty to skip")
    ap.add_argument("--skip-criterion", action="store_true")
    ap.add_argument("--skip-s3", action="store_true", help="skip logged throughput with the S3 store")
    ap.add_argument("--no-write", action="store_true", help="print the table only, not into docs/benchmarks.md")
    ap.add_argument("--idle-seconds", type=int, default=60,
                    help="measure the proxy's CPU at rest (policies loaded, no connection) for this long; 0 to skip")
    ap.add_argument("--console-records", type=int, default=100000,
                    help="session records behind the web console's timed pages; 0 to skip")
    ap.add_argument("--light-sessions", type=int, default=9900,
                    help="idle sessions through a fresh proxy to the light target (10,000 needs more than "
                         "the 20,000 open files a process may have here); 0 to skip")
    ap.add_argument("--fleet-sessions", type=int, default=200,
                    help="sessions through HAProxy per fleet size (one, two replicas); 0 to skip")
    a = ap.parse_args()
    global CLIENT_GROUP
    CLIENT_GROUP = client_group()
    if CLIENT_GROUP:
        atexit.register(remove_group, CLIENT_GROUP)
    d = tempfile.mkdtemp(prefix="portcullis-bench-"); os.chmod(d, 0o755)
    freeze(d)
    ports, procs, proxy, relay = setup(d)
    try:
        p = paths(d, ports)
        size = a.size_mib * 1024 * 1024
        bulk_paths = ["direct", "direct-aes-gcm", "relay-aes-gcm", "openssh-jump", "portcullis", "portcullis-user",
                      "portcullis-log", "portcullis-user-log"]
        down = {k: [] for k in bulk_paths}; up = {k: [] for k in bulk_paths}
        logs = os.path.join(d, "command-logs")
        def logs_closed():
            """Waits (at most a minute) until the proxy holds no file in the log
            directory: a log is written as `NAME.sshlog.partial`, then synced, given its
            header and renamed when its session ends, off the session's task."""
            deadline = time.time() + 60
            while time.time() < deadline and any(f.startswith(logs + "/") for f in open_files(proxy.pid)):
                time.sleep(0.02)

        def drop_finished_logs():
            """Deletes the logs of finished transfers (a GiB each). `measured` has waited
            for the proxy to close them: the last close of a deleted file frees its
            pages in the closing process, which would charge the proxy for the bench's
            clean-up."""
            for name in os.listdir(logs) if os.path.isdir(logs) else []:
                if name.endswith(".sshlog"):
                    os.remove(os.path.join(logs, name))
        idle_ticks = None
        if a.idle_seconds:
            before = proc_ticks(proxy.pid)
            time.sleep(a.idle_seconds)
            idle_ticks = proc_ticks(proxy.pid) - before
        # CPU seconds per GiB moved: the proxy's own, the whole machine's, the client's.
        cpu = {k: {"down": ([], [], []), "up": ([], [], [])} for k in bulk_paths}
        gib = size / 2**30

        def measured(k, direction, run_it):
            hop = relay.pid if k == "relay-aes-gcm" else proxy.pid
            p0, m0, c0 = proc_ticks(hop), machine_ticks(), client_seconds()
            rate = run_it()
            c1 = client_seconds()
            if k.endswith("-log"):
                logs_closed()  # finishing the log (its sync to disk) is part of its cost
            p1, m1 = proc_ticks(hop), machine_ticks()
            cpu[k][direction][0].append((p1 - p0) / TICK / gib)
            cpu[k][direction][1].append((m1 - m0) / TICK / gib)
            cpu[k][direction][2].append((c1 - c0) / gib)
            return rate
        floors = []
        for _ in range(a.runs):  # alternate the paths so that noise hits all alike
            floors.append(floor_once())  # in the same minutes as the round's transfers
            for k in bulk_paths:
                drop_finished_logs()
                down[k].append(measured(k, "down", lambda: size / transfer(p[k], "down", size)))
                drop_finished_logs()  # the upload starts without the download's GiB in the page cache
                up[k].append(measured(k, "up", lambda: size / transfer(p[k], "up", size)))
        stored = None if a.skip_s3 else s3_store(d, ports, size, a.runs)
        setup_paths = ["direct", "openssh-jump", "portcullis", "portcullis-user"]
        setups = {k: [] for k in setup_paths}
        for _ in range(a.setups):
            for k in setup_paths:
                setups[k].append(timed(p[k] + ["true"]))
        conc, conc_direct = [], []
        if a.sessions:
            conc = idle_bench(d, f"127.0.0.1:{ports['proxy']}", a.sessions,
                              "--user", f"{USER}%127.0.0.1:{ports['target']}", "--pid", str(proxy.pid))
            # Reference: the same client straight to the target's sshd, at the first level.
            conc_direct = idle_bench(d, f"127.0.0.1:{ports['target']}", a.sessions.split(",")[0], "--user", USER)
        light = light_sessions(d, a.light_sessions) if a.light_sessions else None
        fleet_rates = fleet(d, ports, a.fleet_sessions, 16) if a.fleet_sessions else None
        console = console_index(d, a.console_records) if a.console_records else None
        crit = ""
        if not a.skip_criterion:
            out = run_bench("decision", "--warm-up-time", "2", "--measurement-time", "5").stdout
            # criterion puts a long bench name on a line of its own, before "time:".
            rows, label = [], ""
            for l in out.splitlines():
                if "time:" in l:
                    name, rest = l.split("time:", 1)
                    rows.append(f"{(name.strip() or label):40} time: {rest.strip()}")
                    label = ""
                elif l.strip():
                    label = l.strip()
            crit = "\n".join(rows)
    except BaseException:
        # Keep what tells why (the proxy's log, the configs); drop the command logs, up
        # to a GiB or more of them, and the copies of the binaries.
        for big in glob.glob(f"{d}/command-logs*") + [f"{d}/bin"]:
            shutil.rmtree(big, ignore_errors=True)
        print(f"bench: failed; the proxy's log and configs are left in {d}", file=sys.stderr)
        raise
    finally:
        for pr in procs:
            pr.terminate()
    med = statistics.median
    def p95(v): return sorted(v)[max(0, int(round(0.95 * len(v))) - 1)]
    lines = [f"Machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores; "
             f"{subprocess.run(['ssh', '-V'], capture_output=True, text=True).stderr.strip()}; "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             "", f"Bulk throughput, {a.size_mib} MiB, median of {a.runs} (MiB/s; ratio to direct / to OpenSSH ProxyJump):", "",
             "| path | download | ratio | vs jump | upload | ratio | vs jump |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for k in bulk_paths:
        dm, um = med(down[k]) / 2**20, med(up[k]) / 2**20
        dd, ud = med(down["direct"]) / 2**20, med(up["direct"]) / 2**20
        dj, uj = med(down["openssh-jump"]) / 2**20, med(up["openssh-jump"]) / 2**20
        lines.append(f"| {k} | {dm:.0f} | {dm/dd:.2f} | {dm/dj:.2f} | {um:.0f} | {um/ud:.2f} | {um/uj:.2f} |")
    lines += ["", "CPU seconds per GiB moved, median (the proxy process, or the relay's for its row / the "
              "whole machine, both directions; the machine also runs the client, the target and the bastion):", "",
              "| path | proxy down | proxy up | machine down | machine up |", "| --- | ---: | ---: | ---: | ---: |"]
    for k in bulk_paths:
        c = cpu[k]
        through = k.startswith("portcullis") or k == "relay-aes-gcm"
        pd = f"{med(c['down'][0]):.2f}" if through else "-"
        pu = f"{med(c['up'][0]):.2f}" if through else "-"
        lines.append(f"| {k} | {pd} | {pu} | {med(c['down'][1]):.2f} | {med(c['up'][1]):.2f} |")
    lines += budget(down, up, cpu, bulk_paths, floors)
    lines += goals(down, up, cpu, idle_ticks, a.idle_seconds, conc, light)
    if idle_ticks is not None:
        lines += ["", f"The proxy at rest (policies loaded, no connection) for {a.idle_seconds} s: "
                  f"{idle_ticks} CPU tick(s) of 1/{TICK} s."]
    if stored:
        lines += ["", f"Logged throughput, {a.size_mib} MiB, median of {a.runs}: command logs on the local disk "
                  "against shipped to S3-compatible storage (s3s-fs on this machine, 16 MiB parts, each object "
                  "read back and checked before its spool file goes; MiB/s; uploaded after = seconds from the "
                  "client's exit until the spool is empty):", "",
                  "| path | local down | S3 down | ratio | local up | S3 up | ratio | uploaded after (s) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for k, (sd, su, settle) in stored.items():
            ld, lu = med(down[k]) / 2**20, med(up[k]) / 2**20
            lines.append(f"| {k} | {ld:.0f} | {med(sd)/2**20:.0f} | {med(sd)/2**20/ld:.2f} | {lu:.0f} | "
                         f"{med(su)/2**20:.0f} | {med(su)/2**20/lu:.2f} | {med(settle):.1f} |")
    if a.setups:  # --setups 0 leaves the set-up out
        lines += ["", f"Connection set-up, `ssh ... true` x{a.setups} (ms; ratio of medians to direct / to OpenSSH "
                  "ProxyJump):", "", "| path | median | p95 | ratio | vs jump |", "| --- | ---: | ---: | ---: | ---: |"]
        for k in setup_paths:
            m = med(setups[k]) * 1000
            lines.append(f"| {k} | {m:.0f} | {p95(setups[k])*1000:.0f} | {m/(med(setups['direct'])*1000):.2f} | "
                         f"{m/(med(setups['openssh-jump'])*1000):.2f} |")
    if conc:
        lines += ["", "Concurrent idle interactive sessions (pty + shell) through Portcullis, opened 16 at a time "
                  "by one russh client (proxy RSS after each level; per session = growth over one warm session; "
                  "accepted/s = sessions opened per second of that level, end to end through the target's shell; "
                  "proxy CPU idle = the proxy's ticks over 30 s with every session idle, from 65 s after the level "
                  "opened):", "",
                    "| sessions | proxy RSS (MiB) | per session (KiB) | accepted/s | ratio to direct | failed | proxy CPU idle (% of a core) |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        direct_rate = conc_direct[0]["accept_per_s"] if conc_direct else None
        for c in conc:
            ratio = f"{c['accept_per_s'] / direct_rate:.2f}" if direct_rate else "n/a"
            idle = c.get("idle_cpu_percent")
            idle = f"{idle:.2f}" if idle is not None else "-"
            lines.append(f"| {c['open']} | {c['rss_kib']/1024:.1f} | {c['per_session_kib']:.0f} | "
                         f"{c['accept_per_s']:.0f} | {ratio} | {c['failed']} | {idle} |")
            if c.get("first_error"):
                lines.append(f"|  | first error: {c['first_error']} | | | | |")
        if direct_rate:
            lines += ["", f"Reference: the same client opening {conc_direct[0]['open']} sessions straight to the "
                      f"target's sshd: {direct_rate:.0f} accepted/s."]
    if light:
        idle = light.get("idle_cpu_percent")
        lines += ["", f"{light['open']:,} idle sessions through a fresh proxy to the light target (a russh server "
                  f"in the client's process; failed {light['failed']}): proxy RSS {light['rss_kib']/1024:.0f} MiB, "
                  f"{light['per_session_kib']:.0f} KiB per session, {light['accept_per_s']:.0f} accepted/s, "
                  f"proxy CPU idle {idle if idle is None else f'{idle:.2f}'}% of a core."]
        if light.get("first_error"):
            lines.append(f"First error: {light['first_error']}")
    if fleet_rates:
        one = fleet_rates[1][0]
        lines += ["", f"Sessions accepted per second through HAProxy (send-proxy-v2), replicas sharing "
                  f"PostgreSQL, {a.fleet_sessions} `ssh ... true` 16 at a time (on this machine the "
                  "replicas share its cores with the clients and the target):", "",
                  "| replicas | sessions/s | ratio to one | failed |", "| ---: | ---: | ---: | ---: |"]
        for n, (rate, failed) in sorted(fleet_rates.items()):
            lines.append(f"| {n} | {rate:.1f} | {rate / one:.2f} | {failed} |")
    if console:
        lines += ["", f"The web console over {a.console_records:,} session records (the first page reads the "
                  f"log into the in-memory index, {console['first_ms']:.0f} ms; then the median of 7 of each "
                  f"query; the proxy's RSS afterwards {console['rss_mib']:.0f} MiB):", "",
                  "| query | ms |", "| --- | ---: |"]
        for what, ms in console["queries"]:
            lines.append(f"| {what} | {ms:.1f} |")
    if crit:
        lines += ["", "Policy decision (criterion; [low median high]):", "", "```", crit, "```"]
    table = "\n".join(lines)
    print(table)
    if not a.no_write:
        write_latest(os.path.join(ROOT, "docs/benchmarks.md"), table)
    shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()

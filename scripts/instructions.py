"""Instructions the proxy spends per byte on each bulk path, counted by valgrind's
callgrind: see scripts/instructions for what it is for and what it leaves out."""
import argparse, collections, glob, os, re, shutil, subprocess, sys, tempfile

import bench

# Where the instructions went, by the function's name (first match wins).
CATEGORIES = [
    ("AES-GCM", r"aes|gcm|ghash"),
    # The command log's ChaCha20-Poly1305 runs in the system's libcrypto, whose
    # assembly has no symbols there: counted by the library's name.
    ("log seal", r"chacha|poly1305|libcrypto\.so"),
    ("copies", r"memcpy|memmove|memset"),
    ("allocator", r"malloc|free\b|_int_free|realloc|calloc"),
]


def self_costs(path):
    """{function: instructions executed in the function itself} from one callgrind
    output file: the cost lines under each `fn=`, without the lines after `calls=`
    (those carry a call's inclusive cost, which belongs to the callee). A function
    without a symbol is named by its address and its library."""
    names, objects, costs, fn, after_call = {}, {}, collections.Counter(), None, False
    ob = ""
    for line in open(path, errors="replace"):
        if line.startswith(("ob=", "cob=")):
            m = re.match(r"c?ob=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
            if m is not None:
                if m.group(2):
                    objects[m.group(1)] = m.group(2)
                if line.startswith("ob="):
                    ob = objects.get(m.group(1), "")
        elif line.startswith(("fn=", "cfn=")):
            m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
            if m is None:
                continue
            if m.group(2):
                names[m.group(1)] = m.group(2)
            if line.startswith("fn="):
                fn, after_call = names.get(m.group(1), m.group(1)), False
                if fn.startswith("0x"):
                    fn = f"{fn} [{os.path.basename(ob)}]"
        elif line.startswith("calls="):
            after_call = True
        elif line[:1].isdigit() or line[:1] in "+-*":
            if after_call:
                after_call = False
                continue
            parts = line.split()
            if fn is not None and len(parts) >= 2 and parts[1].isdigit():
                costs[fn] += int(parts[1])
    return costs


def categorised(costs):
    out = collections.Counter()
    for name, n in costs.items():
        out[next((c for c, pat in CATEGORIES if re.search(pat, name, re.I)), "the rest")] += n
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-mib", type=int, default=64, help="bytes moved per transfer (default 64 MiB)")
    ap.add_argument("--paths", default="portcullis-user,portcullis,portcullis-user-log,portcullis-log",
                    help="bench paths through the proxy, comma-separated")
    ap.add_argument("--top", type=int, default=0, help="also list the N costliest functions of each transfer")
    a = ap.parse_args()
    if not shutil.which("valgrind"):
        sys.exit("valgrind is not installed (apt-get install -y valgrind)")
    d = tempfile.mkdtemp(prefix="portcullis-instructions-")
    os.chmod(d, 0o755)
    # Under valgrind the proxy compiles its policies (Cranelift) about fifty times
    # slower than on the machine itself.
    ports, procs, proxy, _ = bench.setup(
        d, serve_under=["valgrind", "--tool=callgrind", "--dump-instr=no", f"--callgrind-out-file={d}/cg.%p"],
        start_within=600)
    size = a.size_mib << 20
    rows = []
    try:
        p = bench.paths(d, ports)
        names = a.paths.split(",")
        for k in names:  # the first login on each path compiles and caches what it needs
            subprocess.run(p[k] + ["true"], check=True, timeout=600)
        for k in names:
            for direction in ["down", "up"]:
                subprocess.run(["callgrind_control", "-z", str(proxy.pid)], check=True, capture_output=True)
                bench.transfer(p[k], direction, size)
                before = set(glob.glob(f"{d}/cg.{proxy.pid}.*"))
                subprocess.run(["callgrind_control", "-d", f"{k}-{direction}", str(proxy.pid)],
                               check=True, capture_output=True)
                dumped = sorted(set(glob.glob(f"{d}/cg.{proxy.pid}.*")) - before)
                if len(dumped) != 1:
                    sys.exit(f"expected one callgrind dump for {k} {direction}, found {dumped}")
                costs = self_costs(dumped[0])
                rows.append((k, direction, costs))
                os.remove(dumped[0])
    finally:
        for pr in procs:
            pr.terminate()
        for pr in procs:
            pr.wait()
        shutil.rmtree(d, ignore_errors=True)
    cols = [c for c, _ in CATEGORIES] + ["the rest"]
    print(f"Instructions the proxy executed per byte moved ({a.size_mib} MiB each way, callgrind; "
          "AVX2 code for the ciphers, no kernel work):\n")
    print("| path | direction | total | " + " | ".join(cols) + " |")
    print("| --- | --- | " + " | ".join(["---:"] * (len(cols) + 1)) + " |")
    for k, direction, costs in rows:
        c = categorised(costs)
        total = sum(costs.values())
        print(f"| {k} | {direction} | {total / size:.2f} | " + " | ".join(f"{c[x] / size:.2f}" for x in cols) + " |")
    if a.top:
        for k, direction, costs in rows:
            total = sum(costs.values())
            print(f"\n{k} {direction}, the {a.top} costliest functions (share of the proxy's instructions):")
            for name, n in costs.most_common(a.top):
                print(f"  {100 * n / total:5.1f}%  {name[:120]}")


if __name__ == "__main__":
    main()

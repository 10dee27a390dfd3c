"""A TCP relay for the benchmark: `python3 scripts/relay.py LISTEN_PORT TARGET_PORT`.

It moves each connection's bytes to 127.0.0.1:TARGET_PORT and back through a pipe with
splice(2): no copy into user space, no decryption, nothing parsed. scripts/bench puts it
in front of the target's sshd to measure what one more hop alone costs this machine,
the floor under any proxy that must also decrypt and encrypt (docs/benchmarks.md).
"""
import fcntl, os, socket, sys, threading

CHUNK = 1 << 20


def pump(src, dst):
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, CHUNK)
    except OSError:
        pass  # the default pipe size (64 KiB) works too, with more calls
    try:
        while True:
            n = os.splice(src.fileno(), w, CHUNK, flags=os.SPLICE_F_MOVE)
            if n == 0:
                break
            while n:
                n -= os.splice(r, dst.fileno(), n, flags=os.SPLICE_F_MOVE)
    except OSError:
        pass  # a reset either way ends both directions below
    finally:
        for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
            try:
                s.shutdown(how)
            except OSError:
                pass
        os.close(r)
        os.close(w)


def serve(client, target_port):
    with client, socket.create_connection(("127.0.0.1", target_port)) as target:
        for s in (client, target):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        back = threading.Thread(target=pump, args=(target, client), daemon=True)
        back.start()
        pump(client, target)
        back.join()


def main():
    listen_port, target_port = int(sys.argv[1]), int(sys.argv[2])
    server = socket.create_server(("127.0.0.1", listen_port), backlog=64)
    while True:
        client, _ = server.accept()
        threading.Thread(target=serve, args=(client, target_port), daemon=True).start()


if __name__ == "__main__":
    main()

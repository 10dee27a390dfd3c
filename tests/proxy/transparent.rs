//! Transparent mode end to end: in network namespaces this test creates, the kernel's
//! own redirect (nftables REDIRECT and TPROXY) sends a plain `ssh jdoe@ADDR` to the
//! proxy, which knows the target from the original destination. The client trusts only
//! the `@cert-authority` line.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::common::lab::{command_in, output_with_input};
use super::*;

/// A network namespace, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "pc{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .unwrap();
        assert!(out.status.success(), "ip netns add: {}", out.stderr_text());
        let ns = Netns { name };
        ns.sh("ip link set lo up");
        ns
    }

    /// Runs a shell script in the namespace.
    fn sh(&self, script: &str) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-ec", script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "in {}: {script}\n{}",
            self.name,
            out.stderr_text()
        );
    }

    fn some(&self) -> Option<String> {
        Some(self.name.clone())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// The mark the proxy sets on its connections to targets; the redirect rules let it
/// through.
const MARK: u32 = 0x70c;

/// A lab whose clients reach the target with a plain `ssh jdoe@ADDR`, trusting only the
/// host CA. The caller sets the namespaces and the redirect rules.
fn transparent_lab(transparent_port: u16, extra_policies: impl Fn(&Lab)) -> Lab {
    let lab = Lab::new(&[("jdoe@example.com", &["sre"])]);
    ensure_user("jdoe");
    lab.server_config(&format!(
        "transparent_listen = [\"0.0.0.0:{transparent_port}\", \"[::]:{transparent_port}\"]\n"
    ));
    lab.add_config(&format!("[upstream]\nsocket_mark = {MARK}\n"));
    extra_policies(&lab);
    lab.policies
        .module("90-default-principal.wasm", "default_principal");
    let p = lab.path();
    let ca_line = lab
        .portcullis(&["ca", "show", "--known-hosts"])
        .success_or_panic("ca show --known-hosts")
        .stdout_text();
    std::fs::write(p.join("client/ca_known_hosts"), ca_line).unwrap();
    std::fs::write(
        p.join("client/plain_config"),
        format!(
            "Host *\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n  \
             GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n  BatchMode yes\n  \
             ConnectTimeout 10\n  LogLevel ERROR\n",
            p.join("client/jdoe").display(),
            p.join("client/ca_known_hosts").display()
        ),
    )
    .unwrap();
    lab
}

/// `TOOL -F plain_config ARGS` in the client's namespace.
fn plain(lab: &Lab, tool: &str, args: &[&str], input: Option<&str>) -> Output {
    let mut c = command_in(&lab.ns_client, tool);
    c.arg("-F")
        .arg(lab.path().join("client/plain_config"))
        .args(args);
    output_with_input(c, input)
}

/// One machine: the client, the proxy and the target share a namespace; an OUTPUT rule
/// redirects SSH to the target's addresses, except the proxy's own marked connections.
#[test]
fn on_one_machine_plain_ssh_is_redirected_to_the_proxy() {
    let ns = Netns::new();
    ns.sh(
        "ip addr add 10.77.0.5/32 dev lo; ip addr add 10.77.0.6/32 dev lo; \
         ip -6 addr add fd77::5/128 dev lo nodad",
    );
    let tport = common::lab::free_port();
    let mut lab = transparent_lab(tport, |lab| {
        lab.policies
            .module("10-conditions.wasm", "conditions")
            .file(
                "10-conditions.toml",
                b"blocked_destinations = [\"10.77.0.6\"]\n",
            )
            .module("20-network-audit.wasm", "network_audit")
            .file(
                "20-network-audit.toml",
                b"[[rule]]\ndestinations = [\"fd77::5\"]\ncommand_logging = true\n",
            );
        let out = common::portcullis()
            .args(["keygen", "-o"])
            .arg(lab.path().join("sshkey"))
            .output()
            .unwrap();
        assert!(out.status.success());
        lab.add_config("[recording]\npublic_key = \"sshkey.pub\"\n");
    });
    let sshd_port = lab.sshd_port;
    lab.sshd_extra = "ListenAddress 10.77.0.5\nListenAddress [fd77::5]\n".into();
    for role in [&mut lab.ns_target, &mut lab.ns_proxy, &mut lab.ns_client] {
        *role = ns.some();
    }
    ns.sh(&format!(
        "nft -f - <<'EOF'\n\
         table inet portcullis {{\n\
           chain output {{\n\
             type nat hook output priority -100;\n\
             meta mark {MARK} return\n\
             ip daddr 10.77.0.0/24 tcp dport {sshd_port} redirect to :{tport}\n\
             ip6 daddr fd77::/64 tcp dport {sshd_port} redirect to :{tport}\n\
           }}\n\
         }}\n\
         EOF"
    ));
    lab.start();
    let port = sshd_port.to_string();

    // exec, then a terminal.
    let out = plain(
        &lab,
        "ssh",
        &["-p", &port, "jdoe@10.77.0.5", "echo exec-$(whoami)"],
        None,
    );
    assert_eq!(
        out.stdout_text().trim(),
        "exec-jdoe",
        "{}\n{}",
        out.stderr_text(),
        lab.proxy_log()
    );
    let out = plain(
        &lab,
        "ssh",
        &["-tt", "-p", &port, "jdoe@10.77.0.5"],
        Some("tty -s && echo has-a-tty\nexit\n"),
    );
    assert!(
        out.stdout_text().contains("has-a-tty"),
        "{}",
        out.stderr_text()
    );

    // scp and sftp.
    let file = lab.path().join("t.txt");
    std::fs::write(&file, "through the redirect\n").unwrap();
    let dest = "jdoe@10.77.0.5:/tmp/portcullis-transparent.txt";
    let out = plain(
        &lab,
        "scp",
        &["-P", &port, file.to_str().unwrap(), dest],
        None,
    );
    assert!(out.status.success(), "scp: {}", out.stderr_text());
    let back = lab.path().join("back.txt");
    let out = plain(
        &lab,
        "sftp",
        &["-P", &port, "jdoe@10.77.0.5"],
        Some(&format!(
            "get /tmp/portcullis-transparent.txt {}\n",
            back.display()
        )),
    );
    assert!(out.status.success(), "sftp: {}", out.stderr_text());
    assert_eq!(
        std::fs::read_to_string(&back).unwrap(),
        "through the redirect\n"
    );

    // IPv6, recorded by the policy.
    let out = plain(
        &lab,
        "ssh",
        &["-p", &port, "jdoe@fd77::5", "echo over-v6"],
        None,
    );
    assert_eq!(out.stdout_text().trim(), "over-v6", "{}", out.stderr_text());

    // A blocked destination: refused with the reason.
    let out = plain(
        &lab,
        "ssh",
        &["-p", &port, "jdoe@10.77.0.6", "echo no"],
        None,
    );
    assert!(!out.status.success());
    assert!(
        out.stderr_text().contains("connections to 10.77.0.6"),
        "{}",
        out.stderr_text()
    );

    let sessions = lab.wait_sessions(6);
    assert!(
        sessions.iter().all(|s| s["via"] == "transparent"),
        "{sessions:?}"
    );
    let v6 = sessions
        .iter()
        .find(|s| s["target_host"] == "fd77::5")
        .unwrap();
    assert_eq!(v6["command_logging"], true, "{v6}");
    assert_eq!(v6["command_logs"].as_array().map(Vec::len), Some(1), "{v6}");
    let blocked = sessions
        .iter()
        .find(|s| s["target_host"] == "10.77.0.6")
        .unwrap();
    assert_eq!(blocked["action"], "block");
    assert!(
        sessions
            .iter()
            .any(|s| s["target_host"] == "10.77.0.5" && s["action"] == "allow")
    );

    // The proxy's own address: refused, not served.
    let own = tport.to_string();
    let out = plain(
        &lab,
        "ssh",
        &["-p", &own, "jdoe@127.0.0.1", "echo no"],
        None,
    );
    assert!(!out.status.success());
    let log = lab.proxy_log();
    assert!(log.contains("is the proxy itself"), "{log}");

    // A rule that does not exempt the proxy's connections: its own connection comes
    // back, and is refused instead of looping.
    ns.sh("nft flush chain inet portcullis output");
    ns.sh(&format!(
        "nft add rule inet portcullis output ip daddr 10.77.0.0/24 tcp dport {sshd_port} redirect to :{tport}"
    ));
    let out = plain(
        &lab,
        "ssh",
        &["-p", &port, "jdoe@10.77.0.5", "echo looped"],
        None,
    );
    assert!(!out.status.success());
    assert!(!out.stdout_text().contains("looped"));
    let log = lab.proxy_log();
    assert!(
        log.contains("own connection to a target was redirected back to it"),
        "{log}"
    );
    lab.stop_proxy();
}

/// A router: the client's traffic to the target passes a namespace where the proxy
/// runs; a TPROXY rule delivers it to the proxy (IPv4), a PREROUTING REDIRECT does the
/// same for IPv6.
#[test]
fn on_a_router_tproxy_and_redirect_deliver_passing_ssh_to_the_proxy() {
    let (client, router, target) = (Netns::new(), Netns::new(), Netns::new());
    // client (10.78.0.2, fd78::2) -- router -- target (10.79.0.2, fd79::2)
    let link = |a: &Netns, a_if: &str, b: &Netns, b_if: &str| {
        let out = Command::new("ip")
            .args([
                "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if,
                "netns", &b.name,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "veth: {}", out.stderr_text());
    };
    link(&client, "c0", &router, "r0");
    link(&target, "t0", &router, "r1");
    client.sh(
        "ip addr add 10.78.0.2/24 dev c0; ip -6 addr add fd78::2/64 dev c0 nodad; ip link set c0 up; \
         ip route add default via 10.78.0.1; ip -6 route add default via fd78::1",
    );
    target.sh(
        "ip addr add 10.79.0.2/24 dev t0; ip -6 addr add fd79::2/64 dev t0 nodad; ip link set t0 up; \
         ip route add default via 10.79.0.1; ip -6 route add default via fd79::1",
    );
    let tport = common::lab::free_port();
    let mut lab = transparent_lab(tport, |_| {});
    let sshd_port = lab.sshd_port;
    router.sh(&format!(
        "ip addr add 10.78.0.1/24 dev r0; ip -6 addr add fd78::1/64 dev r0 nodad; ip link set r0 up; \
         ip addr add 10.79.0.1/24 dev r1; ip -6 addr add fd79::1/64 dev r1 nodad; ip link set r1 up; \
         sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1; \
         ip rule add fwmark 1 lookup 100; ip route add local 0.0.0.0/0 dev lo table 100; \
         nft -f - <<'EOF'\n\
         table ip portcullis {{\n\
           chain divert {{\n\
             type filter hook prerouting priority mangle;\n\
             tcp dport {sshd_port} meta l4proto tcp tproxy to :{tport} meta mark set 1 accept\n\
           }}\n\
         }}\n\
         table ip6 portcullis {{\n\
           chain divert {{\n\
             type nat hook prerouting priority dstnat;\n\
             tcp dport {sshd_port} redirect to :{tport}\n\
           }}\n\
         }}\n\
         EOF"
    ));
    lab.sshd_extra = "ListenAddress 10.79.0.2\nListenAddress [fd79::2]\n".into();
    lab.ns_target = target.some();
    lab.ns_proxy = router.some();
    lab.ns_client = client.some();
    lab.start();
    let port = sshd_port.to_string();
    for dest in ["jdoe@10.79.0.2", "jdoe@fd79::2"] {
        let out = plain(
            &lab,
            "ssh",
            &["-p", &port, dest, "echo routed-$(whoami)"],
            None,
        );
        assert_eq!(
            out.stdout_text().trim(),
            "routed-jdoe",
            "{dest}: {}\n{}",
            out.stderr_text(),
            lab.proxy_log()
        );
    }
    let sessions = lab.wait_sessions(2);
    assert!(
        sessions.iter().all(|s| s["via"] == "transparent"),
        "{sessions:?}"
    );
    let hosts: Vec<&str> = sessions
        .iter()
        .filter_map(|s| s["target_host"].as_str())
        .collect();
    assert!(
        hosts.contains(&"10.79.0.2") && hosts.contains(&"fd79::2"),
        "{hosts:?}"
    );
    // The target saw the connection come from the router (the proxy), not the client.
    assert!(
        lab.sshd_log().contains("from 10.79.0.1") || lab.sshd_log().contains("from fd79::1"),
        "{}",
        lab.sshd_log()
    );
    lab.stop_proxy();
}

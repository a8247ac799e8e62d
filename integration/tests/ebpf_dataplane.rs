//! Tier 3: the eBPF datapath under change. A live switch between `dataplane: iptables` and
//! `auto` (ClusterIP moving between iptables and eBPF) keeps established TCP connections and
//! new connections working; `kill -9` of the agent under continuous load (pod to ClusterIP, outside
//! host to NodePort, node host process through socket LB) fails no connection.

mod common;

use std::time::Duration;

use common::{TestLab, eventually, require_root};

const WEB: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.10\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]\n";

fn owner(s: &serde_json::Value, feature: &str) -> String {
    s["plan"]["entries"]
        .as_array()
        .and_then(|es| es.iter().find(|e| e["feature"] == feature))
        .and_then(|e| e["owner"].as_str())
        .unwrap_or_default()
        .to_string()
}

fn setup(name: &str, node1_cfg: Option<&str>) -> (TestLab, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfgs = Vec::new();
    if let Some(text) = node1_cfg {
        let p = dir.path().join("node-1.yaml");
        std::fs::write(&p, text).expect("write");
        cfgs.push(("node-1".to_string(), p));
    }
    let t = TestLab::up(name, 2, &cfgs);
    let web = |n: &str| [("app".to_string(), n.to_string())].into_iter().collect();
    t.lab.pod_add("node-1", "a", web("web"), Some(8080)).expect("a");
    t.lab.pod_add("node-2", "b", web("web"), Some(8080)).expect("b");
    t.lab.pod_add("node-1", "client", Default::default(), None).expect("client");
    t.lab.external_add("ext", None).expect("ext");
    let f = dir.path().join("web.yaml");
    std::fs::write(&f, WEB).expect("write");
    t.lab.apply(&f).expect("apply");
    eventually("service programmed", Duration::from_secs(15), || {
        t.curl("client", "http://10.96.0.10/").ok().filter(|b| b == "a" || b == "b")
    });
    (t, dir)
}

#[test]
fn live_switch_iptables_auto_and_back_keeps_connections() {
    if !require_root() {
        return;
    }
    let (t, _dir) = setup("t-switch", Some("dataplane: iptables\n"));
    assert_eq!(owner(&t.status("node-1"), "cluster-ip"), "iptables");
    let cfg_path = t.lab.state().expect("state").node("node-1").expect("node").dir.join("config.yaml");
    let original: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).expect("cfg")).expect("json");

    // An established connection through the ClusterIP, held across both switches.
    let mut hold = t
        .lab
        .command("client", &["sluice-lab".into(), "hold".into(), "10.96.0.10:80".into(), "--secs".into(), "8".into()])
        .expect("cmd");
    let held = hold.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("hold");
    std::thread::sleep(Duration::from_millis(500));

    let switch = |dataplane: &str, want: &str| {
        let mut v = original.clone();
        v["dataplane"] = dataplane.into();
        std::fs::write(&cfg_path, v.to_string()).expect("write");
        eventually(&format!("cluster-ip owned by {want}"), Duration::from_secs(10), || {
            (owner(&t.try_status("node-1")?, "cluster-ip") == want).then_some(())
        });
        // New connections keep working right after the switch.
        for _ in 0..10 {
            let b = t
                .curl("client", "http://10.96.0.10/")
                .unwrap_or_else(|e| panic!("new connection after switching to {dataplane}: {e:#}"));
            assert!(b == "a" || b == "b");
        }
    };
    switch("auto", "ebpf");
    eventually("eBPF maps hold the ClusterIP", Duration::from_secs(10), || {
        t.exec("node-1", &["sluice", "bpf", "lb", "list", "-o", "json"]).contains("10.96.0.10:80/TCP").then_some(())
    });
    for _ in 0..10 {
        assert!(t.curl("client", "http://10.96.0.10/").is_ok(), "new connection through eBPF");
    }
    std::thread::sleep(Duration::from_secs(1));
    switch("iptables", "iptables");
    let out = held.wait_with_output().expect("hold");
    assert!(
        out.status.success(),
        "the held connection broke: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn agent_kill_9_under_load_fails_no_connection() {
    if require_root() {
        kill_9_under_load("t-kill", None);
    }
}

/// The same on classic tc (clsact + cls_bpf, as on kernels before 6.6): netlink filters cannot be
/// pinned, so the restarted agent finds its own by priority, handle and name and replaces their
/// programs in place.
#[test]
fn agent_kill_9_under_load_fails_no_connection_on_classic_tc() {
    if require_root() {
        kill_9_under_load("t-kill-cls", Some("probes:\n  assume_missing: [tcx]\n"));
    }
}

fn kill_9_under_load(name: &str, node1_cfg: Option<&str>) {
    let (t, _dir) = setup(name, node1_cfg);
    let want = if node1_cfg.is_some() || !sluice_ebpf::probe::tcx().0 { "classic" } else { "tcx" };
    assert_eq!(t.status("node-1")["plan"]["tc_attach"], want);
    assert_eq!(owner(&t.status("node-1"), "cluster-ip"), "ebpf");
    // Three kinds of traffic, each served by eBPF on node-1: a pod to the ClusterIP (tc on its
    // veth), an outside host to the NodePort (tc on eth0, SNAT to node-2's backend), a host
    // process on node-1 to the ClusterIP (socket LB on the node's cgroup).
    assert_eq!(owner(&t.status("node-1"), "node-port"), "ebpf");
    assert_eq!(owner(&t.status("node-1"), "socket-lb-tcp"), "ebpf");
    let loads: Vec<_> = [("client", "10.96.0.10:80"), ("ext", "198.51.100.11:30080"), ("node-1", "10.96.0.10:80")]
        .iter()
        .map(|(from, to)| {
            let argv: Vec<String> =
                ["sluice-lab", "load", to, "--connections", "4", "--secs", "6"].iter().map(|a| a.to_string()).collect();
            let child =
                t.lab.command(from, &argv).expect("cmd").stdout(std::process::Stdio::piped()).spawn().expect("load");
            (*from, *to, child)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    t.lab.restart_agent("node-1", true).expect("kill -9 and start again");
    eventually("agent back", Duration::from_secs(15), || t.try_status("node-1").map(|_| ()));
    for (from, to, load) in loads {
        let out = load.wait_with_output().expect("load");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("load json");
        assert!(v["ok"].as_u64().unwrap_or(0) > 100, "{from} -> {to}: {v}");
        assert_eq!(v["failed"], 0, "{from} -> {to}: connections failed across the agent restart: {v}");
    }
    // The restarted agent took the pinned state over: same service id, no rewrite needed.
    let log = std::fs::read_to_string(t.lab.dir.join("nodes/node-1/agent.log")).expect("log");
    let after = log.rsplit("sluice agent started").next().unwrap_or("");
    assert!(!after.contains("eBPF service maps synced"), "restart rewrote the service maps:\n{after}");
    if want == "classic" {
        // Replaced in place: still one sluice filter per hook, at sluice's priority and handle.
        let f = t.exec("node-1", &["tc", "filter", "show", "dev", "eth0", "ingress"]);
        assert_eq!(f.lines().filter(|l| l.contains("sluice_from_net direct-action")).count(), 1, "{f}");
        assert!(f.contains("pref 20736"), "{f}");
    }
}

/// Another tc user's filter (named like Cilium's) replaces sluice's in its own slot on `dev`'s
/// ingress, inside `netns`; its program is sluice's pod program over empty maps of its own
/// (it lets everything through untranslated). Returns the pin dir of those maps.
fn foreign_filter(netns: &str, dev: &str, add: bool) -> std::path::PathBuf {
    let pins = std::path::PathBuf::from(format!("/sys/fs/bpf/{netns}-foreign"));
    let (path, dev, dir) = (format!("/run/netns/{netns}"), dev.to_string(), pins.clone());
    std::thread::spawn(move || {
        use std::os::fd::AsFd;
        let fd = std::fs::File::open(&path).expect("netns");
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let ifindex = nix::net::if_::if_nametoindex(dev.as_str()).expect("dev");
        let hook = sluice_ebpf::tc_netlink::Hook::Ingress;
        if !add {
            sluice_ebpf::tc_netlink::del_filter(ifindex, hook, 20736, 0x5100).expect("delete the foreign filter");
            return;
        }
        let mut bpf = sluice_ebpf::loader::load(&dir).expect("load");
        let prog: &mut aya::programs::SchedClassifier =
            bpf.program_mut("sluice_from_pod").expect("prog").try_into().expect("sched_cls");
        let fd = prog.fd().expect("fd");
        sluice_ebpf::tc_netlink::replace_filter(ifindex, hook, 20736, 0x5100, fd.as_fd(), "cil_from_container")
            .expect("foreign filter");
    })
    .join()
    .expect("netns thread");
    pins
}

fn holes(s: &serde_json::Value, feature: &str) -> Vec<serde_json::Value> {
    s["features"]
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["feature"] == feature))
        .and_then(|f| f["holes"].as_array().cloned())
        .unwrap_or_default()
}

/// Classic tc, and another tc user holds sluice's slot on one pod's veth: that pod's ClusterIP
/// traffic (and policy) falls back to iptables, every other interface stays on eBPF, status
/// names the hole and the foreign filter; once the filter is gone sluice attaches there and
/// iptables lets go.
#[test]
fn an_attach_failure_on_one_pod_veth_falls_back_to_iptables_there_only() {
    if !require_root() {
        return;
    }
    let (t, _dir) = setup("t-hole", Some("probes:\n  assume_missing: [tcx]\n"));
    let s = t.status("node-1");
    assert_eq!(s["plan"]["tc_attach"], "classic");
    assert_eq!(owner(&s, "cluster-ip"), "ebpf");
    let veth = s["local_endpoints"]
        .as_array()
        .and_then(|es| es.iter().find(|e| e["pod_name"] == "client"))
        .and_then(|e| e["host_interface"].as_str())
        .expect("client's veth")
        .to_string();
    let netns = t.lab.state().expect("state").node("node-1").expect("node").netns.clone();
    let pins = foreign_filter(&netns, &veth, true);
    struct Unpin(std::path::PathBuf);
    impl Drop for Unpin {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _unpin = Unpin(pins);
    t.lab.restart_agent("node-1", true).expect("kill -9 and start again");
    let s = eventually("the hole is covered by iptables", Duration::from_secs(20), || {
        let s = t.try_status("node-1")?;
        let h = holes(&s, "cluster-ip");
        (h.len() == 1 && h[0]["interface"] == veth.as_str() && h[0]["covered_by"] == "iptables").then_some(s)
    });
    let errors = s["errors"].to_string();
    assert!(errors.contains("cil_from_container") && errors.contains(&veth), "{errors}");
    assert_eq!(owner(&s, "cluster-ip"), "ebpf", "the plan is unchanged: the fallback covers one interface");
    assert!(holes(&s, "node-port").is_empty(), "the node's devices attached: {}", s["features"]);
    let rules = t.exec("node-1", &["iptables-save", "-t", "nat"]);
    assert!(rules.contains("10.96.0.10/32"), "iptables programs the ClusterIP for the holed veth:\n{rules}");
    // The holed pod reaches the Service (through netfilter); outside traffic still through eBPF.
    for _ in 0..10 {
        let b = t.curl("client", "http://10.96.0.10/").expect("client through the fallback");
        assert!(b == "a" || b == "b", "{b}");
    }
    let b = t.curl("ext", "http://198.51.100.11:30080/").expect("NodePort on eBPF");
    assert!(b == "a" || b == "b", "{b}");
    let tc = t.exec("node-1", &["tc", "filter", "show", "dev", "eth0", "ingress"]);
    assert!(tc.contains("sluice_from_net"), "{tc}");
    // The other user removes its filter: sluice attaches there and the fallback is released.
    foreign_filter(&netns, &veth, false);
    eventually("the hole closes", Duration::from_secs(20), || {
        let s = t.try_status("node-1")?;
        holes(&s, "cluster-ip").is_empty().then_some(())
    });
    eventually("iptables lets the ClusterIP go", Duration::from_secs(20), || {
        (!t.exec("node-1", &["iptables-save", "-t", "nat"]).contains("10.96.0.10/32")).then_some(())
    });
    let tc = t.exec("node-1", &["tc", "filter", "show", "dev", &veth, "ingress"]);
    assert!(tc.contains("sluice_from_pod"), "{tc}");
    let b = t.curl("client", "http://10.96.0.10/").expect("client through eBPF again");
    assert!(b == "a" || b == "b", "{b}");
}

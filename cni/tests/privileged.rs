//! Tier 2: the real sluice-cni binary against the real kernel, each test in fresh namespaces.

mod common;

use std::collections::BTreeSet;

use common::{Netns, Node, require_root};
use serde_json::{Value, json};

fn code(v: &Value) -> u64 {
    v["code"].as_u64().unwrap_or_else(|| panic!("no error code in {v}"))
}

#[test]
fn add_check_del_in_every_version() {
    if !require_root() {
        return;
    }
    let node = Node::new("10.50.1.0/24");
    for (i, version) in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"].into_iter().enumerate() {
        let pod = Netns::new("pod");
        let id = format!("c{i}");
        let (ok, res) = node.add(&id, &pod, &node.conf(version));
        assert!(ok, "ADD {version}: {res}");
        assert_eq!(res["cniVersion"], version);
        let ip = res["ips"][0]["address"].as_str().expect("address").to_string();
        assert_eq!(res["ips"][0].get("version").is_some(), version.starts_with("0."));
        assert_eq!(res["interfaces"][1]["sandbox"], pod.path());
        // The kernel agrees with the result.
        let addrs = pod.run("ip", &["-o", "-4", "addr", "show", "dev", "eth0"]);
        assert!(addrs.contains(&ip), "{addrs}");
        let routes = pod.run("ip", &["route"]);
        assert!(routes.contains("default via 10.50.1.1 dev eth0"), "{routes}");
        let host = res["interfaces"][0]["name"].as_str().expect("host if");
        let node_routes = node.ns.run("ip", &["route"]);
        assert!(node_routes.contains(&format!("{} dev {host}", ip.trim_end_matches("/32"))), "{node_routes}");

        // CHECK passes with the result as prevResult...
        let mut conf = node.conf(version);
        conf["prevResult"] = res.clone();
        let env = [
            ("CNI_COMMAND", "CHECK"),
            ("CNI_CONTAINERID", id.as_str()),
            ("CNI_NETNS", &pod.path()),
            ("CNI_IFNAME", "eth0"),
        ];
        let (ok, out) = node.call(&env, &conf.to_string());
        assert!(ok, "CHECK: {out}");
        // ...and fails once the default route is gone.
        pod.run("ip", &["route", "del", "default"]);
        let (ok, out) = node.call(&env, &conf.to_string());
        assert!(!ok);
        assert_eq!(code(&out), 101);
        assert!(out["msg"].as_str().unwrap_or_default().contains("default route"), "{out}");

        let (ok, out) = node.del(&id, &pod.path());
        assert!(ok, "DEL: {out}");
        assert!(node.ns.slc_links().is_empty());
    }
    assert!(node.allocations().is_empty());
}

#[test]
fn pods_reach_the_node_through_the_gateway() {
    if !require_root() {
        return;
    }
    let node = Node::new("10.50.2.0/24");
    let a = Netns::new("a");
    let b = Netns::new("b");
    assert!(node.add("a", &a, &node.conf("1.0.0")).0);
    assert!(node.add("b", &b, &node.conf("1.0.0")).0);
    // Same-node pod to pod through the node's routes (forwarding is enabled by ADD).
    let listener = b.command("python3").args(["-c", "import socket,sys\ns=socket.socket();s.bind(('0.0.0.0',7000));s.listen();print('up',flush=True);c,_=s.accept();c.sendall(b'hi');c.close()"]).stdout(std::process::Stdio::piped()).spawn().expect("server");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = a.run(
        "python3",
        &["-c", "import socket;s=socket.create_connection(('10.50.2.3',7000),timeout=3);print(s.recv(10).decode())"],
    );
    assert_eq!(out.trim(), "hi");
    let _ = listener.wait_with_output();
}

#[test]
fn del_is_idempotent_without_netns_and_prev_result() {
    if !require_root() {
        return;
    }
    let node = Node::new("10.50.3.0/24");
    let pod = Netns::new("pod");
    assert!(node.add("ctr", &pod, &node.conf("1.0.0")).0);
    // containerd's CRI: DEL on stop, then DEL again on remove with an empty netns.
    assert!(node.del("ctr", &pod.path()).0);
    assert!(node.del("ctr", "").0);
    assert!(node.del("never-added", "").0);
    assert!(node.ns.slc_links().is_empty());
    assert!(node.allocations().is_empty());
}

#[test]
fn hundred_concurrent_adds_then_dels_leave_nothing() {
    if !require_root() {
        return;
    }
    let node = Node::new("10.50.4.0/24");
    let pods: Vec<Netns> = (0..100).map(|_| Netns::new("p")).collect();
    let ips: BTreeSet<String> = std::thread::scope(|s| {
        let hs: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let node = &node;
                s.spawn(move || {
                    let (ok, r) = node.add(&format!("c{i}"), p, &node.conf("1.0.0"));
                    assert!(ok, "ADD {i}: {r}");
                    r["ips"][0]["address"].as_str().expect("ip").to_string()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    assert_eq!(ips.len(), 100, "100 distinct addresses");
    assert_eq!(node.allocations().len(), 100);
    assert_eq!(node.ns.slc_links().len(), 100);
    std::thread::scope(|s| {
        for (i, p) in pods.iter().enumerate() {
            let node = &node;
            s.spawn(move || assert!(node.del(&format!("c{i}"), &p.path()).0));
        }
    });
    assert!(node.allocations().is_empty(), "{:?}", node.allocations());
    assert!(node.ns.slc_links().is_empty());
    drop(pods);
}

/// Every error case: the right code, a message naming the bad value, nothing left behind.
#[test]
fn error_cases_have_codes_and_leave_nothing() {
    if !require_root() {
        return;
    }
    let node = Node::new("10.50.5.0/30"); // exactly one pod address: .2
    let pod = Netns::new("pod");
    let p = pod.path();
    let base = [("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "e1"), ("CNI_NETNS", p.as_str()), ("CNI_IFNAME", "eth0")];
    let conf = node.conf("1.0.0").to_string();
    // (what, environment, stdin, expected code, text the message must contain)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, String, u64, &'a str);
    let cases: Vec<Case> = vec![
        ("malformed JSON", base.to_vec(), "{\"cniVersion\": ".into(), 6, "not valid JSON"),
        (
            "missing CNI_NETNS",
            base.iter().copied().filter(|(k, _)| *k != "CNI_NETNS").collect(),
            conf.clone(),
            4,
            "CNI_NETNS",
        ),
        ("missing CNI_COMMAND", base[1..].to_vec(), conf.clone(), 4, "CNI_COMMAND"),
        (
            "invalid CNI_IFNAME",
            vec![base[0], base[1], base[2], ("CNI_IFNAME", "much-too-long-ifname")],
            conf.clone(),
            4,
            "much-too-long-ifname",
        ),
        ("invalid CNI_COMMAND", vec![("CNI_COMMAND", "ATTACH"), base[1], base[2], base[3]], conf.clone(), 4, "ATTACH"),
        (
            "unsupported version",
            base.to_vec(),
            json!({"cniVersion": "0.2.0", "name": "t", "subnet": "10.50.5.0/30"}).to_string(),
            1,
            "0.2.0",
        ),
        (
            "bad CIDR",
            base.to_vec(),
            json!({"cniVersion": "1.0.0", "name": "t", "subnet": "10.50.5.0/40", "dataDir": node.data.path()})
                .to_string(),
            7,
            "10.50.5.0/40",
        ),
        (
            "unknown netns",
            vec![base[0], base[1], ("CNI_NETNS", "/run/netns/sluice-no-such-ns"), base[3]],
            conf.clone(),
            3,
            "sluice-no-such-ns",
        ),
        (
            "netns path is not a netns",
            vec![base[0], base[1], ("CNI_NETNS", "/etc/hostname"), base[3]],
            conf.clone(),
            3,
            "/etc/hostname",
        ),
    ];
    for (what, env, stdin, want, needle) in cases {
        let (ok, out) = node.call(&env, &stdin);
        assert!(!ok, "{what}: expected failure");
        assert_eq!(code(&out), want, "{what}: {out}");
        assert!(out["msg"].as_str().unwrap_or_default().contains(needle), "{what}: msg should name {needle:?}: {out}");
        assert!(node.ns.slc_links().is_empty(), "{what}: veth left behind");
        assert!(node.allocations().is_empty(), "{what}: allocation left behind");
    }

    // Exhausted pool: the second pod finds no address; the first keeps its own.
    assert!(node.add("first", &pod, &node.conf("1.0.0")).0);
    let pod2 = Netns::new("pod2");
    let (ok, out) = node.add("second", &pod2, &node.conf("1.0.0"));
    assert!(!ok);
    assert_eq!(code(&out), 100, "{out}");
    assert!(out["msg"].as_str().unwrap_or_default().contains("10.50.5.0/30"), "{out}");
    assert_eq!(node.allocations(), ["10.50.5.2"]);
    assert_eq!(node.ns.slc_links().len(), 1);
    assert!(pod2.run("ip", &["-o", "link"]).lines().all(|l| !l.contains("eth0")), "no half-made interface in pod2");

    // STATUS reports the exhaustion as "plugin not available".
    let (ok, out) = node.call(&[("CNI_COMMAND", "STATUS")], &node.conf("1.1.0").to_string());
    assert!(!ok);
    assert_eq!(code(&out), 50, "{out}");
    assert!(node.del("first", &pod.path()).0);
    let (ok, _) = node.call(&[("CNI_COMMAND", "STATUS")], &node.conf("1.1.0").to_string());
    assert!(ok);
}

#[test]
fn interface_name_taken_in_pod_rolls_back() {
    if !require_root() {
        return;
    }
    let node = Node::new("10.50.6.0/24");
    let pod = Netns::new("pod");
    // Something already owns eth0 in the pod: creation must fail and leave nothing.
    pod.run("ip", &["link", "add", "eth0", "type", "veth", "peer", "name", "other"]);
    let (ok, out) = node.add("x", &pod, &node.conf("1.0.0"));
    assert!(!ok);
    assert_eq!(code(&out), 5, "{out}");
    assert!(out["msg"].as_str().unwrap_or_default().contains("already exists"), "{out}");
    assert!(node.ns.slc_links().is_empty());
    assert!(node.allocations().is_empty());
}

#[test]
fn crash_mid_add_is_reclaimed_by_next_add_and_gc() {
    if !require_root() {
        return;
    }
    let node = Node::new("10.50.7.0/30"); // one address
    // A plugin that died after reserving: pending record owned by a dead PID.
    std::fs::create_dir_all(node.store_dir()).expect("dir");
    let rec = json!({"ip": "10.50.7.2", "container_id": "dead", "ifname": "eth0", "state": "pending", "pid": 4_000_000, "created_unix": 1});
    std::fs::write(node.store_dir().join("10.50.7.2"), rec.to_string()).expect("write");
    let pod = Netns::new("pod");
    let (ok, out) = node.add("alive", &pod, &node.conf("1.0.0"));
    assert!(ok, "the next ADD reclaims the leaked address: {out}");
    assert_eq!(out["ips"][0]["address"], "10.50.7.2/32");

    // GC with an empty valid list frees it and removes the veth.
    let mut gc = node.conf("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([]);
    let (ok, out) = node.call(&[("CNI_COMMAND", "GC")], &gc.to_string());
    assert!(ok, "GC: {out}");
    assert!(node.allocations().is_empty());
    assert!(node.ns.slc_links().is_empty());
}

/// A real plugin process SIGKILLed at every point of ADD (delays from 0 to 20 ms, ADD takes a
/// few): whatever it left, the DEL of that container removes (record, host veth, pod end).
#[test]
fn a_plugin_killed_anywhere_in_add_leaves_nothing_del_does_not_remove() {
    if !require_root() {
        return;
    }
    let node = Node::new("10.50.8.0/24");
    let pod = Netns::new("pod");
    let conf = node.conf("1.0.0");
    let mut killed_mid_add = 0;
    for i in 0..40u64 {
        let id = format!("kill{i}");
        let mut child = node.spawn_add(&id, &pod, &conf);
        std::thread::sleep(std::time::Duration::from_micros(i * 500));
        let _ = child.kill(); // our own child, by its handle
        let status = child.wait().expect("wait");
        if !status.success() {
            killed_mid_add += 1;
        }
        let (ok, out) = node.del(&id, &pod.path());
        assert!(ok, "DEL after a kill at {} us: {out}", i * 500);
        assert!(node.allocations().is_empty(), "record left after kill at {} us + DEL", i * 500);
        assert!(node.ns.slc_links().is_empty(), "host veth left after kill at {} us + DEL", i * 500);
        assert!(!pod.run("ip", &["-o", "link", "show"]).contains("eth0"), "pod end left at {} us", i * 500);
    }
    assert!(killed_mid_add > 0, "no kill landed before ADD finished: the delays do not cover ADD");
}

#[test]
fn gc_keeps_valid_attachments() {
    if !require_root() {
        return;
    }
    let node = Node::new("10.50.8.0/24");
    let (a, b) = (Netns::new("a"), Netns::new("b"));
    assert!(node.add("keep", &a, &node.conf("1.1.0")).0);
    assert!(node.add("drop", &b, &node.conf("1.1.0")).0);
    let mut gc = node.conf("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    assert!(node.call(&[("CNI_COMMAND", "GC")], &gc.to_string()).0);
    assert_eq!(node.allocations().len(), 1);
    assert_eq!(node.ns.slc_links().len(), 1);
    assert!(node.del("keep", &a.path()).0);
}

#[test]
fn version_lists_all_supported() {
    if !require_root() {
        return;
    }
    let node = Node::new("10.50.9.0/24");
    let (ok, out) = node.call(&[("CNI_COMMAND", "VERSION")], "{\"cniVersion\":\"1.0.0\"}");
    assert!(ok);
    assert_eq!(out["supportedVersions"], json!(["0.3.1", "0.4.0", "1.0.0", "1.1.0"]));
}

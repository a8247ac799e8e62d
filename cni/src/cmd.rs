//! The CNI verbs. Each either completes or undoes what it did: no half-made interface and no
//! allocation is left behind by a failed ADD.

use serde_json::Value;

use crate::error::CniError;
use crate::ipam::{Allocation, Request, Store};
use crate::netns::{open_netns, with_netlink_here, with_netlink_in};
use crate::plumbing::{self, host_veth_name};
use crate::spec::{self, Attached, Command, Env, NetConf};

/// Run one invocation. `Ok(None)` means success with no output (DEL, GC, STATUS).
pub fn run(env: &Env, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    if env.command == Command::Version {
        return Ok(Some(version(stdin)));
    }
    let conf = NetConf::validate(spec::decode(stdin)?)?;
    let store = Store::new(&conf.data_dir, &conf.name, conf.subnet, conf.gateway);
    match env.command {
        Command::Add => add(env, &conf, &store).map(Some),
        Command::Del => del(env, &conf, &store).map(|_| None),
        Command::Check => check(env, &conf, &store).map(|_| None),
        Command::Gc => gc(&conf, &store).map(|_| None),
        Command::Status => status(&conf, &store).map(|_| None),
        Command::Version => Ok(Some(version(stdin))),
    }
}

/// VERSION may come with or without a config; only its cniVersion matters.
fn version(stdin: &[u8]) -> Value {
    let requested = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(Value::as_str).map(str::to_string));
    spec::render_version(requested.as_deref())
}

fn add(env: &Env, conf: &NetConf, store: &Store) -> Result<Value, CniError> {
    let netns_path = env.netns.clone().ok_or(CniError::MissingEnv { var: "CNI_NETNS", command: "ADD".into() })?;
    // Validate the netns before reserving anything, so a bad netns leaves no trace.
    let ns = open_netns(&netns_path)?;
    let req = Request {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        pod_namespace: env.pod_namespace().map(str::to_string),
        pod_name: env.pod_name().map(str::to_string),
        netns: Some(netns_path.display().to_string()),
    };
    // The lock is held only while choosing: the record is `pending` (with our PID) while we
    // plumb, so concurrent ADDs proceed in parallel and a crash here is reclaimed later.
    let alloc = store.lock()?.allocate(&req)?;
    let host = host_veth_name(&env.container_id, &env.ifname);
    match plumb(env, conf, &ns, &host, &alloc) {
        Ok(attached) => {
            store.lock()?.commit(alloc, &host)?;
            notify_agent(conf);
            Ok(spec::render_result(&conf.cni_version, &attached))
        }
        Err(e) => {
            // Undo in reverse order; report the original error, not a rollback hiccup.
            let _ = with_netlink_here(|h| async move { plumbing::delete_link(&h, &host).await });
            if let Ok(l) = store.lock() {
                let _ = l.release(&env.container_id, &env.ifname);
            }
            Err(e)
        }
    }
}

fn plumb(env: &Env, conf: &NetConf, ns: &std::fs::File, host: &str, alloc: &Allocation) -> Result<Attached, CniError> {
    let (ip, gw, mtu) = (alloc.ip, conf.gateway, conf.mtu);
    let host_mac = with_netlink_here(|h| async move {
        // A leftover from an earlier, interrupted ADD of this attachment would block creation.
        plumbing::delete_link(&h, host).await?;
        plumbing::create_veth(&h, host, &env.ifname, ns, mtu).await?;
        plumbing::configure_host(&h, host, ip, gw).await
    })?;
    let netns_path = env.netns.clone().unwrap_or_default();
    let ifname = env.ifname.clone();
    let mac =
        with_netlink_in(&netns_path, |h| async move { plumbing::configure_container(&h, &ifname, ip, gw).await })?;
    Ok(Attached {
        host_ifname: host.to_string(),
        host_mac,
        ifname: env.ifname.clone(),
        mac,
        sandbox: netns_path.display().to_string(),
        ip,
        gateway: gw,
    })
}

/// Tell the node's agent that endpoints changed, so it reconciles now rather than at its next
/// poll. Best effort and bounded: the agent may be down (it rescans the IPAM store on start).
fn notify_agent(conf: &NetConf) {
    use std::io::Write;
    if let Ok(mut s) = std::os::unix::net::UnixStream::connect(&conf.agent_socket) {
        let _ = s.set_write_timeout(Some(std::time::Duration::from_millis(100)));
        let _ = s.write_all(b"{\"op\":\"endpoints-changed\"}\n");
    }
}

fn del(env: &Env, conf: &NetConf, store: &Store) -> Result<(), CniError> {
    // Remove the interface first so the address is never reused while still configured.
    // Deleting the host end removes the pod end too, so the netns is not needed.
    let host = host_veth_name(&env.container_id, &env.ifname);
    with_netlink_here(|h| async move { plumbing::delete_link(&h, &host).await })?;
    if !store.lock()?.release(&env.container_id, &env.ifname)?.is_empty() {
        notify_agent(conf);
    }
    Ok(())
}

fn check(env: &Env, conf: &NetConf, store: &Store) -> Result<(), CniError> {
    let fail = |problem: String| CniError::CheckFailed {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        problem,
    };
    let prev = conf.prev_result.as_ref().ok_or_else(|| CniError::InvalidConfig {
        field: "prevResult".into(),
        value: "(absent)".into(),
        accepted: "the result of the ADD being checked".into(),
    })?;
    let alloc = store
        .lock()?
        .find(&env.container_id, &env.ifname)?
        .ok_or_else(|| fail("no address is allocated to this attachment".into()))?;
    match spec::prev_result_ip(prev) {
        Some(ip) if ip == alloc.ip => {}
        other => {
            return Err(fail(format!("prevResult reports {other:?} but {} is allocated", alloc.ip)));
        }
    }
    let host = host_veth_name(&env.container_id, &env.ifname);
    let host_ok = with_netlink_here(|h| async move { Ok(plumbing::get_link(&h, &host).await?.is_some()) })?;
    if !host_ok {
        return Err(fail(format!("host interface {} is missing", host_veth_name(&env.container_id, &env.ifname))));
    }
    let netns = env.netns.clone().unwrap_or_default();
    let ifname = env.ifname.clone();
    let (ip, gw) = (alloc.ip, conf.gateway);
    if let Some(problem) =
        with_netlink_in(&netns, |h| async move { plumbing::check_container(&h, &ifname, ip, gw).await })?
    {
        return Err(fail(problem));
    }
    Ok(())
}

fn gc(conf: &NetConf, store: &Store) -> Result<(), CniError> {
    let valid = conf.valid_attachments.clone().unwrap_or_default();
    let lock = store.lock()?;
    let freed = lock.gc(&valid)?;
    // Host veths of every remaining record (pending ones included: an ADD may be in flight).
    let keep: std::collections::BTreeSet<String> =
        lock.list()?.iter().map(|a| host_veth_name(&a.container_id, &a.ifname)).collect();
    drop(lock);
    let mut doomed: Vec<String> = freed.iter().map(|a| host_veth_name(&a.container_id, &a.ifname)).collect();
    doomed.retain(|n| !keep.contains(n));
    with_netlink_here(|h| async move {
        for name in &doomed {
            plumbing::delete_link(&h, name).await?;
        }
        Ok(())
    })
}

fn status(conf: &NetConf, store: &Store) -> Result<(), CniError> {
    let free = store.lock()?.free_count()?;
    if free == 0 {
        return Err(CniError::Unavailable {
            reason: format!("no free address in {} (network {})", conf.subnet, conf.name),
        });
    }
    Ok(())
}

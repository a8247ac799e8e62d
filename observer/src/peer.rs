//! Hubble's `peer.Peer/Notify`: how a relay (sluice's or Hubble's own) discovers the nodes'
//! Observers. A stream starts with one PEER_ADDED per known node, then follows changes
//! (added, deleted, address updated) as the agent learns them from its source.

use std::collections::BTreeMap;
use std::pin::Pin;

use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::pb::peer::peer_server::{Peer, PeerServer};
use crate::pb::peer::{ChangeNotification, ChangeNotificationType, NotifyRequest};

/// Node name -> `host:port` of its Observer.
pub type PeerMap = BTreeMap<String, String>;

/// The notifications that turn `old` into `new`, in name order.
pub fn changes(old: &PeerMap, new: &PeerMap) -> Vec<ChangeNotification> {
    let note = |name: &str, address: &str, t: ChangeNotificationType| ChangeNotification {
        name: name.into(),
        address: address.into(),
        r#type: t as i32,
        tls: None,
    };
    let mut out = Vec::new();
    for (name, addr) in old {
        if !new.contains_key(name) {
            out.push(note(name, addr, ChangeNotificationType::PeerDeleted));
        }
    }
    for (name, addr) in new {
        match old.get(name) {
            None => out.push(note(name, addr, ChangeNotificationType::PeerAdded)),
            Some(a) if a != addr => out.push(note(name, addr, ChangeNotificationType::PeerUpdated)),
            Some(_) => {}
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

pub struct PeerService {
    peers: watch::Receiver<PeerMap>,
}

impl PeerService {
    pub fn server(peers: watch::Receiver<PeerMap>) -> PeerServer<Self> {
        PeerServer::new(PeerService { peers })
    }
}

type NotifyStream = Pin<Box<dyn Stream<Item = Result<ChangeNotification, Status>> + Send>>;

#[tonic::async_trait]
impl Peer for PeerService {
    type NotifyStream = NotifyStream;

    async fn notify(&self, _: Request<NotifyRequest>) -> Result<Response<Self::NotifyStream>, Status> {
        let mut rx = self.peers.clone();
        let (tx, out) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut sent = PeerMap::new();
            loop {
                let now = rx.borrow_and_update().clone();
                for n in changes(&sent, &now) {
                    if tx.send(Ok(n)).await.is_err() {
                        return;
                    }
                }
                sent = now;
                tokio::select! {
                    r = rx.changed() => if r.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(e: &[(&str, &str)]) -> PeerMap {
        e.iter().map(|(n, a)| (n.to_string(), a.to_string())).collect()
    }

    #[test]
    fn changes_add_delete_update_in_name_order() {
        let old = map(&[("a", "10.0.0.1:4244"), ("b", "10.0.0.2:4244")]);
        let new = map(&[("b", "10.0.0.9:4244"), ("c", "10.0.0.3:4244")]);
        let got: Vec<(String, i32)> = changes(&old, &new).into_iter().map(|c| (c.name, c.r#type)).collect();
        assert_eq!(
            got,
            vec![
                ("a".into(), ChangeNotificationType::PeerDeleted as i32),
                ("b".into(), ChangeNotificationType::PeerUpdated as i32),
                ("c".into(), ChangeNotificationType::PeerAdded as i32),
            ]
        );
        assert!(changes(&new, &new).is_empty());
    }
}

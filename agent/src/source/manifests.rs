//! The standalone source: a directory of Kubernetes YAML or JSON, as a cluster would serve it.
//! Read whole on every poll; a file that fails to parse is reported with its path and the
//! previous good content of that file is kept, so one bad edit never empties the cluster.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use sluice_core::validate::{Problem, Rejected, escape};

use super::Objects;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    pub path: PathBuf,
    pub message: String,
}

/// YAML limits for manifest files: a cluster's worth of objects in one file is legitimate
/// (10k Services and their EndpointSlices are ~20k documents), so the document, node and event
/// budgets are raised; the alias and nesting limits that stop YAML bombs stay as they are.
pub fn yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_documents = 1_000_000;
    budget.max_nodes = 100_000_000;
    budget.max_events = 200_000_000;
    let mut o = serde_saphyr::Options::default();
    o.budget = Some(budget);
    o
}

/// Parse one file's documents into JSON values (multi-document YAML, JSON, and `kind: List`).
pub fn parse_documents(path: &Path, text: &str) -> Result<Vec<Value>, String> {
    let docs: Vec<Value> = if path.extension().is_some_and(|e| e == "json") {
        vec![serde_json::from_str(text).map_err(|e| e.to_string())?]
    } else {
        serde_saphyr::from_multiple_with_options(text, yaml_options()).map_err(|e| e.to_string())?
    };
    let mut out = Vec::new();
    for d in docs {
        if d.is_null() {
            continue;
        }
        if d.get("kind").and_then(Value::as_str).is_some_and(|k| k.ends_with("List")) {
            out.extend(d.get("items").and_then(Value::as_array).cloned().unwrap_or_default());
        } else {
            out.push(d);
        }
    }
    Ok(out)
}

/// Sort documents into typed objects. Kinds sluice does not use are ignored; a document that
/// is not a Kubernetes object, or a known kind that does not decode, is refused by name and the
/// rest of the file is still read (one bad object never hides its neighbours).
pub fn classify(docs: Vec<Value>, into: &mut Objects) {
    for d in docs {
        let kind = d.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
        let name = d.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("<unnamed>").to_string();
        let ns = d.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default").to_string();
        let is_object = d.is_object() && !kind.is_empty() && d.get("apiVersion").is_some_and(Value::is_string);
        let object = match kind.as_str() {
            "Node" | "Namespace" | "SluiceClusterwideNetworkPolicy" => format!("{kind} {}", escape(&name)),
            "" => "document".into(),
            k => format!("{} {}/{}", escape(k), escape(&ns), escape(&name)),
        };
        if !is_object || d.pointer("/metadata/name").is_none_or(|n| !n.is_string()) {
            let shown: String = d.to_string().chars().take(80).collect();
            into.rejected.push(Rejected::new(object, "apiVersion/kind/metadata.name", shown, Problem::NotAnObject));
            continue;
        }
        let decoded = match kind.as_str() {
            "Node" => serde_json::from_value(d).map(|o| into.nodes.push(std::sync::Arc::new(o))),
            "Pod" => serde_json::from_value(d).map(|o| into.pods.push(std::sync::Arc::new(o))),
            "Service" => serde_json::from_value(d).map(|o| into.services.push(std::sync::Arc::new(o))),
            "EndpointSlice" => serde_json::from_value(d).map(|o| into.endpoint_slices.push(std::sync::Arc::new(o))),
            "Namespace" => serde_json::from_value(d).map(|o| into.namespaces.push(std::sync::Arc::new(o))),
            "NetworkPolicy" => serde_json::from_value(d).map(|o| into.network_policies.push(std::sync::Arc::new(o))),
            "SluiceNetworkPolicy" | "SluiceClusterwideNetworkPolicy" => {
                serde_json::from_value(d).map(|o| into.sluice_policies.push(std::sync::Arc::new(o)))
            }
            _ => Ok(()),
        };
        if let Err(e) = decoded {
            into.rejected.push(Rejected::new(object, "(object)", kind, Problem::Decode { detail: e.to_string() }));
        }
    }
}

/// Re-reads a manifest directory, remembering the last good parse of each file.
#[derive(Debug, Default)]
pub struct ManifestDir {
    dir: PathBuf,
    /// Last good parse of each file, with the (mtime, size) it was read at: unchanged files are
    /// not read again (at 10k Services, re-parsing every poll would keep a core busy).
    good: BTreeMap<PathBuf, (Stamp, Objects)>,
    bad: BTreeMap<PathBuf, (Stamp, String)>,
    /// Bumped whenever what the files say changes: lets the agent skip re-translating.
    generation: u64,
}

type Stamp = Option<(std::time::SystemTime, u64)>;

fn stamp(p: &Path) -> Stamp {
    std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len())))
}

/// How long an emptied file is taken as being rewritten rather than emptied.
const EMPTY_SETTLE: std::time::Duration = std::time::Duration::from_secs(1);

/// A file rewritten in place (`open` with truncate, then `write`) is empty between the two; a
/// read there would drop every object it held for one pass (a node losing its labels, Services
/// their frontends). An empty file younger than [`EMPTY_SETTLE`] is that moment: its last good
/// content stands until the write lands (a wake-up) or the file stays empty that long (the poll).
fn being_rewritten(st: Stamp, now: std::time::SystemTime) -> bool {
    st.is_some_and(|(mtime, len)| len == 0 && now.duration_since(mtime).is_ok_and(|age| age < EMPTY_SETTLE))
}

/// Services without `metadata.creationTimestamp` get their file's birth time, as the API server
/// would stamp them on create: conflicts are decided oldest first, and without a time every
/// node would fall back on its own history (which Service it served first) and nodes that
/// started at different times could pick different winners. Every node reading the shared
/// directory sees the same birth time, and an edit in place keeps it (the modification time
/// would make an edited winner lose to a newcomer). Filesystems without birth times keep the
/// old order (served first, then name).
fn stand_in_creation_time(f: &Path, objs: &mut Objects) {
    let born = std::fs::metadata(f)
        .and_then(|m| m.created())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| k8s_openapi::jiff::Timestamp::from_second(d.as_secs() as i64).ok());
    let Some(born) = born else { return };
    for s in objs.services.iter_mut().filter(|s| s.metadata.creation_timestamp.is_none()) {
        std::sync::Arc::make_mut(s).metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(born));
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json") {
            out.push(p);
        }
    }
}

impl ManifestDir {
    pub fn new(dir: PathBuf) -> Self {
        ManifestDir { dir, good: BTreeMap::new(), bad: BTreeMap::new(), generation: 0 }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Read everything; returns the objects and the per-file errors. A missing directory is
    /// an error (the source is not in sync), never an empty cluster.
    #[cfg(test)]
    pub fn read(&mut self) -> (Option<Objects>, Vec<FileError>) {
        match self.scan() {
            (true, errors) => (Some(self.objects()), errors),
            (false, errors) => (None, errors),
        }
    }

    /// Re-read changed files (bumping the generation when anything changed); returns whether the
    /// directory is readable at all, and the per-file errors. Builds no objects.
    pub fn scan(&mut self) -> (bool, Vec<FileError>) {
        if !self.dir.is_dir() {
            let e = FileError { path: self.dir.clone(), message: "manifest directory does not exist".into() };
            return (false, vec![e]);
        }
        let mut files = Vec::new();
        walk(&self.dir, &mut files);
        files.sort();
        let mut errors = Vec::new();
        let before = (self.good.len(), self.bad.len());
        self.good.retain(|p, _| files.contains(p));
        self.bad.retain(|p, _| files.contains(p));
        if before != (self.good.len(), self.bad.len()) {
            self.generation += 1;
        }
        let now = std::time::SystemTime::now();
        for f in &files {
            let st = stamp(f);
            if st.is_some() && self.good.get(f).is_some_and(|(s, _)| *s == st) {
                continue;
            }
            if self.good.contains_key(f) && being_rewritten(st, now) {
                continue;
            }
            if let Some((_, message)) = self.bad.get(f).filter(|(s, _)| st.is_some() && *s == st) {
                errors.push(FileError { path: f.clone(), message: message.clone() });
                continue;
            }
            let mut objs = Objects::default();
            let parsed = std::fs::read_to_string(f)
                .map_err(|e| e.to_string())
                .and_then(|t| parse_documents(f, &t))
                .map(|docs| classify(docs, &mut objs));
            stand_in_creation_time(f, &mut objs);
            self.generation += 1;
            match parsed {
                Ok(()) => {
                    self.bad.remove(f);
                    self.good.insert(f.clone(), (st, objs));
                }
                Err(message) => {
                    self.bad.insert(f.clone(), (st, message.clone()));
                    errors.push(FileError { path: f.clone(), message });
                }
            }
        }
        (true, errors)
    }

    /// Every object of the last good read of every file.
    pub fn objects(&self) -> Objects {
        let mut objects = Objects::default();
        for (_, o) in self.good.values() {
            objects.nodes.extend(o.nodes.iter().cloned());
            objects.pods.extend(o.pods.iter().cloned());
            objects.services.extend(o.services.iter().cloned());
            objects.endpoint_slices.extend(o.endpoint_slices.iter().cloned());
            objects.namespaces.extend(o.namespaces.iter().cloned());
            objects.network_policies.extend(o.network_policies.iter().cloned());
            objects.sluice_policies.extend(o.sluice_policies.iter().cloned());
            objects.rejected.extend(o.rejected.iter().cloned());
        }
        objects
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-place rewrite seen between its truncate and its write keeps the file's objects;
    /// a file that stays empty is read as empty.
    #[test]
    fn a_file_caught_mid_rewrite_keeps_its_objects() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("n.yaml");
        std::fs::write(&f, "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n").expect("write");
        let mut m = ManifestDir::new(dir.path().to_path_buf());
        assert_eq!(m.read().0.expect("objects").nodes.len(), 1);
        let g = m.generation();
        std::fs::File::create(&f).expect("truncate");
        assert_eq!(m.read().0.expect("objects").nodes.len(), 1, "emptied a moment ago: being rewritten");
        assert_eq!(m.generation(), g);
        let old = std::time::SystemTime::now() - EMPTY_SETTLE - std::time::Duration::from_secs(1);
        std::fs::File::options().write(true).open(&f).and_then(|h| h.set_modified(old)).expect("age");
        assert!(m.read().0.expect("objects").nodes.is_empty(), "empty for longer: empty");
    }

    #[test]
    fn multi_doc_yaml_and_lists() {
        let text = "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: p, namespace: default}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: ignored}\n";
        let docs = parse_documents(Path::new("x.yaml"), text).expect("parse");
        assert_eq!(docs.len(), 3);
        let mut o = Objects::default();
        classify(docs, &mut o);
        assert_eq!((o.nodes.len(), o.pods.len()), (1, 1));
        assert!(o.rejected.is_empty());
    }

    /// A Service without a creation time takes its file's birth time, the same for every
    /// reader and kept across an edit in place; an explicit one is kept.
    #[test]
    fn services_without_a_creation_time_take_their_files_birth_time() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("s.yaml");
        let doc = |port: u16| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: a, namespace: default}}\nspec: {{ports: [{{port: {port}}}]}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: b, namespace: default, creationTimestamp: \"2020-01-02T03:04:05Z\"}}\nspec: {{ports: [{{port: 80}}]}}\n"
            )
        };
        std::fs::write(&f, doc(80)).expect("write");
        let Ok(born) = std::fs::metadata(&f).and_then(|m| m.created()) else {
            return; // this filesystem keeps no birth times: nothing to stand in with
        };
        let secs = born.duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs() as i64;
        let times = |m: &mut ManifestDir| -> Vec<i64> {
            let o = m.read().0.expect("objects");
            o.services.iter().map(|s| s.metadata.creation_timestamp.as_ref().expect("stamped").0.as_second()).collect()
        };
        let (mut one, mut two) = (ManifestDir::new(dir.path().into()), ManifestDir::new(dir.path().into()));
        assert_eq!(times(&mut one), [secs, 1577934245]);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        // Edited in place (same file, new content): the same time, for a reader that saw it
        // before and for one that did not.
        std::fs::write(&f, doc(81)).expect("write");
        assert_eq!(times(&mut one), [secs, 1577934245]);
        assert_eq!(times(&mut two), [secs, 1577934245]);
    }

    #[test]
    fn bad_file_keeps_previous_content() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("n.yaml");
        std::fs::write(&f, "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n").expect("write");
        let mut m = ManifestDir::new(dir.path().into());
        let (o, e) = m.read();
        assert!(e.is_empty());
        assert_eq!(o.expect("objects").nodes.len(), 1);
        std::fs::write(&f, "kind: Node\nmetadata: [broken").expect("write");
        let (o, e) = m.read();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].path, f);
        assert_eq!(o.expect("objects").nodes.len(), 1, "last good content kept");
        std::fs::write(&f, "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: notanumber}]}\n")
            .expect("write");
        let (o, e) = m.read();
        assert!(e.is_empty(), "a file that parses is good; its bad object is refused alone");
        let o = o.expect("objects");
        assert!(o.services.is_empty());
        assert_eq!(o.rejected.len(), 1);
        assert!(o.rejected[0].to_string().starts_with("Service default/s: "), "{}", o.rejected[0]);
    }

    #[test]
    fn missing_dir_is_not_empty_cluster() {
        let mut m = ManifestDir::new("/nonexistent/sluice-test".into());
        let (o, e) = m.read();
        assert!(o.is_none());
        assert_eq!(e.len(), 1);
    }
}

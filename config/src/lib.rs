//! sluice-config: the agent's configuration.
//!
//! Sources, later ones winning: built-in defaults, the config file (YAML, or TOML by its
//! `.toml` extension), `SLUICE_*` environment variables (`__` separates nested keys, e.g.
//! `SLUICE_CNI__DATA_DIR`), then command-line flags. Unknown keys are errors, and every
//! validation error names the key, the bad value and what is accepted.

mod schema;

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
pub use schema::*;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("config key `{key}` = {value:?}{} is invalid: expected {accepted}", origin_text(.origin))]
    Invalid {
        key: String,
        value: String,
        accepted: String,
        /// Where the value came from (the file, an environment variable, a flag); `None` for
        /// defaults and combinations of keys.
        origin: Option<String>,
    },
}

fn origin_text(o: &Option<String>) -> String {
    o.as_ref().map(|o| format!(" (from {o})")).unwrap_or_default()
}

/// Environment variables with the `SLUICE_` prefix that are not configuration keys.
const NON_CONFIG_ENV: &[&str] = &["LOG", "CONFIG", "LAB", "LAB_DIR", "BIN_DIR", "SKIP_PRIVILEGED"];

/// Load and validate: defaults <- file <- env <- `overrides` (flags, as a serializable value).
pub fn load(file: Option<&Path>, overrides: Option<serde_json::Value>) -> Result<Config, ConfigError> {
    load_with(file, overrides, true)
}

/// [`load`] for previewing a config (`sluice plan --config`): `node_name` may be absent,
/// since a plan depends on the kernel and the modes, not on the node's name.
pub fn load_for_planning(file: &Path) -> Result<Config, ConfigError> {
    load_with(Some(file), None, false)
}

/// A provider under a name of ours, so errors can say where a value came from.
struct Named<P> {
    inner: P,
    name: String,
}

impl<P: figment::Provider> figment::Provider for Named<P> {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(self.name.clone())
    }

    fn data(&self) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        self.inner.data()
    }
}

const FLAGS: &str = "command-line flags";
const DEFAULTS: &str = "built-in defaults";

/// Where a value came from, in words.
fn origin(m: &figment::Metadata, path: &[String]) -> Option<String> {
    match m.name.as_ref() {
        DEFAULTS => None,
        FLAGS => Some("a command-line flag".into()),
        n if n.contains("environment") => {
            Some(format!("environment variable SLUICE_{}", path.join("__").to_uppercase()))
        }
        n => Some(format!("config file {n}")),
    }
}

/// Whether `path` (dot-separated, lowercase) names a key of the config: walks the defaults.
fn is_config_key(defaults: &serde_json::Value, path: &str) -> bool {
    let mut cur = defaults;
    for seg in path.split('.') {
        match cur {
            serde_json::Value::Object(m) if m.contains_key(seg) => cur = &m[seg],
            // Maps with free keys (node_configs) and lists: the value decides.
            serde_json::Value::Object(m) if m.is_empty() => return true,
            serde_json::Value::Null | serde_json::Value::Array(_) => return true,
            _ => return false,
        }
        if seg == "node_configs" {
            return true;
        }
    }
    true
}

fn env_key(k: &str) -> String {
    k.to_ascii_lowercase().replace("__", ".")
}

fn load_with(
    file: Option<&Path>,
    overrides: Option<serde_json::Value>,
    require_node_name: bool,
) -> Result<Config, ConfigError> {
    let defaults = serde_json::to_value(Config::default()).unwrap_or_default();
    let mut fig = Figment::from(Named { inner: Serialized::defaults(Config::default()), name: DEFAULTS.into() });
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let name = path.display().to_string();
        fig = if path.extension().is_some_and(|e| e == "toml") {
            fig.merge(Named { inner: Toml::string(&text), name })
        } else {
            fig.merge(Named { inner: serde_saphyr::figment::Yaml::string(&text), name })
        };
    }
    // Unknown SLUICE_* variables (a typo, another tool's) are warned about, not fatal: an
    // agent must not refuse to start over its environment.
    let mut warnings = Vec::new();
    for (k, _) in std::env::vars() {
        let Some(rest) = k.strip_prefix("SLUICE_") else { continue };
        if !NON_CONFIG_ENV.iter().any(|n| rest.eq_ignore_ascii_case(n)) && !is_config_key(&defaults, &env_key(rest)) {
            warnings.push(format!(
                "environment variable {k} is not a configuration key; ignored (keys: docs/configuration.md)"
            ));
        }
    }
    fig = fig.merge(
        Env::prefixed("SLUICE_")
            .filter(move |k| {
                !NON_CONFIG_ENV.iter().any(|n| k.as_str().eq_ignore_ascii_case(n))
                    && is_config_key(&defaults, &env_key(k.as_str()))
            })
            .split("__"),
    );
    if let Some(o) = overrides {
        fig = fig.merge(Named { inner: Serialized::defaults(o), name: FLAGS.into() });
    }
    let mut cfg: Config =
        fig.extract().map_err(|e| ConfigError::Parse { origin: "configuration".into(), message: describe(e) })?;
    cfg.validate_with(require_node_name).map_err(|e| match e {
        ConfigError::Invalid { key, value, accepted, origin: None } => {
            let origin =
                fig.find_metadata(&key).and_then(|m| origin(m, &key.split('.').map(String::from).collect::<Vec<_>>()));
            ConfigError::Invalid { key, value, accepted, origin }
        }
        other => other,
    })?;
    cfg.warnings = warnings;
    Ok(cfg)
}

/// Parse a config from text only (used by `sluice plan --config` style checks and tests).
pub fn from_yaml_str(text: &str) -> Result<Config, ConfigError> {
    let cfg: Config = Figment::from(Serialized::defaults(Config::default()))
        .merge(serde_saphyr::figment::Yaml::string(text))
        .extract()
        .map_err(|e| ConfigError::Parse { origin: "config".into(), message: describe(e) })?;
    cfg.validate()?;
    Ok(cfg)
}

fn describe(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let from = e.metadata.as_ref().and_then(|m| origin(m, &e.path));
            let from = from.map(|o| format!(" (from {o})")).unwrap_or_default();
            if key.is_empty() { format!("{}{from}", e.kind) } else { format!("key `{key}`{from}: {}", e.kind) }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;

#[cfg(test)]
#[path = "fuzz_tests.rs"]
mod fuzz_tests;

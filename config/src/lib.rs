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
    #[error("config key `{key}` = {value:?} is invalid: expected {accepted}")]
    Invalid { key: String, value: String, accepted: String },
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

fn load_with(
    file: Option<&Path>,
    overrides: Option<serde_json::Value>,
    require_node_name: bool,
) -> Result<Config, ConfigError> {
    let mut fig = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        fig = if path.extension().is_some_and(|e| e == "toml") {
            fig.merge(Toml::string(&text))
        } else {
            fig.merge(serde_saphyr::figment::Yaml::string(&text))
        };
    }
    fig = fig.merge(
        Env::prefixed("SLUICE_")
            .split("__")
            .filter(|k| !NON_CONFIG_ENV.iter().any(|n| k.as_str().eq_ignore_ascii_case(n))),
    );
    if let Some(o) = overrides {
        fig = fig.merge(Serialized::defaults(o));
    }
    let origin = file.map(|p| p.display().to_string()).unwrap_or_else(|| "configuration".into());
    let cfg: Config = fig.extract().map_err(|e| ConfigError::Parse { origin: origin.clone(), message: describe(e) })?;
    cfg.validate_with(require_node_name)?;
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
            if key.is_empty() { e.kind.to_string() } else { format!("key `{key}`: {}", e.kind) }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;

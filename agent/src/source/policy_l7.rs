//! `toPorts[].rules` of the Sluice CRDs: `http` rules (Cilium's `PortRuleHTTP`) validated and
//! translated; other L7 kinds (`kafka`, `dns`, `l7proto`) and header-mismatch actions are
//! admitted but not enforced (they fail closed and are reported); anything else refuses the
//! policy by name.

use serde::Deserialize;
use serde_json::Value;
use sluice_core::policy::{HeaderMatch, HttpRule};

use super::*;

/// What a `rules` object asks for.
pub enum L7 {
    Http(Vec<HttpRule>),
    NotEnforced { field: String, detail: String },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HttpDoc {
    method: Option<String>,
    path: Option<String>,
    host: Option<String>,
    #[serde(default)]
    headers: Vec<String>,
    #[serde(default)]
    header_matches: Vec<HeaderMatchDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderMatchDoc {
    name: String,
    value: Option<String>,
    mismatch: Option<String>,
    secret: Option<Value>,
}

/// Cilium's header-mismatch actions: known, not enforced by sluice's proxy.
const MISMATCH_ACTIONS: &str = "LOG, ADD, DELETE, REPLACE";

fn decode<T: serde::de::DeserializeOwned>(o: &Obj, field: &str, v: &Value) -> Res<T> {
    serde_json::from_value(v.clone())
        .map_err(|e| o.err(field, v.to_string(), Problem::Decode { detail: e.to_string() }))
}

fn regex(o: &Obj, field: String, re: &Option<String>) -> Res<Option<String>> {
    if let Some(r) = re {
        HttpRule::check_regex(r).map_err(|e| o.err(field, r, Problem::Invalid { detail: e.to_string() }))?;
    }
    Ok(re.clone().filter(|r| !r.is_empty()))
}

fn header_name(o: &Obj, field: String, name: &str) -> Res<String> {
    HttpRule::check_header_name(name).map_err(|e| o.err(field, name, Problem::Invalid { detail: e.to_string() }))?;
    Ok(name.to_string())
}

pub fn rules(o: &Obj, field: &str, v: &Value, deny: bool) -> Res<L7> {
    let map = v.as_object().ok_or_else(|| {
        o.err(field, v.to_string(), Problem::Decode { detail: "rules is an object (http: [...])".into() })
    })?;
    if deny {
        return Err(o.err(
            field,
            v.to_string(),
            Problem::NotAllowed { allowed: "allow rules (ingress, egress); deny rules are L3/L4 only".into() },
        ));
    }
    let mut http = None;
    for (k, val) in map {
        match k.as_str() {
            "http" => http = Some(val),
            "kafka" | "dns" | "l7proto" | "l7" => {
                return Ok(L7::NotEnforced {
                    field: format!("{field}.{k}"),
                    detail: format!("{k} rules are not implemented; sluice enforces http rules"),
                });
            }
            _ => {
                return Err(o.err(
                    format!("{field}.{k}"),
                    k,
                    Problem::OneOf { accepted: "http (kafka, dns, l7proto: admitted, not enforced)".into() },
                ));
            }
        }
    }
    let Some(http) = http else { return Ok(L7::Http(vec![HttpRule::default()])) };
    let docs: Vec<HttpDoc> = decode(o, &format!("{field}.http"), http)?;
    let mut out = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        let f = format!("{field}.http[{i}]");
        let mut headers = Vec::new();
        for (j, h) in d.headers.iter().enumerate() {
            // `Name` (present) or `Name: value` (exactly that value), as Cilium's `headers`.
            let (name, value) = match h.split_once(':') {
                Some((n, v)) => (n.trim(), Some(v.trim().to_string())),
                None => (h.trim(), None),
            };
            headers.push(HeaderMatch { name: header_name(o, format!("{f}.headers[{j}]"), name)?, value });
        }
        for (j, m) in d.header_matches.iter().enumerate() {
            let mf = format!("{f}.headerMatches[{j}]");
            if let Some(action) = &m.mismatch {
                if !MISMATCH_ACTIONS.split(", ").any(|a| a == action) {
                    return Err(o.err(
                        format!("{mf}.mismatch"),
                        action,
                        Problem::OneOf { accepted: MISMATCH_ACTIONS.into() },
                    ));
                }
                return Ok(L7::NotEnforced {
                    field: format!("{mf}.mismatch"),
                    detail: format!("mismatch action {action} is not implemented"),
                });
            }
            if m.secret.is_some() {
                return Ok(L7::NotEnforced {
                    field: format!("{mf}.secret"),
                    detail: "header values from secrets are not implemented".into(),
                });
            }
            headers.push(HeaderMatch { name: header_name(o, format!("{mf}.name"), &m.name)?, value: m.value.clone() });
        }
        out.push(HttpRule {
            method: regex(o, format!("{f}.method"), &d.method)?,
            path: regex(o, format!("{f}.path"), &d.path)?,
            host: regex(o, format!("{f}.host"), &d.host)?,
            headers,
        });
    }
    if out.is_empty() {
        out.push(HttpRule::default()); // `http: []`: every request on the port
    }
    Ok(L7::Http(out))
}

use std::path::Path;

use crate::Output;
use crate::api::{Request, Response, call};

pub fn list(socket: &Path, out: Output) -> anyhow::Result<()> {
    match super::block_on(call(socket, &Request::Services))?? {
        Response::Services(list) => {
            match out {
                Output::Json => println!("{}", serde_json::to_string_pretty(&list)?),
                Output::Table => print!("{}", crate::services::render(&list)),
            }
            Ok(())
        }
        Response::Error(e) => anyhow::bail!("agent refused the request: {e}"),
        _ => anyhow::bail!("agent sent an unexpected answer"),
    }
}

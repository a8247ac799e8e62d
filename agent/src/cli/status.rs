use std::path::Path;

use crate::Output;
use crate::api::{Request, Response, call};

pub fn run(socket: &Path, out: Output) -> anyhow::Result<()> {
    match super::block_on(call(socket, &Request::Status))?? {
        Response::Status(s) => {
            match out {
                Output::Json => println!("{}", serde_json::to_string_pretty(&s)?),
                Output::Table => print!("{}", crate::status::render(&s)),
            }
            Ok(())
        }
        Response::Error(e) => anyhow::bail!("agent refused the request: {e}"),
        _ => anyhow::bail!("agent sent no status"),
    }
}

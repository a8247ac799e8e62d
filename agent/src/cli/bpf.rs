use std::path::Path;

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};

use crate::Output;
use crate::api::{Request, Response, call};

/// `sluice bpf lb list`: the eBPF service maps as the agent last wrote them.
pub fn lb_list(socket: &Path, out: Output) -> anyhow::Result<()> {
    let Response::BpfLb(list) = super::block_on(call(socket, &Request::BpfLb))?? else {
        anyhow::bail!("agent sent an unexpected answer");
    };
    if out == Output::Json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(["SERVICE ADDRESS", "BACKEND ADDRESS (REVNAT_ID) (SLOT)"]);
    for e in &list {
        let mut lines = vec![format!(
            "0.0.0.0:0 ({}) (0) [{} backends{}; {}]",
            e.service_id,
            e.backend_count,
            if e.affinity_s > 0 { format!(", affinity {}s", e.affinity_s) } else { String::new() },
            e.serves.join(", ")
        )];
        lines.extend(e.backends.iter().map(|(slot, b)| format!("{b} ({}) ({slot})", e.service_id)));
        t.add_row([e.frontend.clone(), lines.join("\n")]);
    }
    println!("{t}");
    if list.is_empty() {
        println!("(no eBPF service entries: no feature is given to eBPF on this node, see `sluice plan`)");
    }
    Ok(())
}

use std::path::Path;

use anyhow::bail;
use serde_json::json;
use sluice_core::plan::transition;
use sluice_core::{Plan, Step};

use crate::Output;
use crate::api::{Request, Response, call};

fn agent_plan(socket: &Path) -> anyhow::Result<Plan> {
    match super::block_on(call(socket, &Request::Status))?? {
        Response::Status(s) => s.plan.ok_or_else(|| anyhow::anyhow!("the agent has no plan yet")),
        Response::Error(e) => bail!("agent refused the request: {e}"),
        _ => bail!("agent sent no status"),
    }
}

/// Without `--config`: the plan the agent runs. With it: the plan that config would give on
/// this node (probing the kernel here) and, if the agent is reachable, how features would move.
/// Nothing is applied.
pub fn run(socket: &Path, config: Option<&Path>, out: Output) -> anyhow::Result<()> {
    let Some(path) = config else {
        let p = agent_plan(socket)?;
        match out {
            Output::Json => println!("{}", serde_json::to_string_pretty(&p)?),
            Output::Table => print!("{}", crate::status::render_plan(&p)),
        }
        return Ok(());
    };
    let cfg = sluice_config::load_for_planning(path)?;
    let (probed, _) = sluice_probes::probe();
    let proposed = crate::daemon::features::plan_for(&cfg, &probed)
        .map_err(|e| anyhow::anyhow!("the agent would refuse {}: {e:#}", path.display()))?;
    let current = agent_plan(socket).ok();
    let steps: Option<Vec<Step>> = current.as_ref().map(|c| transition(c, &proposed));
    if out == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"current": current, "proposed": proposed, "steps": steps}))?
        );
        return Ok(());
    }
    println!("Plan for {} (not applied):", path.display());
    print!("{}", crate::status::render_plan(&proposed));
    match (current, steps) {
        (Some(cur), Some(steps)) if steps.is_empty() => {
            println!("No change from the running plan ({}).", cur.status_line())
        }
        (Some(cur), Some(steps)) => {
            println!("Moves from the running plan, in the order the agent would run them (make before break):");
            for s in steps {
                match s {
                    Step::Program { feature, owner } => {
                        println!("  1. {owner} programs {feature} (was {})", cur.owner(feature))
                    }
                    Step::Remove { feature, owner } => {
                        println!("  2. {owner} removes {feature} (now {})", proposed.owner(feature))
                    }
                }
            }
        }
        _ => println!("(agent not reachable on {}: no comparison with the running plan)", socket.display()),
    }
    Ok(())
}

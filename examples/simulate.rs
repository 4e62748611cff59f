//! The strategy simulator.
//!
//! cargo run --release --example simulate -- --workload heterogeneous --seed 1
//! cargo run --release --example simulate -- --workload my_traffic.json --json
//! cargo run --release --example simulate -- --print-workload shift
//! cargo run --release --example simulate -- --plot docs/sim-{workload}.svg
//!
//! Options: --workload NAME|FILE (default: every built-in), --seed N (1),
//! --tasks N (override), --strategies a,b,... (default: all and the oracle),
//! --resilience (breakers and bulkheads on, as the application runs; off by
//! default so that strategies are compared on their own), --json
//! (machine-readable results), --plot FILE.svg (each contender's rolling
//! mean latency and success over simulated time, the phases marked;
//! `{workload}` in FILE is the workload's name, and with several workloads
//! and no `{workload}` the name goes before the extension),
//! --sample-above N|infinity (candidates past which the scanning strategies
//! sample; default 256, infinity: never), --print-workload NAME.

use std::process::ExitCode;

use erlmcp_flow_core::RouterConfig;
use erlmcp_flow_core::sim::{self, Contender, Window, Workload};

struct Args {
    workloads: Vec<String>,
    seed: u64,
    tasks: Option<usize>,
    contenders: Vec<Contender>,
    json: bool,
    resilience: bool,
    print: Option<String>,
    plot: Option<String>,
    sample_above: Option<Option<usize>>,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        workloads: Vec::new(),
        seed: 1,
        tasks: None,
        contenders: Contender::all(),
        json: false,
        resilience: false,
        print: None,
        plot: None,
        sample_above: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--workload" => args.workloads.push(value("--workload")?),
            "--seed" => {
                args.seed = value("--seed")?
                    .parse()
                    .map_err(|e| format!("--seed: {e}"))?
            }
            "--tasks" => {
                args.tasks = Some(
                    value("--tasks")?
                        .parse()
                        .map_err(|e| format!("--tasks: {e}"))?,
                )
            }
            "--strategies" => {
                args.contenders = value("--strategies")?
                    .split(',')
                    .map(|s| Contender::from_name(s).ok_or(format!("unknown strategy {s}")))
                    .collect::<Result<_, _>>()?
            }
            "--json" => args.json = true,
            "--resilience" => args.resilience = true,
            "--print-workload" => args.print = Some(value("--print-workload")?),
            "--plot" => args.plot = Some(value("--plot")?),
            "--sample-above" => {
                let v = value("--sample-above")?;
                args.sample_above = Some(if v == "infinity" {
                    None
                } else {
                    Some(
                        v.parse()
                            .ok()
                            .filter(|&n: &usize| n > 0)
                            .ok_or("--sample-above: a positive integer or infinity")?,
                    )
                });
            }
            "--help" | "-h" => {
                return Err(
                    "usage: simulate [--workload NAME|FILE]... [--seed N] [--tasks N] \
                            [--strategies a,b] [--resilience] [--json] [--plot FILE.svg] \
                            [--sample-above N|infinity] [--print-workload NAME]"
                        .into(),
                );
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.workloads.is_empty() {
        args.workloads = Workload::BUILTIN.iter().map(|s| s.to_string()).collect();
    }
    Ok(args)
}

fn load(name: &str) -> Result<Workload, String> {
    if let Some(w) = Workload::builtin(name) {
        return Ok(w);
    }
    let text = std::fs::read_to_string(name).map_err(|e| {
        format!(
            "{name}: not a built-in workload ({}) and not readable: {e}",
            Workload::BUILTIN.join(", ")
        )
    })?;
    Workload::from_json(&text).map_err(|e| format!("{name}: {e}"))
}

/// Where the picture of `workload` goes.
fn plot_path(pattern: &str, workload: &str, several: bool) -> String {
    if pattern.contains("{workload}") {
        pattern.replace("{workload}", workload)
    } else if several {
        match pattern.rsplit_once('.') {
            Some((stem, ext)) => format!("{stem}-{workload}.{ext}"),
            None => format!("{pattern}-{workload}"),
        }
    } else {
        pattern.to_string()
    }
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Some(name) = args.print {
        return match load(&name) {
            Ok(w) => {
                println!("{}", w.to_json());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        };
    }
    let mut config = RouterConfig::default();
    if let Some(limit) = args.sample_above {
        config.sample_above = limit;
    }
    let mut json = Vec::new();
    for name in &args.workloads {
        let mut w = match load(name) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        };
        if let Some(n) = args.tasks {
            w.tasks = n;
        }
        let results = sim::compare(
            &w,
            &args.contenders,
            args.seed,
            &config,
            Window::default(),
            args.resilience,
        );
        if let Some(pattern) = &args.plot {
            let path = plot_path(pattern, &w.name, args.workloads.len() > 1);
            let written = sim::plot::svg(&w, args.seed, &results)
                .and_then(|svg| std::fs::write(&path, svg).map_err(|e| e.to_string()));
            match written {
                Ok(()) => eprintln!("wrote {path}"),
                Err(e) => {
                    eprintln!("{path}: {e}");
                    return ExitCode::from(1);
                }
            }
        }
        if args.json {
            json.push(serde_json::json!({
                "workload": w.name, "seed": args.seed, "tasks": w.tasks,
                "resilience": args.resilience, "results": results
            }));
        } else {
            println!("{}", sim::format_table(&w, args.seed, &results));
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json).unwrap_or_default()
        );
    }
    ExitCode::SUCCESS
}

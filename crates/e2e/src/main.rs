//! `pvesandbox-e2e`: the end-to-end suite (`cargo xtask e2e --target sim|fakepve|env|nested`).
//!
//! One list of named checks exercises the whole sandbox lifecycle through the `pvesandbox`
//! library and the `pvesandbox` CLI against the chosen target, prints a table (check, target,
//! result, seconds) and writes JUnit XML. Exit status 1 when a check failed, 2 when the
//! arguments or the target's setup were wrong.

mod checks;
mod junit;
mod report;
mod target;
mod world;

use std::time::Instant;

use target::{Args, USAGE};

fn main() {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("pvesandbox-e2e: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    if args.help {
        println!("{USAGE}");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(run(args));
    // Dropping the runtime waits for nothing: children are killed on drop already.
    rt.shutdown_background();
    std::process::exit(code);
}

async fn run(args: Args) -> i32 {
    let t = Instant::now();
    // Our own handler, installed first: a handled signal reverts to the default in the
    // children at exec, while an ignored one (a background job of a non-interactive shell)
    // would stay ignored and make cleanup.ctrl_c's SIGINT a no-op.
    let mut interrupt =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("pvesandbox-e2e: cannot handle SIGINT: {e}");
                return 2;
            }
        };
    let world = match world::World::new(&args).await {
        Ok(w) => w,
        Err(e) => {
            eprintln!("pvesandbox-e2e: {e:#}");
            return 2;
        }
    };
    eprintln!(
        "e2e: target {} ready in {:.2} s",
        args.target,
        t.elapsed().as_secs_f64()
    );
    let mut suite = checks::Suite::new(&world, &args.only);
    let interrupted = tokio::select! {
        () = suite.run_all() => false,
        _ = interrupt.recv() => true,
    };
    if interrupted {
        // The check in flight was dropped mid-way; remove what its runs made.
        eprintln!("pvesandbox-e2e: interrupted; removing the suite's runs");
        for run in world.runs() {
            let target = pvesandbox::CleanupTarget::Run(run.clone());
            if let Err(e) = pvesandbox::cleanup(&world.settings.instances, &target).await {
                eprintln!(
                    "pvesandbox-e2e: run {run}: {e}; retry with `pvesandbox cleanup --run {run}`"
                );
            }
        }
        return 130;
    }
    let results = suite.results;
    print!("{}", report::table(&results));
    let xml = junit::render(&format!("e2e-{}", args.target), &results);
    if let Some(dir) = args.junit.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(&args.junit, xml) {
        Ok(()) => println!("JUnit: {}", args.junit.display()),
        Err(e) => {
            eprintln!("pvesandbox-e2e: writing {}: {e}", args.junit.display());
            return 2;
        }
    }
    let failed = results
        .iter()
        .any(|r| matches!(r.outcome, report::Outcome::Fail(_)));
    i32::from(failed)
}

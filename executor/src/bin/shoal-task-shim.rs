//! `shoal-task-shim`: the process runtime's per-task shim as a standalone program (tests use it;
//! the agent runs the same code as `shoal-agent __task-shim …`).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(shoal_executor::shim_main(args));
}

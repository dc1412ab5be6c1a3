//! `shoal`: the node agent (`shoal agent`) and the CLI that drives it (`shoal swarm …`,
//! `shoal node …`, `shoal demo`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::process::ExitCode;

use shoal_agent::{agent, cli, control, demo, store};

use clap::Parser;

fn main() -> ExitCode {
    // A task's shim: the agent starts its own binary as `shoal __task-shim …` for every task.
    // It must run before anything else (no threads, no runtime).
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("__task-shim") {
        let code = shoal_executor::shim_main(args[2..].to_vec());
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let cli = cli::Cli::parse();
    match &cli.command {
        cli::Command::Agent(a) => run_agent(&cli, a),
        cli::Command::Demo(d) => demo::run(d),
        _ => ExitCode::from(u8::try_from(cli::run(&cli)).unwrap_or(1)),
    }
}

/// The machine's hostname (Linux), or `HOSTNAME`, or `localhost`.
fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// The process runtime: tasks under `<data-dir>/tasks`, each watched by a shim that is this
/// binary started as `shoal __task-shim`.
fn process_executor(data_dir: &std::path::Path) -> Result<shoal_agent::worker::Executors, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the shoal binary: {e}"))?;
    let exec = shoal_executor::ProcessExecutor::new(
        data_dir.join("tasks"),
        shoal_executor::ShimCommand {
            program: exe,
            args: vec!["__task-shim".into()],
        },
    )
    .map_err(|e| format!("cannot start the process runtime: {e}"))?;
    if let shoal_executor::LimitsSupport::NotEnforced(why) = shoal_executor::Executor::limits(&exec)
    {
        eprintln!("shoal agent: resource limits are not enforced on this node: {why}");
    }
    Ok(shoal_agent::worker::Executors(vec![std::sync::Arc::new(
        exec,
    )]))
}

/// The engine the container runtime talks to: `--docker-host` (`none`: no container runtime),
/// else `DOCKER_HOST`, else the local socket when it exists; `None` when there is none.
fn docker_host(flag: Option<&str>) -> Option<String> {
    match flag {
        Some("none") => None,
        Some(h) => Some(h.to_string()),
        None => match std::env::var("DOCKER_HOST") {
            Ok(h) if !h.is_empty() => Some(h),
            _ => std::path::Path::new("/var/run/docker.sock")
                .exists()
                .then(|| "unix:///var/run/docker.sock".to_string()),
        },
    }
}

fn run_agent(cli: &cli::Cli, a: &cli::AgentArgs) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let fail = |msg: String| {
        eprintln!("Error: {msg}");
        ExitCode::from(1)
    };
    let labels = match agent::parse_labels(&a.labels) {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    let hostname = a.hostname.clone().unwrap_or_else(system_hostname);
    if let Err(e) = shoal_cluster::validate_hostname(&hostname) {
        return fail(e.to_string());
    }
    if a.listen.port() == 0 || a.listen.ip().is_unspecified() && a.advertise.is_none() {
        return fail(format!(
            "--listen {} needs a port, and a specific IP unless --advertise is given",
            a.listen
        ));
    }
    let mut executors = match process_executor(&cli.data_dir()) {
        Ok(e) => e,
        Err(e) => return fail(e),
    };
    if let Some(host) = docker_host(a.docker_host.as_deref()) {
        // The node id is set when the node joins; the engine is reached below and then every
        // few seconds, so an engine that starts later (or comes back) is picked up.
        match shoal_executor::ContainerExecutor::new(Some(&host), "") {
            Ok(exec) => executors.0.push(std::sync::Arc::new(exec)),
            Err(e) => return fail(format!("--docker-host: {e}")),
        }
    }
    let opts = agent::AgentOpts {
        listen: a.listen,
        advertise: a.advertise,
        hostname,
        labels,
        local_gossip: a.gossip == "local",
        simulated: false,
        fsync: true,
        seed: None,
        wal_faults: Default::default(),
        executors,
        ingress: Some(
            a.ingress_addr
                .unwrap_or_else(|| a.advertise.unwrap_or(a.listen).ip()),
        ),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    let result: anyhow::Result<()> = rt.block_on(async {
        opts.executors.check().await;
        for problem in opts.executors.problems() {
            eprintln!("shoal agent: runtime unavailable for now: {problem}");
        }
        if !opts.executors.engine_version().is_empty() {
            eprintln!(
                "shoal agent: container runtime on Docker Engine {}",
                opts.executors.engine_version()
            );
        }
        let data = store::DataDir::open(&cli.data_dir())?;
        let socket = data.socket();
        let dns = match a.dns_addr {
            Some(addr) => Some(
                tokio::net::UdpSocket::bind(addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("--dns-addr: cannot listen on {addr}: {e}"))?,
            ),
            None => None,
        };
        let agent = agent::Agent::start(data, opts).await?;
        if let Some(socket) = dns {
            eprintln!(
                "shoal agent: name server on {}",
                a.dns_addr.map(|d| d.to_string()).unwrap_or_default()
            );
            tokio::spawn(shoal_agent::dns::serve(
                socket,
                std::sync::Arc::downgrade(&agent),
            ));
        }
        eprintln!(
            "shoal agent: QUIC on {}, control socket {}",
            a.listen,
            socket.display()
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let scrape = async {
            match a.metrics_addr {
                Some(addr) => {
                    eprintln!("shoal agent: metrics on http://{addr}/metrics");
                    control::serve_metrics(agent.clone(), addr).await
                }
                None => std::future::pending().await,
            }
        };
        let remote = async {
            match a.api_addr {
                Some(addr) => {
                    eprintln!("shoal agent: control API with mutual TLS on tcp://{addr}");
                    let app = control::router(agent.clone());
                    shoal_agent::remote::serve_api(agent.clone(), addr, app).await
                }
                None => std::future::pending().await,
            }
        };
        let web = async {
            match a.web_addr {
                Some(addr) => {
                    let scheme = if addr.ip().is_loopback() {
                        "http"
                    } else {
                        "https"
                    };
                    eprintln!("shoal agent: cluster view on {scheme}://{addr}/");
                    shoal_agent::web::serve(agent.clone(), addr).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = control::serve(agent.clone(), &socket) => r,
            r = web => r.map_err(|e| e.context("--web-addr")),
            r = scrape => r.map_err(|e| e.context("--metrics-addr")),
            r = remote => r.map_err(|e| e.context("--api-addr")),
            _ = tokio::signal::ctrl_c() => Ok(()),
            _ = term.recv() => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(format!("{e:#}")),
    }
}

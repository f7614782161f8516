//! The binary: parse the command line, set up logging, load the config, handle signals and
//! map outcomes to exit codes. Everything else lives in the library.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use redis_failover_proxy::config::{Cli, Command, Config};
use redis_failover_proxy::status_report::{self, StatusError};
use redis_failover_proxy::{
    bind, check, install_metrics, logging, run, Control, Controls, Loader, Shutdown, Workers,
};
use tokio::signal::unix::Signal;
use tokio::sync::mpsc::Sender;

/// Bad command line or configuration (sysexits EX_USAGE).
const EXIT_CONFIG: u8 = 64;
/// `check` found a route without a verified master, or `status` cannot reach the proxy
/// (sysexits EX_UNAVAILABLE).
const EXIT_NO_MASTER: u8 = 69;
/// `status`: something answered at the admin address, but not with the proxy's status
/// (sysexits EX_PROTOCOL).
const EXIT_PROTOCOL: u8 = 76;
/// A runtime failure such as a listen address in use.
const EXIT_RUNTIME: u8 = 1;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    logging::init(cli.log_format);

    let (overrides, checking, offline) = match &cli.command {
        Some(Command::Status(args)) => return status(args),
        Some(Command::Check(c)) => (&c.overrides, true, c.offline),
        None => (&cli.overrides, false, false),
    };
    let loaded = if offline {
        Config::load_offline(overrides)
    } else {
        Config::load(overrides)
    };
    let config = match loaded {
        Ok(c) => c,
        Err(e) => {
            complain(format_args!("configuration error: {e}"));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if offline {
        let source = redis_failover_proxy::config::file_path(overrides.config.as_deref())
            .map_or("built-in defaults and command line".to_string(), |p| {
                p.display().to_string()
            });
        let _ = std::io::stdout().write_all(check::offline_summary(&config, &source).as_bytes());
        return ExitCode::SUCCESS;
    }
    for w in config.warnings() {
        tracing::warn!(warning = %w, "configuration");
    }
    // The control runtime: the watchers. Clients are accepted and served on the session
    // threads (`Workers`), the admin server on a thread of its own (`run` starts it).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            complain(format_args!("cannot start the runtime: {e}"));
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    if checking {
        let (report, ok) = runtime.block_on(check::check(&config));
        // A closed stdout must not turn a verdict into a panic.
        let _ = std::io::stdout().write_all(report.as_bytes());
        return if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_NO_MASTER)
        };
    }
    // A reload loads the same file with the same flags and environment as the start.
    let reload_with = overrides.clone();
    let load: Loader = std::sync::Arc::new(move || Config::load(&reload_with));
    let source = redis_failover_proxy::config::file_path(overrides.config.as_deref())
        .map_or("command line".to_string(), |p| p.display().to_string());
    let code = runtime.block_on(async move {
        let listeners = match bind(&config).await {
            Ok(l) => l,
            Err(e) => {
                complain(format_args!("{e}"));
                return ExitCode::from(EXIT_RUNTIME);
            }
        };
        let workers = match Workers::start(config.runtime) {
            Ok(w) => w,
            Err(e) => {
                complain(format_args!("cannot start the session threads: {e}"));
                return ExitCode::from(EXIT_RUNTIME);
            }
        };
        let shutdown = Shutdown::default();
        // The handlers are installed here, before anything serves: the admin server (its own
        // thread) can answer before a spawned task would first run, and a SIGTERM in that gap
        // would otherwise kill the process without a drain.
        let handlers = match signal_handlers() {
            Ok(h) => h,
            Err(e) => {
                complain(format_args!("cannot install signal handlers: {e}"));
                return ExitCode::from(EXIT_RUNTIME);
            }
        };
        let (control, requests) = tokio::sync::mpsc::channel(4);
        tokio::spawn(signals(handlers, shutdown.clone(), control));
        let controls = Controls {
            requests,
            load: Some(load),
            source,
        };
        match run(
            config,
            listeners,
            workers,
            install_metrics(),
            shutdown,
            controls,
        )
        .await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                complain(format_args!("{e}"));
                ExitCode::from(EXIT_RUNTIME)
            }
        }
    });
    // A DNS lookup still running on a blocking thread must not hold up the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

/// The signals the proxy handles, caught from now on (none of them may end it silently).
struct Handlers {
    term: Signal,
    int: Signal,
    hup: Signal,
    usr1: Signal,
    usr2: Signal,
    alrm: Signal,
}

fn signal_handlers() -> std::io::Result<Handlers> {
    use tokio::signal::unix::{signal, SignalKind};
    Ok(Handlers {
        term: signal(SignalKind::terminate())?,
        int: signal(SignalKind::interrupt())?,
        hup: signal(SignalKind::hangup())?,
        usr1: signal(SignalKind::user_defined1())?,
        usr2: signal(SignalKind::user_defined2())?,
        alrm: signal(SignalKind::alarm())?,
    })
}

/// First SIGTERM/SIGINT: drain (stop accepting, let sessions finish within the grace period).
/// Second: close every session now. SIGHUP reloads the configuration, SIGUSR1 logs the
/// status; SIGUSR2 and SIGALRM are logged and ignored.
async fn signals(mut h: Handlers, shutdown: Shutdown, control: Sender<Control>) {
    let mut stages = [("drain", &shutdown.drain), ("close", &shutdown.close)].into_iter();
    loop {
        let (signal, request) = tokio::select! {
            _ = h.term.recv() => ("SIGTERM", None),
            _ = h.int.recv() => ("SIGINT", None),
            _ = h.hup.recv() => ("SIGHUP", Some(Control::Reload)),
            _ = h.usr1.recv() => ("SIGUSR1", Some(Control::LogStatus)),
            _ = h.usr2.recv() => {
                tracing::info!(signal = "SIGUSR2", "signal received; ignored");
                continue;
            }
            _ = h.alrm.recv() => {
                tracing::info!(signal = "SIGALRM", "signal received; ignored");
                continue;
            }
        };
        match request {
            Some(request) => {
                if shutdown.drain.is_cancelled() {
                    tracing::info!(signal, "signal received; ignored while shutting down");
                } else if control.try_send(request).is_err() {
                    tracing::warn!(
                        signal,
                        "signal received; ignored: too many requests are already waiting"
                    );
                } else if request == Control::Reload {
                    tracing::info!(signal, "signal received; reloading the configuration");
                }
            }
            None => match stages.next() {
                Some((stage, token)) => {
                    tracing::info!(signal, stage, "signal received; shutting down");
                    token.cancel();
                }
                None => tracing::info!(signal, "signal received; already closing"),
            },
        }
    }
}

/// `status`: print the running proxy's status, or say why not.
fn status(args: &redis_failover_proxy::config::StatusArgs) -> ExitCode {
    match status_report::run(args) {
        Ok(text) => {
            // A closed stdout (`| head`) is not an error worth a message.
            let _ = std::io::stdout().write_all(text.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            complain(format_args!("{e}"));
            ExitCode::from(match e {
                StatusError::Config(_) | StatusError::AdminOff { .. } => EXIT_CONFIG,
                StatusError::Unreachable { .. } => EXIT_NO_MASTER,
                StatusError::BadAnswer { .. } => EXIT_PROTOCOL,
            })
        }
    }
}

/// One line on stderr, ignoring a closed stderr; under systemd with the journal's error
/// priority.
fn complain(msg: std::fmt::Arguments) {
    let _ = writeln!(
        std::io::stderr(),
        "{}redis-failover-proxy: {msg}",
        logging::error_prefix()
    );
}

//! `callbox sync` (the foreground sync task) and `callbox outbox status|list|retry`.

use std::process::ExitCode;

use crate::config::Config;
use crate::sync::{Sync, SyncOptions};

#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    /// Stop once the outbox is empty (health set to offline) instead of running for good.
    #[arg(long)]
    pub exit_when_drained: bool,
    /// Stop with an error after this many connection failures in a row.
    #[arg(long)]
    pub give_up_after: Option<u32>,
    /// Outbox messages in flight (published, not yet acknowledged) at most.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub window: u16,
    /// Shortest and longest wait between connection attempts (jittered in between).
    #[arg(long, default_value_t = 500)]
    pub backoff_min_ms: u64,
    #[arg(long, default_value_t = 60_000)]
    pub backoff_max_ms: u64,
    /// Print the run's figures as JSON when it stops.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum OutboxCommand {
    /// Undelivered and delivered counts, the oldest undelivered message, the last delivery.
    Status,
    /// The newest messages (id, topic, size, attempts, delivered or not); never their content.
    List {
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Queues delivered messages again by id (the CRM lost them); they keep their ids.
    Retry {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

pub fn sync(config: &Config, args: SyncArgs) -> anyhow::Result<ExitCode> {
    let store = super::open_store(config)?;
    let mut options = SyncOptions::from_config(config);
    options.exit_when_drained = args.exit_when_drained;
    options.give_up_after = args.give_up_after;
    options.window = usize::from(args.window);
    options.backoff_min = std::time::Duration::from_millis(args.backoff_min_ms);
    options.backoff_max =
        std::time::Duration::from_millis(args.backoff_max_ms.max(args.backoff_min_ms));
    let task = Sync::new(config, store, options)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(task.run(shutdown_signal()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "sync stopped: {} delivered, {} published ({} sent again after a broken connection), {} connections, {} failed, {} purged",
            report.delivered,
            report.published,
            report.republished,
            report.connections,
            report.connection_failures,
            report.purged
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

pub fn outbox(config: &Config, cmd: OutboxCommand) -> anyhow::Result<ExitCode> {
    let mut store = super::open_store(config)?;
    match cmd {
        OutboxCommand::Status => {
            let s = store.outbox_status()?;
            println!("undelivered  {}", s.pending);
            println!(
                "  of which sent before (may reach the CRM twice)  {}",
                s.pending_attempted
            );
            println!("delivered, kept until retention  {}", s.delivered_kept);
            println!(
                "oldest undelivered  {}",
                s.oldest_pending_at.as_deref().unwrap_or("-")
            );
            println!(
                "last delivery  {}",
                s.last_delivered_at.as_deref().unwrap_or("never")
            );
            match &config.mqtt {
                Some(m) => println!("broker  {}:{} (tls: {})", m.host, m.port, m.tls),
                None => println!("broker  none configured: messages stay in the outbox"),
            }
        }
        OutboxCommand::List { limit } => {
            for row in store.recent_outbox(limit)? {
                println!(
                    "{:>6}  {}  {}  {} B  attempts {}  {}",
                    row.seq,
                    row.message.message_id,
                    row.message.topic,
                    row.message.payload.len(),
                    row.attempts,
                    match &row.delivered_at {
                        Some(at) => format!("delivered {at}"),
                        None => "pending".to_string(),
                    }
                );
            }
        }
        OutboxCommand::Retry { ids } => {
            for id in &ids {
                if store.requeue_outbox(id)? {
                    println!("{id}: queued again");
                } else {
                    println!("{id}: not delivered yet, already queued");
                }
            }
            store.audit("installer", "outbox.retry", &ids.join(" "))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct BenchSyncArgs {
    /// Summaries in the outbox to drain.
    #[arg(long, default_value_t = 2000)]
    pub summaries: usize,
    /// Messages in flight at most.
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    /// Use the configured broker instead of starting a local Mosquitto.
    #[arg(long)]
    pub configured_broker: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn bench(config: &Config, args: BenchSyncArgs) -> anyhow::Result<ExitCode> {
    let broker = if args.configured_broker {
        Some(
            config
                .mqtt
                .clone()
                .ok_or(crate::sync::SyncError::NoBroker)?,
        )
    } else {
        None
    };
    let b = crate::sync::bench::run(config, broker, args.summaries.max(1), args.window)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&b)?);
    } else {
        println!(
            "sync drain to {}: {} summaries of {} B, window {}\n  {:.2} s  {:.0} summaries/s  CPU {:.2} s ({:.0}% of one core)",
            b.broker,
            b.summaries,
            b.payload_bytes,
            b.window,
            b.seconds,
            b.summaries_per_s,
            b.cpu_seconds,
            b.cpu_percent_of_one_core
        );
    }
    Ok(ExitCode::SUCCESS)
}

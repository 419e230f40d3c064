//! `weir produce`: send generated e-commerce events to a Kinesis stream.

use std::process::ExitCode;
use std::time::Duration;

use super::thousands;
use crate::job::units::parse_duration;
use crate::produce::{ProduceOptions, client, produce};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Stream name (endpoint, region and credentials from the standard AWS environment).
    #[arg(long)]
    pub stream: String,
    /// Number of events to send.
    #[arg(long, required_unless_present = "duration")]
    pub events: Option<u64>,
    /// Send for this long ("30s", "5m").
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Target events per second.
    #[arg(long)]
    pub rate: Option<u64>,
    /// KPL-aggregate up to this many events per Kinesis record.
    #[arg(long)]
    pub aggregate: Option<usize>,
    /// Random seed of the generated events.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Create the stream with this many shards if it does not exist.
    #[arg(long)]
    pub create_shards: Option<i32>,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let opts = ProduceOptions {
        stream: args.stream,
        events: args.events,
        duration: args.duration,
        rate: args.rate,
        aggregate: args.aggregate,
        seed: args.seed,
        create_shards: args.create_shards,
    };
    let client = client().await;
    let bar = indicatif::ProgressBar::new_spinner();
    let p = produce(&client, &opts, |p| {
        bar.set_message(format!(
            "{} events in {} records",
            thousands(p.events),
            thousands(p.records)
        ));
        bar.tick();
    })
    .await?;
    bar.finish_and_clear();
    let secs = p.elapsed.as_secs_f64().max(1e-9);
    println!(
        "sent {} events in {} records to {} ({} events/s, {} retried)",
        thousands(p.events),
        thousands(p.records),
        opts.stream,
        thousands((p.events as f64 / secs) as u64),
        thousands(p.retried)
    );
    Ok(ExitCode::SUCCESS)
}

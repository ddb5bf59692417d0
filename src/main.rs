use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tollgate::config::{self, LogFormat};

/// A metering reverse proxy for LLM APIs.
#[derive(Parser)]
#[command(name = "tollgate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy. Once its listeners are bound it prints one line on standard output,
    /// `tollgate ready proxy=ADDR admin=ADDR`; listen addresses may use port 0.
    Serve {
        #[arg(long, short, default_value = "tollgate.yaml", env = "TOLLGATE_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config and the price and policy files it names; print every problem as
    /// FILE:LINE:COL.
    Check {
        #[arg(long, short, default_value = "tollgate.yaml", env = "TOLLGATE_CONFIG")]
        config: PathBuf,
    },
    /// Run the whole path offline: proxy, simulated provider, synthetic traffic, spend report.
    Demo {
        /// Requests to send.
        #[arg(long, default_value_t = 300)]
        requests: usize,
        /// Where the demo's ledger is kept (a temporary directory by default).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Also ship the records to this ClickHouse (its HTTP URL), for the dashboards; as
        /// user `default`, with the password in `CLICKHOUSE_PASSWORD` when that is set.
        #[arg(long)]
        clickhouse: Option<String>,
        /// The ClickHouse database the records go to (made, with its tables, if missing).
        #[arg(long, default_value = "tollgate")]
        clickhouse_database: String,
    },
    /// Run only the simulated provider (an OpenAI/Anthropic wire-format upstream), for
    /// benchmarks and trying clients. Prints `tollgate ready sim=ADDR` once listening.
    SimProvider {
        #[arg(long, default_value = "127.0.0.1:4100")]
        listen: std::net::SocketAddr,
        /// Delay before the first byte of each response, in milliseconds.
        #[arg(long, default_value_t = 0)]
        first_token_delay_ms: u64,
        /// Delay between streamed tokens, in milliseconds.
        #[arg(long, default_value_t = 0)]
        token_interval_ms: u64,
    },
    /// Create or migrate the ClickHouse schema named in the config.
    Migrate {
        #[arg(long, short, default_value = "tollgate.yaml", env = "TOLLGATE_CONFIG")]
        config: PathBuf,
        /// Print the SQL instead of running it.
        #[arg(long)]
        dry_run: bool,
        /// Stop after this schema version.
        #[arg(long)]
        to: Option<u32>,
    },
    /// Spend report from ClickHouse when configured, else from the local ledger.
    Report {
        #[arg(long, short, default_value = "tollgate.yaml", env = "TOLLGATE_CONFIG")]
        config: PathBuf,
        /// Look back this far: 90m, 24h, 7d, 2w [default: 24h; 30d for --format html].
        #[arg(long)]
        since: Option<String>,
        /// Group by these: team, project, env, model, provider, user, feature, workflow, key;
        /// or `outcome` alone: spend per reported business outcome.
        #[arg(long, value_delimiter = ',', default_value = "team,project,env,model")]
        by: Vec<tollgate::report::outcomes::By>,
        /// table, json or csv; or html: the spend page (every breakdown, charts, levers and
        /// cost per outcome) as one self-contained file.
        #[arg(long, default_value = "table")]
        format: tollgate::report::ReportFormat,
        /// Write the report to this file instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Read the local ledger even when ClickHouse is configured.
        #[arg(long)]
        ledger: bool,
    },
    /// What-if: replay recorded traffic through candidate policies and compare its actual
    /// cost with what it would have cost. Nothing is sent to any provider.
    Simulate {
        /// The candidate policy directory, checked like `policies:` in the config.
        #[arg(long)]
        policies: PathBuf,
        #[arg(long, short, default_value = "tollgate.yaml", env = "TOLLGATE_CONFIG")]
        config: PathBuf,
        /// Look back this far: 90m, 24h, 7d, 2w.
        #[arg(long, default_value = "7d")]
        since: String,
        /// Group by these: team, project, env, model, provider, user, feature, workflow, key.
        #[arg(long, value_delimiter = ',', default_value = "team,feature")]
        by: Vec<tollgate::report::Dim>,
        /// Escalation rate of a cascade step with too few judged answers on record.
        #[arg(long, default_value = "0.2")]
        assume_escalation: tollgate::simulate::odds::Rate,
        /// Judged answers of a feature and model needed to use their observed rate.
        #[arg(long, default_value_t = tollgate::simulate::MIN_OBSERVATIONS)]
        min_observations: u64,
        /// table, json or csv.
        #[arg(long, default_value = "table")]
        format: tollgate::report::Format,
        /// Read the local ledger even when ClickHouse is configured.
        #[arg(long)]
        ledger: bool,
    },
    /// Price tables.
    Prices {
        #[command(subcommand)]
        command: PricesCommand,
    },
}

#[derive(Subcommand)]
enum PricesCommand {
    /// Convert LiteLLM's model_prices_and_context_window.json into a Tollgate price file.
    Import {
        /// The LiteLLM JSON file.
        file: PathBuf,
        /// Date the imported prices take effect (YYYY-MM-DD); today by default.
        #[arg(long)]
        effective_from: Option<chrono::NaiveDate>,
        /// LiteLLM providers to keep.
        #[arg(long, value_delimiter = ',', default_value = "openai,anthropic")]
        providers: Vec<String>,
        /// Output file; standard output by default.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

fn init_logging(format: LogFormat, level: Option<&str>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level.unwrap_or("info")))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Loads a config, or prints its problems and exits with status 2.
fn load_or_exit(path: &std::path::Path) -> anyhow::Result<tollgate::config::Validated> {
    match config::load(path) {
        Ok(c) => Ok(c),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Serve { .. })
        && let Err(e) = tollgate::memory::spawn_trimmer()
    {
        eprintln!("warning: memory freed by closed connections stays with the process: {e}");
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => {
            let cfg = load_or_exit(&config)?;
            init_logging(cfg.log.format, cfg.log.level.as_deref());
            tollgate::server::serve(cfg, &config)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => match config::load(&config) {
            Ok(cfg) => {
                println!(
                    "{}: ok ({} providers, {} model routes, {} keys, {} priced models)",
                    config.display(),
                    cfg.providers.len(),
                    cfg.models.len(),
                    cfg.keys.len(),
                    cfg.prices.len()
                );
                if let Some(first) = cfg.policies.rules().next() {
                    let dir = first
                        .source
                        .file
                        .parent()
                        .unwrap_or(std::path::Path::new("."));
                    println!(
                        "policies: {} rules from {}/",
                        cfg.policies.len(),
                        dir.display()
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Migrate {
            config,
            dry_run,
            to,
        } => {
            let cfg = load_or_exit(&config)?;
            let Some(settings) = cfg.clickhouse.as_ref() else {
                anyhow::bail!("{}: no telemetry.clickhouse configured", config.display());
            };
            if dry_run {
                for (_, sql) in tollgate::sink::clickhouse::migrate::plan(settings, to) {
                    println!("{sql};\n");
                }
                return Ok(ExitCode::SUCCESS);
            }
            init_logging(cfg.log.format, cfg.log.level.as_deref());
            let ch = tollgate::sink::clickhouse::ClickHouse::new(settings)?;
            let applied = tokio::runtime::Runtime::new()?.block_on(
                tollgate::sink::clickhouse::migrate::migrate(&ch, settings, to),
            )?;
            println!("applied {} migration(s): {applied:?}", applied.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Report {
            config,
            since,
            by,
            format,
            output,
            ledger,
        } => {
            use tollgate::report::ReportFormat;
            let cfg = load_or_exit(&config)?;
            let default_since = if format == ReportFormat::Html {
                "30d"
            } else {
                "24h"
            };
            let since = tollgate::report::parse_since(since.as_deref().unwrap_or(default_since))
                .map_err(anyhow::Error::msg)?;
            let format = match format {
                ReportFormat::Html => {
                    write_out(output.as_deref(), &spend_page(&cfg, since, ledger)?)?;
                    return Ok(ExitCode::SUCCESS);
                }
                ReportFormat::Rows(format) => format,
            };
            use tollgate::report::outcomes::By;
            if by.contains(&By::Outcome) {
                if by.len() > 1 {
                    anyhow::bail!("--by outcome is a report of its own: name no other dimension");
                }
                let report = outcome_report(&cfg, since, ledger)?;
                write_out(
                    output.as_deref(),
                    &tollgate::report::outcomes::render(&report, format),
                )?;
                return Ok(ExitCode::SUCCESS);
            }
            let by: Vec<tollgate::report::Dim> = by
                .into_iter()
                .filter_map(|b| match b {
                    By::Dim(d) => Some(d),
                    By::Outcome => None,
                })
                .collect();
            let rows = match cfg.clickhouse.as_ref().filter(|_| !ledger) {
                Some(settings) => {
                    let ch = tollgate::sink::clickhouse::ClickHouse::new(settings)?;
                    let report = tollgate::report::from_clickhouse(&ch, &by, since.num_seconds());
                    tokio::runtime::Runtime::new()?.block_on(report)?
                }
                None => {
                    let from = chrono::Utc::now() - since;
                    let records = tollgate::ledger::read_all::<tollgate::record::Record>(
                        &cfg.data_dir.join("ledger"),
                    )
                    .with_context(|| {
                        format!("reading the ledger under {}", cfg.data_dir.display())
                    })?;
                    tollgate::report::aggregate(records.iter().filter(|r| r.ts >= from), &by)
                }
            };
            write_out(
                output.as_deref(),
                &tollgate::report::render(&rows, &by, format),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate {
            policies,
            config,
            since,
            by,
            assume_escalation,
            min_observations,
            format,
            ledger,
        } => {
            let cfg = load_or_exit(&config)?;
            let candidate = match tollgate::simulate::load_policies(&policies, &cfg) {
                Ok(set) => set,
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let since = tollgate::report::parse_since(&since).map_err(anyhow::Error::msg)?;
            let traffic = match cfg.clickhouse.as_ref().filter(|_| !ledger) {
                Some(settings) => {
                    let ch = tollgate::sink::clickhouse::ClickHouse::new(settings)?;
                    let read =
                        tollgate::simulate::source::from_clickhouse(&ch, since.num_seconds());
                    tokio::runtime::Runtime::new()?.block_on(read)?
                }
                None => tollgate::simulate::source::from_ledger(
                    &cfg.data_dir.join("ledger"),
                    chrono::Utc::now() - since,
                )
                .with_context(|| format!("reading the ledger under {}", cfg.data_dir.display()))?,
            };
            let opts = tollgate::simulate::Options {
                by,
                assumed_escalation: assume_escalation,
                min_observations,
            };
            let sim =
                tollgate::simulate::simulate(&traffic, &candidate, &cfg.models, &cfg.prices, &opts);
            print!(
                "{}",
                tollgate::simulate::render::render(&sim, &opts.by, format)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo {
            requests,
            data_dir,
            clickhouse,
            clickhouse_database,
        } => {
            init_logging(LogFormat::Text, Some("warn"));
            let clickhouse = clickhouse.map(|url| tollgate::demo::Shipping {
                url,
                database: clickhouse_database,
            });
            tollgate::demo::run(requests, data_dir, clickhouse)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::SimProvider {
            listen,
            first_token_delay_ms,
            token_interval_ms,
        } => {
            init_logging(LogFormat::Text, None);
            let sim = tollgate::sim::SimProvider::new(tollgate::sim::SimOptions {
                first_token_delay: std::time::Duration::from_millis(first_token_delay_ms),
                token_interval: std::time::Duration::from_millis(token_interval_ms),
            });
            tokio::runtime::Runtime::new()?.block_on(async move {
                let listener = tokio::net::TcpListener::bind(listen).await?;
                let addr = listener.local_addr()?;
                eprintln!("simulated provider on http://{addr}");
                tollgate::server::ready::Ready::new([("sim", addr)]).announce();
                sim.serve(listener, async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Prices {
            command:
                PricesCommand::Import {
                    file,
                    effective_from,
                    providers,
                    output,
                },
        } => {
            let json = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let date = effective_from.unwrap_or_else(|| chrono::Utc::now().date_naive());
            let providers: Vec<&str> = providers.iter().map(String::as_str).collect();
            let yaml = tollgate::prices::import_litellm(&json, date, &providers)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            match output {
                Some(path) => std::fs::write(&path, yaml)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => print!("{yaml}"),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `report --by outcome`: from ClickHouse when configured (and `--ledger` not given), else
/// from the ledger's requests of the window and all its outcomes.
fn outcome_report(
    cfg: &tollgate::config::Validated,
    since: chrono::Duration,
    ledger: bool,
) -> anyhow::Result<tollgate::report::outcomes::OutcomeReport> {
    use tollgate::report::outcomes;
    if let Some(settings) = cfg.clickhouse.as_ref().filter(|_| !ledger) {
        let ch = tollgate::sink::clickhouse::ClickHouse::new(settings)?;
        let report = outcomes::from_clickhouse(&ch, since.num_seconds());
        return Ok(tokio::runtime::Runtime::new()?.block_on(report)?);
    }
    let read = read_ledger(cfg, chrono::Utc::now() - since, false)?;
    Ok(outcomes::aggregate(&read.requests, &read.outcomes))
}

/// `report --format html`: the spend page, from ClickHouse when configured (and `--ledger`
/// not given), else from the ledger.
fn spend_page(
    cfg: &tollgate::config::Validated,
    since: chrono::Duration,
    ledger: bool,
) -> anyhow::Result<String> {
    use tollgate::report::{html, page::SpendPage, source::Records};
    let now = chrono::Utc::now();
    let read = Records::read(cfg, now, since, ledger);
    let (records, store) = tokio::runtime::Runtime::new()?.block_on(read)?;
    let page = SpendPage::build(&records, now - since, now, &cfg.spend, store.name());
    Ok(html::render(&page))
}

/// The window's records from the ledger under the config's data dir.
fn read_ledger(
    cfg: &tollgate::config::Validated,
    from: chrono::DateTime<chrono::Utc>,
    attempts: bool,
) -> anyhow::Result<tollgate::report::source::Records> {
    tollgate::report::source::Records::from_ledger(&cfg.data_dir.join("ledger"), from, attempts)
        .with_context(|| format!("reading the ledger under {}", cfg.data_dir.display()))
}

/// Writes a report to `path`, or to standard output without one.
fn write_out(path: Option<&std::path::Path>, text: &str) -> anyhow::Result<()> {
    match path {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
        }
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

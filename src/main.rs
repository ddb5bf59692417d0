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
    /// Run the proxy.
    Serve {
        #[arg(long, short, default_value = "tollgate.yaml", env = "TOLLGATE_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config and the price files it names; print every problem as FILE:LINE:COL.
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
    },
    /// Run only the simulated provider (an OpenAI/Anthropic wire-format upstream), for
    /// benchmarks and trying clients.
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

fn main() -> ExitCode {
    let cli = Cli::parse();
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
            let cfg = match config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::from(2));
                }
            };
            init_logging(cfg.log.format, cfg.log.level.as_deref());
            tollgate::server::serve(cfg)?;
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
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Demo { requests, data_dir } => {
            init_logging(LogFormat::Text, Some("warn"));
            tollgate::demo::run(requests, data_dir)?;
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
                eprintln!("simulated provider on http://{listen}");
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

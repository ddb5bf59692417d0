//! ClickHouse through the `clickhouse` crate, over its HTTP interface, LZ4-compressed both
//! ways. Ledger lines are already JSONEachRow rows, so the sink sends them as they are on
//! disk (a formatted insert): no second encoder that could drift from the record. Reads are
//! typed rows (`clickhouse::Row`).
//!
//! TLS goes through native-tls (OpenSSL here), the provider the rest of the binary uses;
//! `ca_file` adds roots to the system ones.

use crate::config::ClickHouseSettings;
use ::clickhouse::error::Error;
use ::clickhouse::query::Query;
use ::clickhouse::{Client, Compression, RowOwned, RowRead, RowWrite};
use bytes::Bytes;
use hyper_util::client::legacy::{Client as HyperClient, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Below the server's keep-alive timeout (10 s by default since 23.11, 3 s before), so
/// the pool never hands out a connection the server is closing.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_millis(2500);

#[derive(Debug, thiserror::Error)]
pub enum ChError {
    /// No answer: refused, reset, timed out, TLS failure. Worth retrying.
    #[error("cannot reach ClickHouse: {0}")]
    Transport(String),
    /// ClickHouse answered with an exception (its code when it sent one).
    #[error("ClickHouse refused{}: {message}", code.map(|c| format!(" (code {c})")).unwrap_or_default())]
    Server { code: Option<u32>, message: String },
    /// An answer that does not fit the rows asked for.
    #[error("unexpected answer from ClickHouse: {0}")]
    Decode(String),
    #[error("ClickHouse client setup: {0}")]
    Setup(String),
}

/// Exception codes that mean the rows themselves are bad: retrying cannot help.
const BAD_DATA_CODES: &[u32] = &[
    6,   // CANNOT_PARSE_TEXT
    25,  // CANNOT_PARSE_ESCAPE_SEQUENCE
    26,  // CANNOT_PARSE_QUOTED_STRING
    27,  // CANNOT_PARSE_INPUT_ASSERTION_FAILED
    38,  // CANNOT_PARSE_DATE
    41,  // CANNOT_PARSE_DATETIME
    53,  // TYPE_MISMATCH
    69,  // ARGUMENT_OUT_OF_BOUND
    70,  // CANNOT_CONVERT_TYPE
    72,  // CANNOT_PARSE_NUMBER
    117, // INCORRECT_DATA
    131, // TOO_LARGE_STRING_SIZE
    349, // CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
    376, // CANNOT_PARSE_UUID
    691, // UNKNOWN_ELEMENT_OF_ENUM
];

impl ChError {
    /// Whether ClickHouse rejected the data (set it aside) rather than failed (retry).
    pub fn is_bad_data(&self) -> bool {
        matches!(self, ChError::Server { code: Some(c), .. } if BAD_DATA_CODES.contains(c))
    }
}

impl From<Error> for ChError {
    fn from(e: Error) -> ChError {
        match e {
            // The server's exception text ("Code: 27. DB::Exception: ..."), or just its code
            // or the HTTP status when the body was empty.
            Error::BadResponse(message) => ChError::Server {
                code: exception_code(&message),
                message: message.chars().take(2000).collect(),
            },
            // A body that does not decompress was cut short on the way.
            Error::Network(_) | Error::TimedOut | Error::Decompression(_) => {
                ChError::Transport(with_causes(&e))
            }
            Error::InvalidParams(_) | Error::Unsupported(_) => ChError::Setup(with_causes(&e)),
            other => ChError::Decode(with_causes(&other)),
        }
    }
}

/// `27` from `Code: 27. DB::Exception: ...`.
fn exception_code(message: &str) -> Option<u32> {
    let rest = message.trim_start().strip_prefix("Code: ")?;
    let digits = rest.split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
}

/// An error with its sources: the crate's network error alone says only "client error".
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[derive(Clone)]
pub struct ClickHouse {
    /// No default database: DDL names its database, which may not exist yet.
    server: Client,
    /// Reads and inserts in the configured database.
    db: Client,
    /// Bounds every call: connecting, sending and the answer.
    timeout: Duration,
}

impl ClickHouse {
    pub fn new(s: &ClickHouseSettings) -> Result<ClickHouse, ChError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false); // https is handled by the TLS layer around it
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_keepalive(Some(Duration::from_secs(60)));
        http.set_nodelay(true);
        let mut tls = native_tls::TlsConnector::builder();
        if let Some(pem) = &s.ca_pem {
            let certs = native_tls::Certificate::stack_from_pem(pem)
                .map_err(|e| ChError::Setup(format!("ca_file: {e}")))?;
            if certs.is_empty() {
                return Err(ChError::Setup("ca_file holds no certificate".into()));
            }
            for cert in certs {
                tls.add_root_certificate(cert);
            }
        }
        let tls = tls
            .build()
            .map_err(|e| ChError::Setup(format!("TLS: {e}")))?;
        let transport = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(hyper_tls::HttpsConnector::from((http, tls.into())));
        let mut server = Client::with_http_client(transport)
            .with_url(&s.url)
            .with_user(&s.user)
            .with_compression(Compression::Lz4);
        if let Some(p) = &s.password {
            server = server.with_password(p);
        }
        Ok(ClickHouse {
            db: server.clone().with_database(&s.database),
            server,
            timeout: s.timeout,
        })
    }

    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, ChError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(res) => res.map_err(ChError::from),
            Err(_) => Err(ChError::Transport(format!(
                "no answer within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    /// Runs one statement (DDL), sent as written: no placeholders are filled in.
    pub async fn execute(&self, sql: &str) -> Result<(), ChError> {
        self.bounded(self.server.query_raw(sql).execute()).await
    }

    /// A query in the configured database, sent as written; bind values with
    /// [`Query::param`] (`{name:Type}` in the SQL) and run it with [`ClickHouse::fetch_all`].
    pub fn query(&self, sql: &str) -> Query {
        self.db.query_raw(sql)
    }

    /// All rows of `query`, typed.
    pub async fn fetch_all<T: RowOwned + RowRead>(&self, query: Query) -> Result<Vec<T>, ChError> {
        self.bounded(query.fetch_all::<T>()).await
    }

    /// All rows of `query` in the ledger's own JSON shape (RFC 3339 times, decimals as
    /// strings), read as the record types the ledger writes: a table's rows need no second
    /// declaration of its columns.
    pub async fn fetch_records<T: serde::de::DeserializeOwned>(
        &self,
        query: Query,
    ) -> Result<Vec<T>, ChError> {
        let bytes = self
            .bounded(async {
                query
                    .with_setting("date_time_output_format", "iso")
                    .with_setting("output_format_json_quote_decimals", "1")
                    .with_setting("output_format_json_quote_64bit_integers", "0")
                    .fetch_bytes("JSONEachRow")?
                    .collect()
                    .await
            })
            .await?;
        bytes
            .split(|b| *b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| serde_json::from_slice(line).map_err(|e| ChError::Decode(e.to_string())))
            .collect()
    }

    /// Inserts typed rows into `table` of the configured database.
    pub async fn insert<T: RowOwned + RowWrite>(
        &self,
        table: &str,
        rows: &[T],
    ) -> Result<(), ChError> {
        self.bounded(async {
            let mut insert = self.db.insert::<T>(table).await?;
            for row in rows {
                insert.write(row).await?;
            }
            insert.end().await
        })
        .await
    }

    /// Inserts JSONEachRow `rows` into `table`. The same `token` for the same rows makes a
    /// replay a no-op, in the table and in the views fed from it.
    pub async fn insert_json_rows(
        &self,
        table: &str,
        rows: Bytes,
        token: &str,
    ) -> Result<(), ChError> {
        let mut insert = self
            .db
            .insert_formatted_with("INSERT INTO {table:Identifier} FORMAT JSONEachRow")
            .with_setting("param_table", table)
            .with_setting("insert_deduplication_token", token)
            .with_setting("insert_deduplicate", "1")
            .with_setting("deduplicate_blocks_in_dependent_materialized_views", "1")
            .with_setting("async_insert", "0")
            .with_setting("date_time_input_format", "best_effort")
            .with_setting("input_format_skip_unknown_fields", "1");
        self.bounded(async {
            insert.send(rows).await?;
            insert.end().await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_data_errors_are_final() {
        let answered = |text: &str| ChError::from(Error::BadResponse(text.into()));
        assert!(
            answered("Code: 27. DB::Exception: Cannot parse input: expected '\"'").is_bad_data()
        );
        assert!(answered("Code: 117").is_bad_data(), "incorrect data");
        assert!(
            !answered("Code: 241. DB::Exception: Memory limit exceeded").is_bad_data(),
            "retry"
        );
        assert!(
            !answered("Code: 60. DB::Exception: Unknown table").is_bad_data(),
            "retry after migration"
        );
        assert!(
            !answered("502 Bad Gateway").is_bad_data(),
            "a proxy in between"
        );
        let refused = ChError::from(Error::Network("connection refused".into()));
        assert!(matches!(refused, ChError::Transport(_)) && !refused.is_bad_data());
        assert!(!ChError::from(Error::TimedOut).is_bad_data());
    }
}

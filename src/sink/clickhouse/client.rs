//! ClickHouse over its HTTP interface. Ledger lines are already JSONEachRow rows, so they
//! are sent as they are on disk: no second encoder that could drift from the record.

use crate::config::validate::ClickHouseSettings;
use bytes::Bytes;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ChError {
    #[error("cannot reach ClickHouse: {0}")]
    Transport(String),
    #[error("ClickHouse answered {status}{}: {message}", code.map(|c| format!(" (code {c})")).unwrap_or_default())]
    Server {
        status: u16,
        code: Option<u32>,
        message: String,
    },
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
];

impl ChError {
    /// Whether ClickHouse rejected the data (set it aside) rather than failed (retry).
    pub fn is_bad_data(&self) -> bool {
        matches!(self, ChError::Server { code: Some(c), .. } if BAD_DATA_CODES.contains(c))
    }
}

#[derive(Clone)]
pub struct ClickHouse {
    http: reqwest::Client,
    url: String,
    user: String,
    password: Option<String>,
    pub database: String,
}

impl ClickHouse {
    pub fn new(s: &ClickHouseSettings) -> Result<ClickHouse, ChError> {
        let mut builder = reqwest::Client::builder()
            .timeout(s.timeout)
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(30));
        if let Some(pem) = &s.ca_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| ChError::Setup(format!("ca_file: {e}")))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok(ClickHouse {
            http: builder.build().map_err(|e| ChError::Setup(e.to_string()))?,
            url: s.url.clone(),
            user: s.user.clone(),
            password: s.password.clone(),
            database: s.database.clone(),
        })
    }

    fn request(&self, params: &[(&str, &str)]) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .post(&self.url)
            .query(params)
            .header("X-ClickHouse-User", &self.user);
        if let Some(p) = &self.password {
            req = req.header("X-ClickHouse-Key", p);
        }
        req
    }

    async fn send(req: reqwest::RequestBuilder) -> Result<String, ChError> {
        let resp = req
            .send()
            .await
            .map_err(|e| ChError::Transport(e.to_string()))?;
        let status = resp.status().as_u16();
        let code = resp
            .headers()
            .get("x-clickhouse-exception-code")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = resp
            .text()
            .await
            .map_err(|e| ChError::Transport(e.to_string()))?;
        if (200..300).contains(&status) && code.is_none() {
            Ok(body)
        } else {
            Err(ChError::Server {
                status,
                code,
                message: body.trim().chars().take(2000).collect(),
            })
        }
    }

    /// Runs one statement (DDL or a query) and returns the response body.
    pub async fn execute(&self, sql: &str) -> Result<String, ChError> {
        Self::send(self.request(&[]).body(sql.to_string())).await
    }

    /// Runs a SELECT in the configured database and returns its rows.
    pub async fn select(&self, sql: &str) -> Result<Vec<serde_json::Value>, ChError> {
        let body = Self::send(
            self.request(&[
                ("database", &self.database),
                ("default_format", "JSONEachRow"),
                ("output_format_json_quote_64bit_integers", "0"),
                ("output_format_json_quote_decimals", "1"),
            ])
            .body(sql.to_string()),
        )
        .await?;
        body.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .map_err(|e| ChError::Transport(format!("bad row from ClickHouse: {e}")))
            })
            .collect()
    }

    /// Inserts JSONEachRow `rows` into `table`. The same `token` for the same rows makes a
    /// replay a no-op, in the table and in the views fed from it.
    pub async fn insert_rows(&self, table: &str, rows: Bytes, token: &str) -> Result<(), ChError> {
        let query = format!("INSERT INTO {table} FORMAT JSONEachRow");
        Self::send(
            self.request(&[
                ("database", &self.database),
                ("query", &query),
                ("insert_deduplication_token", token),
                ("insert_deduplicate", "1"),
                ("deduplicate_blocks_in_dependent_materialized_views", "1"),
                ("async_insert", "0"),
                ("date_time_input_format", "best_effort"),
                ("input_format_skip_unknown_fields", "1"),
            ])
            .body(rows),
        )
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_data_errors_are_final() {
        let server = |code| ChError::Server {
            status: 400,
            code,
            message: String::new(),
        };
        assert!(server(Some(27)).is_bad_data(), "cannot parse input");
        assert!(server(Some(117)).is_bad_data(), "incorrect data");
        assert!(!server(Some(241)).is_bad_data(), "memory limit: retry");
        assert!(
            !server(Some(60)).is_bad_data(),
            "unknown table: retry after migration"
        );
        assert!(!server(None).is_bad_data());
        assert!(!ChError::Transport("refused".into()).is_bad_data());
    }
}

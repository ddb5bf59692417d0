//! Printing a [`Simulation`] as a table, JSON or CSV, with the report's layout.

use super::{RateUse, Row, Simulation};
use crate::report::{Dim, Format, render_csv, render_table};
use serde_json::{Value, json};
use std::fmt::Write as _;

const COLUMNS: [&str; 7] = [
    "requests",
    "matched",
    "denied",
    "unpriced",
    "actual_usd",
    "simulated_usd",
    "difference_usd",
];

fn values(r: &Row) -> [String; 7] {
    [
        r.requests.to_string(),
        r.matched.to_string(),
        r.denied.to_string(),
        r.unpriced.to_string(),
        r.actual.to_string(),
        r.simulated.to_string(),
        r.difference().to_string(),
    ]
}

/// `small for feature "chat": 0.25 observed (6 rejected of 24 judged answers), 24 requests`.
fn rate_text((feature, model): &(String, String), u: &RateUse) -> String {
    let how = if u.observed {
        format!(
            "observed ({} rejected of {} judged answers)",
            u.rejected, u.judged
        )
    } else {
        format!("assumed ({} judged answers seen)", u.judged)
    };
    format!(
        "{model} for feature {feature:?}: {} {how}, {} requests",
        u.rate, u.requests
    )
}

pub fn render(sim: &Simulation, by: &[Dim], format: Format) -> String {
    let mut header: Vec<String> = by.iter().map(|d| d.name().to_string()).collect();
    if header.is_empty() {
        header.push("all".into());
    }
    let key_cols = header.len();
    header.extend(COLUMNS.iter().map(|c| c.to_string()));
    let body: Vec<Vec<String>> = sim
        .rows
        .iter()
        .map(|r| {
            let mut cells = r.key.clone();
            cells.resize(key_cols, String::new());
            cells.extend(values(r));
            cells
        })
        .collect();
    match format {
        Format::Json => {
            let rows: Vec<Value> = sim
                .rows
                .iter()
                .zip(&body)
                .map(|(row, cells)| {
                    let mut obj = serde_json::Map::new();
                    for (h, c) in header.iter().zip(cells) {
                        let count = COLUMNS.contains(&h.as_str()) && !h.ends_with("_usd");
                        let v = match c.parse::<u64>() {
                            Ok(n) if count => n.into(),
                            _ => c.clone().into(),
                        };
                        obj.insert(h.clone(), v);
                    }
                    let rates: Vec<Value> = row
                        .rates
                        .iter()
                        .map(|((feature, model), u)| {
                            json!({
                                "feature": feature, "model": model, "rate": u.rate.to_string(),
                                "source": if u.observed { "observed" } else { "assumed" },
                                "rejected": u.rejected, "judged": u.judged, "requests": u.requests,
                            })
                        })
                        .collect();
                    obj.insert("escalation_rates".into(), rates.into());
                    Value::Object(obj)
                })
                .collect();
            let out = json!({"rows": rows, "assumptions": sim.assumptions});
            serde_json::to_string_pretty(&out).unwrap_or_default() + "\n"
        }
        Format::Csv => {
            // The rates ride in a last column; the assumptions are not rows.
            header.push("escalation_rates".into());
            let body: Vec<Vec<String>> = body
                .into_iter()
                .zip(&sim.rows)
                .map(|(mut cells, row)| {
                    let rates: Vec<String> =
                        row.rates.iter().map(|(k, u)| rate_text(k, u)).collect();
                    cells.push(rates.join("; "));
                    cells
                })
                .collect();
            render_csv(&header, &body)
        }
        Format::Table => {
            let mut out = render_table(&header, key_cols, &body);
            let groups: Vec<&Row> = sim.rows.iter().filter(|r| !r.rates.is_empty()).collect();
            // The total's rates repeat its groups'; list them per group unless there is one.
            let per_group: Vec<&&Row> = if groups.len() > 2 {
                groups.iter().filter(|r| r.key != ["TOTAL"]).collect()
            } else {
                groups.iter().take(1).collect()
            };
            if !per_group.is_empty() {
                out.push_str("\nEscalation rates of cascade steps:\n");
                for row in per_group {
                    for (k, u) in &row.rates {
                        let _ = writeln!(out, "  {}: {}", row.key.join(", "), rate_text(k, u));
                    }
                }
            }
            out.push_str("\nAssumptions:\n");
            for line in &sim.assumptions {
                let _ = writeln!(out, "  - {line}");
            }
            out
        }
    }
}

//! The spend page as one self-contained HTML document: inline CSS and SVG, no script, and a
//! Content-Security-Policy that lets it fetch nothing. Every user-supplied string (team,
//! model, workflow names …) is escaped. Key elements carry stable ids and `data-*`
//! attributes with exact values (`data-usd="0.000123450"`, nano-USD precision) for tools
//! and tests; the text shows the same amounts formatted for reading.

mod fmt;
mod svg;

use super::page::{Day, SpendPage, Waste};
use super::{Dim, Row};
use crate::money::NanoUsd;
use fmt::{count, esc, fraction, label, percent, usd};
use std::fmt::Write as _;
use svg::Column;

const STYLE: &str = r#"
:root { color-scheme: light; --ink: #1d2330; --muted: #667085; --rule: #e4e7ec; --fill: #3565d8; --save: #1f9d6b; --warn: #d9822b; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1240px; padding: 24px; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 32px 0 8px; border-bottom: 1px solid var(--rule); padding-bottom: 4px; }
h3 { font-size: 14px; margin: 18px 0 6px; }
p.meta, .note { color: var(--muted); margin: 4px 0; }
dl.figures { display: flex; flex-wrap: wrap; gap: 12px 32px; margin: 8px 0 12px; }
dl.figures div { min-width: 150px; }
dl.figures dt { color: var(--muted); font-size: 12px; }
dl.figures dd { margin: 0; font-size: 20px; font-variant-numeric: tabular-nums; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 0 28px; }
.grid > div { min-width: 0; overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { padding: 3px 5px; border-bottom: 1px solid var(--rule); text-align: left; white-space: nowrap; }
th { font-size: 12px; color: var(--muted); font-weight: 600; }
td.num, th.num { text-align: right; }
td.key span { display: inline-block; max-width: 190px; overflow: hidden; text-overflow: ellipsis; vertical-align: bottom; }
tr.total td { font-weight: 600; border-top: 2px solid var(--ink); }
tr.others td { color: var(--muted); }
svg.chart { display: block; max-width: 960px; margin: 6px 0 14px; }
svg.chart rect.col { fill: var(--fill); }
svg.chart line.axis { stroke: var(--rule); }
svg.chart text.tick { font-size: 11px; fill: var(--muted); }
svg.bar { display: block; }
svg rect.track { fill: #eef1f6; }
svg.bar rect.fill, svg.stacked rect.spent { fill: var(--fill); }
svg.stacked { display: block; max-width: 960px; margin: 6px 0; }
svg.stacked rect.saved-routing { fill: var(--save); }
svg.stacked rect.saved-cache { fill: #7fcaa8; }
svg.stacked rect.estimated { fill: var(--warn); }
.none { color: var(--muted); font-style: italic; }
.legend { color: var(--muted); font-size: 12px; margin: 0 0 8px; }
.legend i { display: inline-block; width: 10px; height: 10px; margin: 0 4px 0 10px; vertical-align: baseline; }
.legend i:first-child { margin-left: 0; }
.legend i.spent { background: var(--fill); }
.legend i.saved-routing { background: var(--save); }
.legend i.saved-cache { background: #7fcaa8; }
.legend i.estimated { background: var(--warn); }
"#;

/// The whole page.
pub fn render(page: &SpendPage) -> String {
    let mut out = String::with_capacity(64 * 1024);
    out.push_str(concat!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        "<title>Tollgate spend</title><style>"
    ));
    out.push_str(STYLE);
    out.push_str("</style></head><body>\n");
    header(&mut out, page);
    if page.is_empty() {
        out.push_str(
            "<p id=\"no-data\">No requests were recorded in this range: there is no spend to show.</p>\n",
        );
    } else {
        trajectory(&mut out, page);
        breakdowns(&mut out, page);
        workflows(&mut out, page);
        levers(&mut out, page);
        outcomes(&mut out, page);
        pricing(&mut out, page);
    }
    out.push_str("</body></html>\n");
    out
}

fn header(out: &mut String, page: &SpendPage) {
    let _ = writeln!(
        out,
        "<header><h1>Spend</h1><p class=\"meta\" id=\"range\" data-from=\"{from}\" data-to=\"{to}\">\
         {from_text} to {to_text} UTC · days in {tz} · from {source}</p></header>",
        from = page
            .from
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        to = page.to.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        from_text = page.from.format("%Y-%m-%d %H:%M"),
        to_text = page.to.format("%Y-%m-%d %H:%M"),
        tz = esc(page.time_zone.name()),
        source = esc(&page.source),
    );
}

/// A `<dt>`/`<dd>` pair; `dd` is raw markup (escaped by the caller).
fn figure(out: &mut String, name: &str, dd: &str) {
    let _ = write!(out, "<div><dt>{name}</dt><dd>{dd}</dd></div>");
}

fn money(id: &str, v: NanoUsd) -> String {
    format!("<span id=\"{id}\" data-usd=\"{v}\">{}</span>", usd(v))
}

fn trajectory(out: &mut String, page: &SpendPage) {
    let t = &page.total;
    out.push_str("<section id=\"trajectory\"><h2>Trajectory</h2><dl class=\"figures\">");
    figure(
        out,
        "Total spend",
        &format!(
            "<span id=\"period-total\" data-total-usd=\"{}\">{}</span>",
            t.cost,
            usd(t.cost)
        ),
    );
    figure(
        out,
        "Requests",
        &format!(
            "<span id=\"period-requests\" data-requests=\"{}\">{}</span>",
            t.requests,
            count(t.requests)
        ),
    );
    let tokens = t.input_tokens + t.output_tokens;
    figure(
        out,
        "Tokens (input + output)",
        &format!(
            "<span id=\"period-tokens\" data-tokens=\"{tokens}\">{}</span>",
            count(tokens)
        ),
    );
    if let Some(f) = &page.forecast {
        figure(
            out,
            &format!("Month to date ({})", f.month.format("%B %Y")),
            &money("month-to-date", f.month_to_date),
        );
        figure(out, "Month-end forecast", &money("forecast", f.projected));
    }
    out.push_str("</dl>");
    if page.forecast.is_none() {
        out.push_str(
            "<p class=\"note\" id=\"no-forecast\">No month-end forecast: the range starts after \
             the first day of the month (a longer <code>--since</code> covers it).</p>",
        );
    } else {
        out.push_str(
            "<p class=\"note\">The forecast adds the rate of the last <code>alerts.forecast_days</code> \
             days over the rest of the month, as budget alerts do.</p>",
        );
    }
    let max_cost = page.days.iter().map(|d| d.cost).max().unwrap_or_default();
    daily_chart(
        out,
        ("daily-spend", "Spend per day, USD"),
        &usd(max_cost),
        &page.days,
        |d| fraction(d.cost.0.into(), max_cost.0.into()),
        |d| {
            format!(
                "{}: {} ({} requests)",
                d.date,
                usd(d.cost),
                count(d.requests)
            )
        },
    );
    let max_tokens = page.days.iter().map(|d| d.tokens).max().unwrap_or_default();
    daily_chart(
        out,
        ("daily-tokens", "Tokens per day"),
        &count(max_tokens),
        &page.days,
        |d| fraction(d.tokens.into(), max_tokens.into()),
        |d| format!("{}: {} tokens", d.date, count(d.tokens)),
    );
    out.push_str("</section>\n");
}

/// A captioned column per day: `height` its share of the tallest, `title` its hover text.
fn daily_chart(
    out: &mut String,
    (id, caption): (&str, &str),
    max: &str,
    days: &[Day],
    height: impl Fn(&Day) -> f64,
    title: impl Fn(&Day) -> String,
) {
    let cols: Vec<Column> = days
        .iter()
        .map(|d| Column {
            label: d.date.format("%m-%d").to_string(),
            height: height(d),
            title: title(d),
            attrs: day_attrs(d),
        })
        .collect();
    let _ = write!(out, "<h3>{caption}</h3>");
    out.push_str(&svg::columns(id, caption, max, &cols));
}

fn day_attrs(d: &Day) -> String {
    format!(
        "data-date=\"{}\" data-usd=\"{}\" data-tokens=\"{}\" data-requests=\"{}\"",
        d.date, d.cost, d.tokens, d.requests
    )
}

/// A spend table: one row per group with a bar, then (when given) the groups not listed
/// and the total.
fn spend_table(
    out: &mut String,
    id: &str,
    key: &str,
    rows: &[Row],
    others: Option<&(usize, Row)>,
    total: Option<&Row>,
    whole: NanoUsd,
) {
    let max = rows.iter().map(|r| r.cost).max().unwrap_or_default();
    let _ = write!(
        out,
        "<table id=\"{id}\" data-dim=\"{key}\"><thead><tr><th>{key}</th><th class=\"num\">requests</th>\
         <th class=\"num\">tokens</th><th class=\"num\">cost</th><th class=\"num\">share</th><th></th></tr></thead><tbody>"
    );
    let row = |out: &mut String, tr: &str, name: &str, usd_attr: &str, r: &Row, bar: String| {
        let tokens = r.input_tokens + r.output_tokens;
        let _ = write!(
            out,
            "{tr}<td class=\"key\"><span title=\"{name}\">{name}</span></td><td class=\"num\" data-requests=\"{req}\">{req_text}</td>\
             <td class=\"num\" data-tokens=\"{tokens}\">{tok_text}</td>\
             <td class=\"num\" {usd_attr}=\"{cost}\">{cost_text}</td><td class=\"num\">{share}</td><td>{bar}</td></tr>",
            req = r.requests,
            req_text = count(r.requests),
            tok_text = count(tokens),
            cost = r.cost,
            cost_text = usd(r.cost),
            share = percent(r.cost.0.into(), whole.0.into()),
        );
    };
    for r in rows {
        let name = r.key.first().map_or("", String::as_str);
        let tr = format!("<tr data-key=\"{}\">", esc(name));
        let bar = svg::bar(fraction(r.cost.0.into(), max.0.into()));
        row(out, &tr, &label(name), "data-usd", r, bar);
    }
    if let Some((n, r)) = others {
        let bar = svg::bar(fraction(r.cost.0.into(), whole.0.into()));
        let name = format!("{} other {key} values", count(*n as u64));
        row(out, "<tr class=\"others\">", &name, "data-usd", r, bar);
    }
    if let Some(t) = total {
        row(
            out,
            "<tr class=\"total\">",
            "Total",
            "data-total-usd",
            t,
            String::new(),
        );
    }
    out.push_str("</tbody></table>");
}

fn breakdowns(out: &mut String, page: &SpendPage) {
    out.push_str("<section id=\"breakdowns\"><h2>Where the money goes</h2><div class=\"grid\">");
    for b in &page.breakdowns {
        let name = b.dim.name();
        let _ = write!(out, "<div><h3>By {name}</h3>");
        spend_table(
            out,
            &format!("by-{name}"),
            name,
            &b.rows,
            b.others.as_ref(),
            Some(&b.total),
            page.total.cost,
        );
        out.push_str("</div>");
    }
    out.push_str("</div></section>\n");
}

fn workflows(out: &mut String, page: &SpendPage) {
    let _ = write!(
        out,
        "<section id=\"workflows\"><h2>Top workflows</h2><p class=\"note\">The {} most expensive \
         workflows (requests sent with a workflow id); share is of all spend.</p>",
        super::page::TOP_WORKFLOWS
    );
    if page.workflows.is_empty() {
        out.push_str("<p class=\"none\">No request carried a workflow id.</p>");
    } else {
        spend_table(
            out,
            "by-workflow",
            Dim::Workflow.name(),
            &page.workflows,
            None,
            None,
            page.total.cost,
        );
    }
    out.push_str("</section>\n");
}

fn levers(out: &mut String, page: &SpendPage) {
    let l = &page.levers;
    let spent = page.total.cost;
    out.push_str("<section id=\"levers\"><h2>Levers</h2><dl class=\"figures\">");
    figure(
        out,
        "Saved by routing",
        &money("routing-saved", l.routing_saved),
    );
    figure(
        out,
        "Routed requests",
        &format!(
            "<span id=\"routed\" data-requests=\"{0}\">{1}</span>",
            l.routed,
            count(l.routed)
        ),
    );
    figure(
        out,
        "Saved by the cache",
        &money("cache-saved", l.cache_saved),
    );
    figure(
        out,
        "Cache hits",
        &format!(
            "<span id=\"cache-hits\" data-requests=\"{0}\">{1}</span> ({2} of requests)",
            l.cache_hits,
            count(l.cache_hits),
            percent(l.cache_hits.into(), page.total.requests.into())
        ),
    );
    figure(
        out,
        "Escalations",
        &format!(
            "<span id=\"escalations\" data-escalations=\"{0}\">{1}</span>, by {2} request{3}",
            l.escalations,
            count(l.escalations),
            count(l.escalated_requests),
            if l.escalated_requests == 1 { "" } else { "s" }
        ),
    );
    out.push_str("</dl>");
    // Spent plus what the levers saved is what the same traffic would have cost without them.
    let saved_routing = NanoUsd(l.routing_saved.0.max(0));
    let without = spent + saved_routing + l.cache_saved;
    let _ = write!(
        out,
        "<p class=\"note\">Without routing and the cache the same requests would have cost \
         <span id=\"without-levers\" data-usd=\"{without}\">{}</span>.</p>",
        usd(without)
    );
    out.push_str(&svg::stacked(
        "levers-chart",
        "Spent and saved",
        &[
            (
                fraction(spent.0.into(), without.0.into()),
                "spent",
                format!("spent {}", usd(spent)),
            ),
            (
                fraction(saved_routing.0.into(), without.0.into()),
                "saved-routing",
                format!("saved by routing {}", usd(saved_routing)),
            ),
            (
                fraction(l.cache_saved.0.into(), without.0.into()),
                "saved-cache",
                format!("saved by the cache {}", usd(l.cache_saved)),
            ),
        ],
    ));
    if l.routing_saved.0 < 0 {
        out.push_str(
            "<p class=\"note\">Routing cost more than it saved: escalations outweighed the cheaper first answers.</p>",
        );
    }
    out.push_str("</section>\n");
}

fn outcomes(out: &mut String, page: &SpendPage) {
    let o = &page.outcomes;
    let none = || "-".to_string();
    out.push_str("<section id=\"outcomes\"><h2>Cost per outcome</h2><dl class=\"figures\">");
    figure(
        out,
        "Successes",
        &format!(
            "<span id=\"successes\" data-successes=\"{0}\">{1}</span>",
            o.successes,
            count(o.successes)
        ),
    );
    figure(
        out,
        "Cost per success",
        &o.cost_per_success
            .map_or_else(none, |c| money("cost-per-success", c)),
    );
    figure(
        out,
        "Token yield",
        &o.token_yield().map_or_else(none, |y| {
            format!("<span id=\"token-yield\" data-yield=\"{y}\">{y}</span>")
        }),
    );
    out.push_str(
        "</dl><p class=\"note\">Cost per success: the cost of the requests with a reported outcome \
         over the successes among them. Token yield: tokens of successful requests over those of \
         all requests with an outcome.</p><div class=\"grid\">",
    );
    for (dim, groups) in &page.outcomes_by {
        let max = groups
            .iter()
            .filter_map(|(_, r)| r.cost_per_success)
            .max()
            .unwrap_or_default();
        let _ = write!(
            out,
            "<div><h3>By {d}</h3><table id=\"outcomes-by-{d}\" data-dim=\"{d}\"><thead><tr><th>{d}</th>\
             <th class=\"num\">requests</th><th class=\"num\">successes</th><th class=\"num\">cost per success</th>\
             <th class=\"num\">token yield</th><th></th></tr></thead><tbody>",
            d = dim.name()
        );
        for (key, r) in groups {
            let requests: u64 = r.rows.iter().map(|row| row.requests).sum();
            let (cps, cps_attr) = r.cost_per_success.map_or_else(
                || ("-".to_string(), String::new()),
                |c| (usd(c), format!(" data-usd=\"{c}\"")),
            );
            let _ = write!(
                out,
                "<tr data-key=\"{k}\"><td class=\"key\"><span title=\"{name}\">{name}</span></td><td class=\"num\">{req}</td>\
                 <td class=\"num\" data-successes=\"{s}\">{s_text}</td><td class=\"num\"{cps_attr}>{cps}</td>\
                 <td class=\"num\">{y}</td><td>{bar}</td></tr>",
                k = esc(key),
                name = label(key),
                req = count(requests),
                s = r.successes,
                s_text = count(r.successes),
                y = r.token_yield().unwrap_or_else(none),
                bar = svg::bar(fraction(
                    r.cost_per_success.unwrap_or_default().0.into(),
                    max.0.into()
                )),
            );
        }
        out.push_str("</tbody></table></div>");
    }
    out.push_str("</div>");
    waste(out, &page.waste, page.total.cost);
    out.push_str("</section>\n");
}

/// Retry waste: the failed and judge-rejected attempts, by team.
fn waste(out: &mut String, rows: &[Waste], spent: NanoUsd) {
    out.push_str(
        "<h3>Retry waste</h3><p class=\"note\">Attempts that bought no answer: calls that failed \
         (and were retried or fell back) and cascade steps a judge rejected.</p>",
    );
    let Some((total, teams)) = rows.split_last().filter(|(t, _)| t.attempts > 0) else {
        out.push_str(
            "<p class=\"none\" id=\"no-waste\">No failed or rejected attempts in this range.</p>",
        );
        return;
    };
    let max = teams.iter().map(|w| w.cost).max().unwrap_or_default();
    out.push_str(
        "<table id=\"retry-waste\" data-dim=\"team\"><thead><tr><th>team</th><th class=\"num\">attempts</th>\
         <th class=\"num\">tokens</th><th class=\"num\">cost</th><th class=\"num\">of all spend</th><th></th></tr></thead><tbody>",
    );
    for w in teams.iter().chain([total]) {
        let is_total = std::ptr::eq(w, total);
        let (tr, name, attr) = if is_total {
            (
                "<tr class=\"total\">".to_string(),
                "Total".to_string(),
                "data-total-usd",
            )
        } else {
            (
                format!("<tr data-key=\"{}\">", esc(&w.key)),
                label(&w.key),
                "data-usd",
            )
        };
        let _ = write!(
            out,
            "{tr}<td class=\"key\"><span title=\"{name}\">{name}</span></td><td class=\"num\">{a}</td><td class=\"num\" data-tokens=\"{t}\">{t_text}</td>\
             <td class=\"num\" {attr}=\"{c}\">{c_text}</td><td class=\"num\">{share}</td><td>{bar}</td></tr>",
            a = count(w.attempts),
            t = w.tokens,
            t_text = count(w.tokens),
            c = w.cost,
            c_text = usd(w.cost),
            share = percent(w.cost.0.into(), spent.0.into()),
            bar = if is_total {
                String::new()
            } else {
                svg::bar(fraction(w.cost.0.into(), max.0.into()))
            },
        );
    }
    out.push_str("</tbody></table>");
}

fn pricing(out: &mut String, page: &SpendPage) {
    let p = &page.pricing;
    let t = &page.total;
    out.push_str(
        "<section id=\"pricing\"><h2>How sure these figures are</h2><dl class=\"figures\">",
    );
    figure(
        out,
        "Cost on estimated usage",
        &format!(
            "{} ({} of spend)",
            money("estimated-cost", p.estimated_cost),
            percent(p.estimated_cost.0.into(), t.cost.0.into())
        ),
    );
    figure(
        out,
        "Requests with estimated usage",
        &format!(
            "<span id=\"estimated-requests\" data-requests=\"{0}\">{1}</span>",
            p.estimated_requests,
            count(p.estimated_requests)
        ),
    );
    figure(
        out,
        "Unpriced requests",
        &format!(
            "<span id=\"unpriced-requests\" data-requests=\"{0}\">{1}</span> ({2} of requests)",
            p.unpriced_requests,
            count(p.unpriced_requests),
            percent(p.unpriced_requests.into(), t.requests.into())
        ),
    );
    out.push_str("</dl>");
    let measured = NanoUsd(t.cost.0 - p.estimated_cost.0);
    out.push_str(&svg::stacked(
        "pricing-chart",
        "Spend on reported and on estimated usage",
        &[
            (
                fraction(measured.0.into(), t.cost.0.into()),
                "spent",
                format!("on reported usage {}", usd(measured)),
            ),
            (
                fraction(p.estimated_cost.0.into(), t.cost.0.into()),
                "estimated",
                format!("on estimated usage {}", usd(p.estimated_cost)),
            ),
        ],
    ));
    out.push_str(
        "<p class=\"note\">Estimated usage: the provider reported no token counts, so the proxy \
         counted them. Unpriced requests used a model with no price and are in no cost above.</p></section>\n",
    );
}

#[cfg(test)]
mod tests;

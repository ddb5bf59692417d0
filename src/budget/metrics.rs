//! Budgets in Prometheus, read when scraped: spend, reservations, limit and forecast of
//! every configured budget's current period, and the requests each refused.

use super::Budgets;
use crate::config::Validated;
use crate::metrics::sample;
use crate::money::NANOS_PER_USD;
use arc_swap::ArcSwap;
use chrono::Utc;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{LabelPair, MetricFamily, MetricType};
use std::sync::Arc;

const SERIES: [(&str, &str, MetricType); 5] = [
    (
        "tollgate_budget_spend_usd",
        "Spend of the budget's current period (USD)",
        MetricType::GAUGE,
    ),
    (
        "tollgate_budget_reserved_usd",
        "Cost reserved by requests in flight (USD)",
        MetricType::GAUGE,
    ),
    (
        "tollgate_budget_limit_usd",
        "The budget's amount per period (USD)",
        MetricType::GAUGE,
    ),
    (
        "tollgate_budget_forecast_usd",
        "Projected spend at the period's end, from the recent daily rate (USD)",
        MetricType::GAUGE,
    ),
    (
        "tollgate_budget_rejections_total",
        "Requests a blocking budget refused",
        MetricType::COUNTER,
    ),
];

pub struct BudgetCollector {
    budgets: Arc<Budgets>,
    config: Arc<ArcSwap<Validated>>,
    descs: Vec<Desc>,
}

impl BudgetCollector {
    pub fn new(budgets: Arc<Budgets>, config: Arc<ArcSwap<Validated>>) -> BudgetCollector {
        let descs = SERIES
            .iter()
            .map(|(name, help, _)| {
                Desc::new(
                    name.to_string(),
                    help.to_string(),
                    vec!["budget".into()],
                    Default::default(),
                )
                .expect("valid metric")
            })
            .collect();
        BudgetCollector {
            budgets,
            config,
            descs,
        }
    }
}

fn usd(nanos: i64) -> f64 {
    nanos as f64 / NANOS_PER_USD as f64
}

impl Collector for BudgetCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let cfg = self.config.load();
        let statuses = self.budgets.statuses(&cfg.spend, Utc::now());
        if statuses.is_empty() {
            return Vec::new();
        }
        let rejections = self.budgets.rejections();
        SERIES
            .iter()
            .map(|(name, help, kind)| {
                let mut family = MetricFamily::default();
                family.set_name(name.to_string());
                family.set_help(help.to_string());
                family.set_field_type(*kind);
                for s in &statuses {
                    let value = match *name {
                        "tollgate_budget_spend_usd" => usd(s.spend.0),
                        "tollgate_budget_reserved_usd" => usd(s.reserved.0),
                        "tollgate_budget_limit_usd" => usd(s.limit.0),
                        "tollgate_budget_forecast_usd" => usd(s.forecast.0),
                        _ => rejections.get(&s.budget).copied().unwrap_or(0) as f64,
                    };
                    let mut label = LabelPair::default();
                    label.set_name("budget".into());
                    label.set_value(s.budget.clone());
                    let mut metric = sample(*kind, value);
                    metric.set_label(vec![label]);
                    family.mut_metric().push(metric);
                }
                family
            })
            .collect()
    }
}

//! Evaluating an expression over the sample store.
//!
//! Semantics follow PromQL where it matters for alerting, with two
//! deliberate simplifications (documented in docs/alerts.md): `rate` and
//! `increase` use the samples inside the window without extrapolating to its
//! edges, and binary operators between two vectors match series with
//! identical label sets (use `sum by (...)` on both sides to line them up).

use std::collections::BTreeMap;

use super::{
    expr::{AggOp, BinOp, Expr, RangeFn, Selector},
    store::{Labels, Points, Store},
};

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: Labels,
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(f64),
    Vector(Vec<Sample>),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    #[error("the expression is a plain number; it must select at least one metric")]
    Scalar,
}

/// Evaluates a rule expression to one sample per label group.
pub fn eval_vector(e: &Expr, store: &Store) -> Result<Vec<Sample>, EvalError> {
    match eval(e, store) {
        Value::Vector(v) => Ok(v),
        Value::Scalar(_) => Err(EvalError::Scalar),
    }
}

pub fn eval(e: &Expr, store: &Store) -> Value {
    match e {
        Expr::Number(n) => Value::Scalar(*n),
        Expr::Instant(sel) => Value::Vector(
            select(store, sel)
                .filter_map(|(l, p)| {
                    // Only series present in the latest scrape are "now".
                    let (t, v) = p.back()?;
                    (*t >= store.now).then(|| Sample {
                        labels: l.clone(),
                        value: *v,
                    })
                })
                .collect(),
        ),
        Expr::Range { func, sel, range } => {
            let start = store.now - range.as_secs_f64();
            Value::Vector(
                select(store, sel)
                    .filter_map(|(l, p)| {
                        let value = range_fn(*func, p, start)?;
                        Some(Sample {
                            labels: l.clone(),
                            value,
                        })
                    })
                    .collect(),
            )
        }
        Expr::Quantile { q, inner } => match eval(inner, store) {
            Value::Scalar(_) => Value::Vector(Vec::new()),
            Value::Vector(v) => Value::Vector(histogram_quantile(*q, v)),
        },
        Expr::Agg { op, by, inner } => match eval(inner, store) {
            Value::Scalar(s) => Value::Scalar(s),
            Value::Vector(v) => Value::Vector(aggregate(*op, by, v)),
        },
        Expr::Binary { op, lhs, rhs } => binary(*op, eval(lhs, store), eval(rhs, store)),
    }
}

fn select<'a>(
    store: &'a Store,
    sel: &'a Selector,
) -> impl Iterator<Item = (&'a Labels, &'a Points)> + 'a {
    store.series(&sel.name).filter(move |(labels, _)| {
        sel.matchers.iter().all(|m| {
            // An absent label matches as the empty string, as in PromQL.
            m.matches(labels.get(&m.label).map(String::as_str).unwrap_or(""))
        })
    })
}

/// Points at or after `start` (the window), or `None` when too few.
fn range_fn(func: RangeFn, points: &Points, start: f64) -> Option<f64> {
    let w: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(t, _)| *t >= start)
        .collect();
    let (first, last) = (*w.first()?, *w.last()?);
    match func {
        RangeFn::Rate | RangeFn::Increase => {
            if w.len() < 2 || last.0 <= first.0 {
                return None;
            }
            // A counter that went down was reset (restart): count from zero.
            let mut inc = 0.0;
            for pair in w.windows(2) {
                let (a, b) = (pair[0].1, pair[1].1);
                inc += if b >= a { b - a } else { b };
            }
            Some(if func == RangeFn::Rate {
                inc / (last.0 - first.0)
            } else {
                inc
            })
        }
        RangeFn::Delta => (w.len() >= 2).then_some(last.1 - first.1),
        RangeFn::AvgOverTime => Some(w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64),
        RangeFn::MaxOverTime => w.iter().map(|p| p.1).reduce(f64::max),
        RangeFn::MinOverTime => w.iter().map(|p| p.1).reduce(f64::min),
    }
}

fn aggregate(op: AggOp, by: &[String], v: Vec<Sample>) -> Vec<Sample> {
    let mut groups: BTreeMap<Labels, Vec<f64>> = BTreeMap::new();
    for s in v {
        let key: Labels = s
            .labels
            .into_iter()
            .filter(|(k, _)| by.contains(k))
            .collect();
        groups.entry(key).or_default().push(s.value);
    }
    groups
        .into_iter()
        .map(|(labels, vals)| {
            let value = match op {
                AggOp::Sum => vals.iter().sum(),
                AggOp::Max => vals.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                AggOp::Min => vals.iter().copied().fold(f64::INFINITY, f64::min),
                AggOp::Avg => vals.iter().sum::<f64>() / vals.len() as f64,
                AggOp::Count => vals.len() as f64,
            };
            Sample { labels, value }
        })
        .collect()
}

fn apply(op: BinOp, a: f64, b: f64) -> f64 {
    match op {
        BinOp::Add => a + b,
        BinOp::Sub => a - b,
        BinOp::Mul => a * b,
        // x/0 is +Inf or NaN, as in PromQL; comparisons then decide.
        BinOp::Div => a / b,
    }
}

fn binary(op: BinOp, l: Value, r: Value) -> Value {
    match (l, r) {
        (Value::Scalar(a), Value::Scalar(b)) => Value::Scalar(apply(op, a, b)),
        (Value::Vector(v), Value::Scalar(b)) => Value::Vector(
            v.into_iter()
                .map(|s| Sample {
                    value: apply(op, s.value, b),
                    labels: s.labels,
                })
                .collect(),
        ),
        (Value::Scalar(a), Value::Vector(v)) => Value::Vector(
            v.into_iter()
                .map(|s| Sample {
                    value: apply(op, a, s.value),
                    labels: s.labels,
                })
                .collect(),
        ),
        (Value::Vector(lv), Value::Vector(rv)) => {
            let right: BTreeMap<&Labels, f64> = rv.iter().map(|s| (&s.labels, s.value)).collect();
            Value::Vector(
                lv.iter()
                    .filter_map(|s| {
                        let b = right.get(&s.labels)?;
                        Some(Sample {
                            labels: s.labels.clone(),
                            value: apply(op, s.value, *b),
                        })
                    })
                    .collect(),
            )
        }
    }
}

/// PromQL's `histogram_quantile` over classic buckets: groups by every label
/// but `le`, interpolates linearly inside the bucket holding the rank.
fn histogram_quantile(q: f64, v: Vec<Sample>) -> Vec<Sample> {
    let mut groups: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
    for mut s in v {
        let Some(le) = s.labels.remove("le") else {
            continue;
        };
        let Ok(upper) = le.parse::<f64>() else {
            continue;
        };
        groups.entry(s.labels).or_default().push((upper, s.value));
    }
    groups
        .into_iter()
        .filter_map(|(labels, mut buckets)| {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            let value = quantile(q, &mut buckets)?;
            Some(Sample { labels, value })
        })
        .collect()
}

fn quantile(q: f64, buckets: &mut [(f64, f64)]) -> Option<f64> {
    let &(top, total) = buckets.last()?;
    if top != f64::INFINITY || buckets.len() < 2 || total <= 0.0 || total.is_nan() {
        return None;
    }
    // Rates of cumulative counts can be slightly non-monotonic; fix as PromQL does.
    for i in 1..buckets.len() {
        if buckets[i].1 < buckets[i - 1].1 {
            buckets[i].1 = buckets[i - 1].1;
        }
    }
    let rank = q * total;
    let idx = buckets.iter().position(|b| b.1 >= rank)?;
    if idx == buckets.len() - 1 {
        // In the +Inf bucket: the best answer is the highest finite bound.
        return Some(buckets[buckets.len() - 2].0);
    }
    let (end, count_end) = buckets[idx];
    let (start, count_start) = if idx == 0 {
        (0.0_f64.min(end), 0.0)
    } else {
        buckets[idx - 1]
    };
    if count_end == count_start {
        return Some(end);
    }
    Some(start + (end - start) * (rank - count_start) / (count_end - count_start))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

    use super::*;
    use crate::alerts::expr::parse;

    fn store_for(e: &Expr) -> Store {
        Store::new(
            e.selectors().iter().map(|s| s.name.clone()),
            e.max_range(),
            Duration::from_secs(1),
            1000,
        )
    }

    fn one(v: &[Sample]) -> f64 {
        assert_eq!(v.len(), 1, "{v:?}");
        v[0].value
    }

    #[test]
    fn rate_and_ratio_of_rates_by_label() {
        let reg = Registry::new();
        let c = IntCounterVec::new(Opts::new("req_total", "h"), &["svc", "code"]).unwrap();
        reg.register(Box::new(c.clone())).unwrap();
        let e = parse(
            r#"sum by (svc) (rate(req_total{code=~"5.."}[10s])) / sum by (svc) (rate(req_total[10s]))"#,
        )
        .unwrap();
        let mut st = store_for(&e);
        // 10 s apart: a: 90 ok + 10 errors; b: 100 ok.
        st.ingest(0.0, &reg.gather());
        c.with_label_values(&["a", "200"]).inc_by(90);
        c.with_label_values(&["a", "500"]).inc_by(10);
        c.with_label_values(&["b", "200"]).inc_by(100);
        st.ingest(10.0, &reg.gather());
        let v = eval_vector(&e, &st).unwrap();
        // Series born in the second scrape have one point: no rate yet.
        assert!(v.is_empty(), "{v:?}");
        c.with_label_values(&["a", "200"]).inc_by(90);
        c.with_label_values(&["a", "500"]).inc_by(10);
        c.with_label_values(&["b", "200"]).inc_by(100);
        st.ingest(20.0, &reg.gather());
        let v = eval_vector(&e, &st).unwrap();
        // b has no 5xx series, so only a is in the numerator: one result.
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].labels.get("svc").unwrap(), "a");
        assert!((v[0].value - 0.1).abs() < 1e-9, "{v:?}");
        let r = eval_vector(&parse("rate(req_total{svc=\"b\"}[10s])").unwrap(), &st).unwrap();
        assert!((one(&r) - 10.0).abs() < 1e-9);
    }

    #[test]
    fn rate_survives_a_counter_reset_and_window_excludes_old_points() {
        let reg = Registry::new();
        let g = IntGauge::new("x_total", "h").unwrap();
        reg.register(Box::new(g.clone())).unwrap();
        let e = parse("increase(x_total[5s])").unwrap();
        let mut st = store_for(&e);
        for (t, v) in [(0.0, 1000), (10.0, 10), (11.0, 20), (12.0, 5), (13.0, 15)] {
            g.set(v);
            st.ingest(t, &reg.gather());
        }
        // Window [8, 13]: 10 -> 20 (+10), reset to 5 (+5), -> 15 (+10).
        assert_eq!(one(&eval_vector(&e, &st).unwrap()), 25.0);
        let d = eval_vector(&parse("delta(x_total[5s])").unwrap(), &st).unwrap();
        assert_eq!(one(&d), 5.0);
        let m = eval_vector(&parse("max_over_time(x_total[5s])").unwrap(), &st).unwrap();
        assert_eq!(one(&m), 20.0);
        let i = eval_vector(&parse("x_total * 2 - 10").unwrap(), &st).unwrap();
        assert_eq!(one(&i), 20.0);
    }

    #[test]
    fn histogram_quantile_interpolates_like_promql() {
        let reg = Registry::new();
        let h = HistogramVec::new(
            HistogramOpts::new("lat_seconds", "h").buckets(vec![0.1, 0.5, 1.0]),
            &["svc"],
        )
        .unwrap();
        reg.register(Box::new(h.clone())).unwrap();
        let e = parse("histogram_quantile(0.9, sum by (svc, le) (rate(lat_seconds_bucket[1m])))")
            .unwrap();
        let mut st = store_for(&e);
        st.ingest(0.0, &reg.gather());
        h.with_label_values(&["a"]).observe(0.01);
        st.ingest(1.0, &reg.gather());
        // 50 fast, 50 between 0.1 and 0.5: p90 is 80% through the second bucket.
        for _ in 0..50 {
            h.with_label_values(&["a"]).observe(0.05);
            h.with_label_values(&["a"]).observe(0.3);
        }
        st.ingest(11.0, &reg.gather());
        let v = eval_vector(&e, &st).unwrap();
        // rank 90 of 100: 40 into a 50-wide bucket [0.1, 0.5].
        assert!((one(&v) - (0.1 + 0.4 * 0.8)).abs() < 1e-9, "{v:?}");
        // Everything above the last finite bound: that bound is the answer.
        for _ in 0..1000 {
            h.with_label_values(&["a"]).observe(5.0);
        }
        st.ingest(12.0, &reg.gather());
        let v = eval_vector(
            &parse("histogram_quantile(0.99, rate(lat_seconds_bucket[1m]))").unwrap(),
            &st,
        )
        .unwrap();
        assert_eq!(one(&v), 1.0);
    }

    #[test]
    fn instant_selector_sees_only_the_latest_scrape_and_matchers_apply() {
        let reg = Registry::new();
        let g = prometheus::IntGaugeVec::new(Opts::new("up", "h"), &["c"]).unwrap();
        reg.register(Box::new(g.clone())).unwrap();
        let e = parse(r#"up{c!="x"}"#).unwrap();
        let mut st = store_for(&e);
        g.with_label_values(&["x"]).set(1);
        g.with_label_values(&["y"]).set(0);
        st.ingest(0.0, &reg.gather());
        assert_eq!(one(&eval_vector(&e, &st).unwrap()), 0.0);
        assert_eq!(eval_vector(&parse("up").unwrap(), &st).unwrap().len(), 2);
        g.remove_label_values(&["y"]).unwrap();
        st.ingest(1.0, &reg.gather());
        assert!(eval_vector(&e, &st).unwrap().is_empty());
        assert_eq!(
            eval_vector(&parse("1 + 1").unwrap(), &st),
            Err(EvalError::Scalar)
        );
    }
}

//! MeshMetric's `OpenTelemetry` backends: every `refreshInterval` the proxy pushes its
//! metrics, as the profiles select them, to the collector over OTLP/gRPC (the official
//! protos). Counters go as cumulative monotonic sums, gauges as gauges, histograms as
//! cumulative histograms with the sidecar's bucket bounds; labels become attributes.
//! The conversion reads the same exposition text Prometheus scrapes, so both views
//! always agree; it is pure and tested below.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use causeway_api::exposition::parse_sample;
use causeway_api::proxy_config::MetricsPush;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use crate::proxy::Proxy;

/// How long one push may take.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..KeyValue::default()
    }
}

fn attributes(labels: &[(&str, String)]) -> Vec<KeyValue> {
    labels
        .iter()
        .filter(|(k, _)| *k != "le")
        .map(|(k, v)| attribute(k, v))
        .collect()
}

/// A sample's labels but `le`, as a histogram point's key.
type Labels = Vec<(String, String)>;

/// A histogram's samples for one label set, gathered from `_bucket`, `_sum`, `_count`.
#[derive(Default)]
struct HistogramPoint {
    /// (bound, cumulative count), `+Inf` last.
    buckets: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
}

/// The metrics of `text` (the text format) as OTLP: one metric per family, its samples
/// as data points (`start` and `now` in ns since the epoch).
pub(crate) fn to_otlp(text: &str, start: u64, now: u64) -> Vec<Metric> {
    // Family -> its type, and family -> its help.
    let mut kinds: BTreeMap<&str, &str> = BTreeMap::new();
    let mut helps: BTreeMap<&str, &str> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut w = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (w.next(), w.next()) {
                kinds.insert(name, kind);
            }
        } else if let Some((name, help)) = line
            .strip_prefix("# HELP ")
            .and_then(|rest| rest.split_once(' '))
        {
            helps.insert(name, help);
        }
    }
    let mut numbers: BTreeMap<&str, Vec<NumberDataPoint>> = BTreeMap::new();
    let mut histograms: BTreeMap<&str, BTreeMap<Labels, HistogramPoint>> = BTreeMap::new();
    for line in text.lines() {
        let Some(s) = parse_sample(line) else {
            continue;
        };
        let histogram = ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let base = s.name.strip_suffix(suffix)?;
            (kinds.get(base) == Some(&"histogram")).then_some((base, *suffix))
        });
        match histogram {
            Some((family, suffix)) => {
                let key: Labels = s
                    .labels
                    .iter()
                    .filter(|(k, _)| *k != "le")
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect();
                let point = histograms
                    .entry(family)
                    .or_default()
                    .entry(key)
                    .or_default();
                match suffix {
                    "_bucket" => {
                        let le =
                            s.labels
                                .iter()
                                .find(|(k, _)| *k == "le")
                                .and_then(|(_, v)| match v.as_str() {
                                    "+Inf" => Some(f64::INFINITY),
                                    v => v.parse().ok(),
                                });
                        if let Some(le) = le {
                            point.buckets.push((le, s.value as u64));
                        }
                    }
                    "_sum" => point.sum = s.value,
                    _ => point.count = s.value as u64,
                }
            }
            None => numbers.entry(s.name).or_default().push(NumberDataPoint {
                attributes: attributes(&s.labels),
                start_time_unix_nano: start,
                time_unix_nano: now,
                value: Some(number_data_point::Value::AsDouble(s.value)),
                ..Default::default()
            }),
        }
    }
    let mut out = Vec::new();
    for (name, points) in numbers {
        let kind = kinds.get(name).copied().unwrap_or("gauge");
        let data = match kind {
            "counter" => metric::Data::Sum(Sum {
                data_points: points,
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            }),
            _ => metric::Data::Gauge(Gauge {
                data_points: points,
            }),
        };
        out.push(Metric {
            name: name.to_owned(),
            description: helps.get(name).copied().unwrap_or_default().to_owned(),
            data: Some(data),
            ..Default::default()
        });
    }
    for (name, points) in histograms {
        let data_points = points
            .into_iter()
            .map(|(labels, mut p)| {
                p.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                let mut below = 0;
                let bucket_counts = p
                    .buckets
                    .iter()
                    .map(|(_, cumulative)| {
                        let n = cumulative.saturating_sub(below);
                        below = *cumulative;
                        n
                    })
                    .collect();
                HistogramDataPoint {
                    attributes: labels.iter().map(|(k, v)| attribute(k, v)).collect(),
                    start_time_unix_nano: start,
                    time_unix_nano: now,
                    count: p.count,
                    sum: Some(p.sum),
                    bucket_counts,
                    explicit_bounds: p
                        .buckets
                        .iter()
                        .map(|(le, _)| *le)
                        .filter(|le| le.is_finite())
                        .collect(),
                    ..Default::default()
                }
            })
            .collect();
        out.push(Metric {
            name: name.to_owned(),
            description: helps.get(name).copied().unwrap_or_default().to_owned(),
            data: Some(metric::Data::Histogram(Histogram {
                data_points,
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            })),
            ..Default::default()
        });
    }
    out
}

/// Pushes `proxy`'s metrics to `target` every interval until aborted; a failed push is
/// counted and logged, and the next one goes on time.
pub(crate) async fn push(proxy: Arc<Proxy>, target: MetricsPush) {
    let Some(channel) = crate::otlp::channel(&target.endpoint, PUSH_TIMEOUT, "metrics") else {
        return;
    };
    let mut client = MetricsServiceClient::new(channel);
    let start = unix_nanos(SystemTime::now());
    let mut tick = tokio::time::interval(target.interval.as_std().max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let Some(cfg) = proxy.current() else {
            continue;
        };
        let own = crate::admin::render_metrics(&proxy);
        let selected = crate::metrics_content::select(
            &own,
            &crate::metrics_content::Selection::new(&cfg.metrics_content),
        );
        let service = cfg
            .inbounds
            .first()
            .map_or(cfg.dataplane.as_str(), |i| i.service.as_str());
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![
                        attribute("service.name", service),
                        attribute("causeway.mesh", &cfg.mesh),
                        attribute("causeway.zone", &cfg.zone),
                        attribute("causeway.dataplane", &cfg.dataplane),
                    ],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics: to_otlp(&selected, start, unix_nanos(SystemTime::now())),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let result = client.export(request).await;
        let ok = result.is_ok();
        proxy.metrics.metric_pushes[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(_) if failing => {
                failing = false;
                tracing::info!(endpoint = %target.endpoint, "pushing metrics again");
            }
            Ok(_) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(endpoint = %target.endpoint, error = %e.message(), "pushing metrics failed; retrying at each interval");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_histograms_become_otlp_metrics() {
        let text = "\
# HELP x_requests_total Requests.
# TYPE x_requests_total counter
x_requests_total{service=\"a\",code=\"200\"} 3
# HELP x_in_flight In flight.
# TYPE x_in_flight gauge
x_in_flight{service=\"a\"} 1
# HELP x_seconds Latency.
# TYPE x_seconds histogram
x_seconds_bucket{service=\"a\",le=\"0.1\"} 2
x_seconds_bucket{service=\"a\",le=\"1\"} 3
x_seconds_bucket{service=\"a\",le=\"+Inf\"} 4
x_seconds_sum{service=\"a\"} 7.5
x_seconds_count{service=\"a\"} 4
";
        let m = to_otlp(text, 10, 20);
        let names: Vec<&str> = m.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["x_in_flight", "x_requests_total", "x_seconds"]);
        let Some(metric::Data::Sum(sum)) = &m[1].data else {
            panic!("{:?}", m[1]);
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let p = &sum.data_points[0];
        assert_eq!(p.value, Some(number_data_point::Value::AsDouble(3.0)));
        assert_eq!((p.start_time_unix_nano, p.time_unix_nano), (10, 20));
        assert_eq!(
            p.attributes,
            [attribute("service", "a"), attribute("code", "200")]
        );
        assert_eq!(m[1].description, "Requests.");
        assert!(matches!(&m[0].data, Some(metric::Data::Gauge(_))));
        let Some(metric::Data::Histogram(h)) = &m[2].data else {
            panic!("{:?}", m[2]);
        };
        let p = &h.data_points[0];
        assert_eq!(p.explicit_bounds, [0.1, 1.0]);
        assert_eq!(p.bucket_counts, [2, 1, 1]);
        assert_eq!((p.count, p.sum), (4, Some(7.5)));
        assert_eq!(p.attributes, [attribute("service", "a")]);
    }
}

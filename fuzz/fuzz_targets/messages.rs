//! DDS and KDS messages as each side decodes them off its stream, fed to what handles
//! them. The first byte picks the stream direction:
//! - 0, sidecar -> zone (DDS `ProxyMessage`): a registration's Dataplane is parsed and
//!   validated, a report's golden signals folded into a zone's aggregate;
//! - 1, zone -> sidecar (DDS `ControlMessage`): a config is taken in as the sidecar does;
//! - 2, zone -> global (KDS `ZoneMessage`): a change set's resources are parsed and
//!   validated, a stats report read into rows as `GET /stats` serves them;
//! - 3, global -> zone (KDS `GlobalMessage`): a change set's resources are parsed and
//!   validated.
#![no_main]

use causeway_api::Resource;
use causeway_api::kds::dds::{ControlMessage, ProxyMessage, control_message, proxy_message};
use causeway_api::kds::{GlobalMessage, ZoneMessage, change, global_message, zone_message};
use causeway_api::stats::{Aggregator, By, Filter, Signal, Window, rows};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fn resource(json: &[u8]) {
    if let Ok(r) = Resource::from_json(json) {
        let _ = causeway_api::validate(&r);
    }
}

fn changes(list: Vec<causeway_api::kds::Change>) {
    for c in list {
        if let Some(change::Change::Upsert(json)) = c.change {
            resource(&json);
        }
    }
}

/// Every grouping and window of `signals`, as `GET /meshes/{mesh}/stats` serves them.
fn all_rows(signals: &[Signal]) {
    for by in [By::Service, By::Zone, By::Caller, By::Callee] {
        for window in [
            Window::OneMinute,
            Window::FiveMinutes,
            Window::FifteenMinutes,
        ] {
            let _ = rows(signals, by, window, &Filter::default());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&direction, bytes)) = data.split_first() else {
        return;
    };
    match direction % 4 {
        0 => match ProxyMessage::decode(bytes).ok().and_then(|m| m.msg) {
            Some(proxy_message::Msg::Hello(h)) => resource(&h.dataplane_json),
            Some(proxy_message::Msg::Stats(stats)) => {
                let mut zone = Aggregator::default();
                let services = vec!["backend".to_string(), "web".to_string()];
                zone.record_report("default", &services, stats, 3_600_000);
                let signals: Vec<Signal> = zone
                    .windows(3_600_000)
                    .into_iter()
                    .map(|(k, w)| {
                        Signal::reported("zone-a", &causeway_api::stats::zone_signal(k, w))
                    })
                    .collect();
                all_rows(&signals);
            }
            _ => {}
        },
        1 => {
            if let Some(control_message::Msg::Config(snap)) =
                ControlMessage::decode(bytes).ok().and_then(|m| m.msg)
            {
                let _ = causeway_dataplane::fuzzing::dds_config(&snap.json);
            }
        }
        2 => match ZoneMessage::decode(bytes).ok().and_then(|m| m.msg) {
            Some(zone_message::Msg::Resources(set)) => changes(set.changes),
            Some(zone_message::Msg::Stats(stats)) => {
                let signals: Vec<Signal> = stats
                    .signals
                    .iter()
                    .map(|s| Signal::reported("zone-a", s))
                    .collect();
                all_rows(&signals);
            }
            _ => {}
        },
        _ => {
            if let Some(global_message::Msg::Changes(set)) =
                GlobalMessage::decode(bytes).ok().and_then(|m| m.msg)
            {
                changes(set.changes);
            }
        }
    }
});

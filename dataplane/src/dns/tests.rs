use hickory_proto::op::{Message, Query};
use hickory_proto::rr::Name;

use super::*;

fn names() -> Names {
    let cfg: ProxyConfig = serde_json::from_value(serde_json::json!({
        "version": "v1", "mesh": "default", "dataplane": "web-1", "zone": "zone-a",
        "address": "127.0.0.1", "mtls": "Off", "identity": null, "inbounds": [],
        "outbounds": [
            {"port": 0, "vip": "241.0.0.1", "address": "127.0.0.1", "service": "backend",
             "protocol": "http", "identity": null, "loadBalancer": "RoundRobin", "groups": []},
            {"port": 0, "vip": "241.0.0.2", "zone": "zone-b", "address": "127.0.0.1",
             "service": "backend", "protocol": "http", "identity": null,
             "loadBalancer": "RoundRobin", "groups": []},
            // An explicit outbound has no name.
            {"port": 10001, "address": "127.0.0.1", "service": "db", "protocol": "tcp",
             "identity": null, "loadBalancer": "RoundRobin", "groups": []},
        ],
        "transparent": {"port": 15001, "passthrough": true, "dnsPort": 15053,
                        "dnsSuffix": "Mesh."},
    }))
    .unwrap();
    Names::from_config(&cfg)
}

fn query(name: &str, kind: RecordType) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(4242).set_recursion_desired(true);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
    m.to_vec().unwrap()
}

fn answered(r: Reply) -> Message {
    match r {
        Reply::Answer(bytes) => Message::from_vec(&bytes).unwrap(),
        other => panic!("{other:?}"),
    }
}

/// `<service>.mesh` and `<service>.<zone>.mesh` answer with their virtual IPs, in any
/// case, with the query's id and question; AAAA gets no record (the client takes
/// the A); an unknown mesh name is NXDOMAIN; everything else goes upstream.
#[test]
fn mesh_names_are_answered_and_the_rest_forwarded() {
    let names = names();
    let a = answered(reply(&query("backend.mesh.", RecordType::A), &names));
    assert_eq!(a.id(), 4242);
    assert_eq!(a.response_code(), ResponseCode::NoError);
    assert!(a.authoritative() && a.recursion_desired());
    assert_eq!(a.queries().len(), 1);
    let ips: Vec<_> = a.answers().iter().map(|r| r.data().clone()).collect();
    assert_eq!(ips, [RData::A(A(Ipv4Addr::new(241, 0, 0, 1)))]);
    assert_eq!(a.answers()[0].ttl(), MESH_TTL);

    let pinned = answered(reply(&query("Backend.Zone-B.MESH", RecordType::A), &names));
    assert_eq!(
        pinned.answers()[0].data(),
        &RData::A(A(Ipv4Addr::new(241, 0, 0, 2)))
    );

    let v6 = answered(reply(&query("backend.mesh.", RecordType::AAAA), &names));
    assert_eq!(v6.response_code(), ResponseCode::NoError);
    assert!(v6.answers().is_empty());

    for unknown in ["db.mesh.", "nobody.mesh.", "mesh.", "backend.zone-c.mesh."] {
        let a = answered(reply(&query(unknown, RecordType::A), &names));
        assert_eq!(a.response_code(), ResponseCode::NXDomain, "{unknown}");
    }
    for outside in ["example.com.", "backend.mesh.example.com.", "notmesh."] {
        assert_eq!(
            reply(&query(outside, RecordType::A), &names),
            Reply::Forward,
            "{outside}"
        );
    }
}

/// Garbage gets FORMERR when its id can be read, and nothing when not even that.
#[test]
fn bad_messages_get_formerr_or_nothing() {
    let names = names();
    let a = answered(reply(&[0x12, 0x34, 0xff], &names));
    assert_eq!(a.id(), 0x1234);
    assert_eq!(a.response_code(), ResponseCode::FormErr);
    assert_eq!(reply(&[0x12], &names), Reply::Drop);
    let s = Message::from_vec(&servfail(&query("example.com.", RecordType::A)).unwrap()).unwrap();
    assert_eq!((s.id(), s.response_code()), (4242, ResponseCode::ServFail));
}

#[test]
fn nameservers_come_from_resolv_conf() {
    let conf = "# generated\nsearch example.com\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\n\
                nameserver not-an-ip\noptions ndots:5\n nameserver 1.1.1.1\n";
    let got: Vec<String> = nameservers(conf).iter().map(ToString::to_string).collect();
    assert_eq!(got, ["10.0.0.2:53", "[fe80::1]:53", "1.1.1.1:53"]);
}

//! Every event type warren emits.

/// Audit events (`<resource>_created|updated|deleted.v0`, `agent_session_start|stop.v0`) and
/// traffic events, with ngrok's names.
pub(crate) const EVENT_TYPES: &[&str] = &[
    "api_key_created.v0",
    "api_key_updated.v0",
    "api_key_deleted.v0",
    "tunnel_credential_created.v0",
    "tunnel_credential_updated.v0",
    "tunnel_credential_deleted.v0",
    "user_created.v0",
    "user_updated.v0",
    "user_deleted.v0",
    "ip_policy_created.v0",
    "ip_policy_updated.v0",
    "ip_policy_deleted.v0",
    "ip_policy_rule_created.v0",
    "ip_policy_rule_updated.v0",
    "ip_policy_rule_deleted.v0",
    "ip_restriction_created.v0",
    "ip_restriction_updated.v0",
    "ip_restriction_deleted.v0",
    "domain_created.v0",
    "domain_updated.v0",
    "domain_deleted.v0",
    "tcp_address_created.v0",
    "tcp_address_updated.v0",
    "tcp_address_deleted.v0",
    "tls_certificate_created.v0",
    "tls_certificate_updated.v0",
    "tls_certificate_deleted.v0",
    "event_destination_created.v0",
    "event_destination_updated.v0",
    "event_destination_deleted.v0",
    "event_subscription_created.v0",
    "event_subscription_updated.v0",
    "event_subscription_deleted.v0",
    "traffic_policy_created.v0",
    "traffic_policy_updated.v0",
    "traffic_policy_deleted.v0",
    "endpoint_created.v0",
    "endpoint_updated.v0",
    "endpoint_deleted.v0",
    "agent_session_start.v0",
    "agent_session_stop.v0",
    "http_request_complete.v0",
    "tcp_connection_closed.v0",
];

/// Sent when an HTTP request through an endpoint completes.
pub(crate) const HTTP_REQUEST_COMPLETE: &str = "http_request_complete.v0";
/// Sent when a visitor's connection to a tcp or tls endpoint closes.
pub(crate) const TCP_CONNECTION_CLOSED: &str = "tcp_connection_closed.v0";

/// The fields of a traffic event's object, dotted; `headers` hold any header name below them.
const HTTP_FIELDS: &[&str] = &[
    "conn.client_ip",
    "conn.client_port",
    "conn.server_ip",
    "conn.server_port",
    "conn.server_name",
    "conn.start_ts",
    "conn.end_ts",
    "endpoint.id",
    "endpoint.url",
    "endpoint.proto",
    "tunnel_session.id",
    "http.request.method",
    "http.request.url.scheme",
    "http.request.url.host",
    "http.request.url.path",
    "http.request.url.query",
    "http.request.url.raw",
    "http.request.headers",
    "http.request.headers_truncated",
    "http.request.user_agent",
    "http.request.body_length",
    "http.request.version",
    "http.response.status_code",
    "http.response.headers",
    "http.response.headers_truncated",
    "http.response.body_length",
    "http.response_time_ms",
    "tls.version",
    "tls.cipher_suite",
];
const TCP_FIELDS: &[&str] = &[
    "conn.client_ip",
    "conn.client_port",
    "conn.server_ip",
    "conn.server_port",
    "conn.start_ts",
    "conn.end_ts",
    "conn.bytes_in",
    "conn.bytes_out",
    "endpoint.id",
    "endpoint.url",
    "endpoint.proto",
    "tunnel_session.id",
];

/// Why `field` is not a field of `event_type`'s object, if it is not. Traffic events have a
/// fixed set (a field, an object holding fields, or one header); a field that names nothing
/// would silently select nothing, so it is refused. Audit objects are the API's resources,
/// whose fields the API documents.
/// Whether events of this type are traffic events (built by the ingress, never in the outbox).
pub(crate) fn is_traffic(event_type: &str) -> bool {
    event_type == HTTP_REQUEST_COMPLETE || event_type == TCP_CONNECTION_CLOSED
}

pub(crate) fn unknown_field(event_type: &str, field: &str) -> Option<String> {
    let known = match event_type {
        HTTP_REQUEST_COMPLETE => HTTP_FIELDS,
        TCP_CONNECTION_CLOSED => TCP_FIELDS,
        _ => return None,
    };
    let ok = known.iter().any(|k| {
        *k == field
            || k.strip_prefix(field).is_some_and(|rest| rest.starts_with('.'))
            || (k.ends_with(".headers")
                && field.strip_prefix(*k).is_some_and(|h| h.len() > 1 && h.starts_with('.')))
    });
    (!ok).then(|| format!("{event_type} has no field {field:?}; see docs/EVENTS.md for its fields"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn traffic_fields_are_known_objects_leaves_or_headers() {
        use super::{HTTP_REQUEST_COMPLETE as H, TCP_CONNECTION_CLOSED as T, unknown_field};
        for ok in ["conn", "conn.client_ip", "http.request", "http.request.headers.user-agent", "tls"] {
            assert_eq!(unknown_field(H, ok), None, "{ok}");
        }
        for bad in
            ["con", "http.request.urlpath", "conn.client_ip.x", "http.request.headers.", "conn.bytes_in"]
        {
            assert!(unknown_field(H, bad).is_some(), "{bad}");
        }
        assert_eq!(unknown_field(T, "conn.bytes_in"), None);
        assert_eq!(unknown_field("api_key_created.v0", "anything"), None);
    }

    #[test]
    fn every_audited_record_has_its_three_event_types() {
        for (_, name) in warren_store::events::AUDIT_KINDS {
            for op in ["created", "updated", "deleted"] {
                let t = format!("{name}_{op}.v0");
                assert!(super::EVENT_TYPES.contains(&t.as_str()), "{t}");
            }
        }
    }
}

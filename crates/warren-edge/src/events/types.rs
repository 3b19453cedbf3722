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
    "agent_session_start.v0",
    "agent_session_stop.v0",
    "http_request_complete.v0",
    "tcp_connection_closed.v0",
];

/// Sent when an HTTP request through an endpoint completes.
pub(crate) const HTTP_REQUEST_COMPLETE: &str = "http_request_complete.v0";
/// Sent when a visitor's connection to a tcp or tls endpoint closes.
pub(crate) const TCP_CONNECTION_CLOSED: &str = "tcp_connection_closed.v0";

#[cfg(test)]
mod tests {
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

//! The one change path: every change to an account goes through [`Admin`]. Each method makes
//! its store writes through the caller's store (which records each audit event in the write's
//! transaction, naming the key, user, role and address that acted), then drops or refreshes
//! what the edge holds in memory that the change made stale: on this node at once; sessions,
//! rules and cloud endpoints on the cluster's other nodes through `rules::announce`, while
//! their cached IP restrictions and event routes catch up within their TTL (5 s). API
//! handlers check who may do what and shape JSON; they do not change the account through a
//! store themselves (a test in `api` holds them to it), so no handler can forget a cache or a
//! session that a change should reach.
//!
//! The `_here` methods are what another node's announcement runs on this one.

use warren_store::{
    ApiKey, CloudEndpoint, CloudEndpointChange, CloudEndpointSpec, Credential, CredentialUpdate,
    EventDestination, EventSource, EventSubscription, IpPolicy, IpPolicyRule, IpPolicyRuleUpdate,
    IpRestriction, IpRestrictionUpdate, NewApiKey, NewCredential, NewEventDestination, ReservedAddr,
    ReservedDomain, Role, Store, StoreError, Token, UploadedCertificate, User,
};

use crate::api::{ApiError, Principal};
use crate::{Shared, cloud, rules};

/// Changes to one account, made by one caller.
pub(crate) struct Admin<'a> {
    shared: &'a Shared,
    /// The store acting as the caller: its writes name who made them.
    store: &'a Store,
    account_id: &'a str,
}

impl Shared {
    /// The change path for `p`'s account, acting as `p`.
    pub(crate) fn admin<'a>(&'a self, p: &'a Principal) -> Admin<'a> {
        Admin { shared: self, store: &p.store, account_id: &p.account_id }
    }
}

impl Admin<'_> {
    // API keys: nothing in memory depends on them (each request looks its key up).

    pub(crate) async fn create_api_key(&self, new: &NewApiKey) -> Result<(ApiKey, Token), StoreError> {
        self.store.create_api_key(self.account_id, new).await
    }

    pub(crate) async fn update_api_key(
        &self,
        id: &str,
        description: Option<String>,
        metadata: Option<String>,
    ) -> Result<ApiKey, StoreError> {
        self.store.update_api_key(self.account_id, id, description, metadata).await
    }

    pub(crate) async fn delete_api_key(&self, id: &str) -> Result<(), StoreError> {
        self.store.delete_api_key(self.account_id, id).await
    }

    // Authtokens: live sessions were admitted under a token's rules.

    pub(crate) async fn create_credential(
        &self,
        new: &NewCredential,
    ) -> Result<(Credential, Token), StoreError> {
        self.store.create_credential(self.account_id, new).await
    }

    /// Returns the updated authtoken and how many of its sessions (on this node) restarted
    /// because its ACL or IP policies changed.
    pub(crate) async fn update_credential(
        &self,
        current: &Credential,
        up: &CredentialUpdate,
    ) -> Result<(Credential, usize), StoreError> {
        let updated = self.store.update_credential(self.account_id, &current.id, up).await?;
        let mut restarted = 0;
        if updated.acl != current.acl || updated.ip_policy_ids != current.ip_policy_ids {
            // Live sessions were admitted under the old rules; their agents reconnect under the new.
            restarted =
                self.shared.end_sessions_using(&current.id, "authtoken rules changed; reconnect").await;
        }
        Ok((updated, restarted))
    }

    /// Deletes an authtoken and ends every live session that authenticated with it; returns
    /// how many on this node.
    pub(crate) async fn delete_credential(&self, id: &str) -> Result<usize, StoreError> {
        self.shared.revoke_credential(self.store, self.account_id, id).await
    }

    // Users: their limits bound their authtokens; removing one revokes them.

    pub(crate) async fn create_user(&self, email: &str, role: Role) -> Result<User, StoreError> {
        self.store.create_user(self.account_id, email, role).await
    }

    pub(crate) async fn set_user_role(&self, id: &str, role: Role) -> Result<User, StoreError> {
        self.store.set_user_role(self.account_id, id, role).await
    }

    pub(crate) async fn set_user_password(&self, id: &str, password: &str) -> Result<User, StoreError> {
        self.store.set_user_password(self.account_id, id, password).await
    }

    /// Sessions of the user's authtokens were admitted under the old limits: their agents
    /// reconnect under the new.
    pub(crate) async fn set_user_limits(
        &self,
        id: &str,
        acl: Option<Option<Vec<String>>>,
        ip_policy_ids: Option<Vec<String>>,
    ) -> Result<User, StoreError> {
        let user = self.store.set_user_limits(self.account_id, id, acl, ip_policy_ids).await?;
        for t in self.store.credentials_of(self.account_id, id).await? {
            self.shared.end_sessions_using(&t, "the user's authtoken limits changed; reconnect").await;
        }
        Ok(user)
    }

    /// Removes a user with their API keys and authtokens; the sessions those authtokens
    /// started end. Returns the revoked authtokens' ids.
    pub(crate) async fn delete_user(&self, id: &str) -> Result<Vec<String>, StoreError> {
        let revoked = self.store.delete_user(self.account_id, id).await?;
        for credential in &revoked {
            self.shared.end_sessions_using(credential, "the authtoken's owner was removed").await;
        }
        Ok(revoked)
    }

    // The account's traffic policy runs on every session's endpoints and on cloud endpoints.

    /// Returns when it was set and how many sessions (on this node) restarted under it.
    pub(crate) async fn set_account_traffic_policy(&self, text: &str) -> Result<(String, usize), StoreError> {
        let updated_at = self.store.set_account_traffic_policy(self.account_id, text).await?;
        let n = self
            .shared
            .end_sessions_of(self.account_id, "the account's traffic policy changed; reconnect")
            .await;
        Ok((updated_at, n))
    }

    /// `None` when the account had none.
    pub(crate) async fn delete_account_traffic_policy(&self) -> Result<Option<usize>, StoreError> {
        if !self.store.delete_account_traffic_policy(self.account_id).await? {
            return Ok(None);
        }
        let n = self
            .shared
            .end_sessions_of(self.account_id, "the account's traffic policy changed; reconnect")
            .await;
        Ok(Some(n))
    }

    // IP policies, rules and restrictions: the cached restrictions, and sessions bound under
    // a policy whose rules changed.

    pub(crate) async fn create_ip_policy(
        &self,
        description: &str,
        metadata: &str,
    ) -> Result<IpPolicy, StoreError> {
        self.store.create_ip_policy(self.account_id, description, metadata).await
    }

    pub(crate) async fn update_ip_policy(
        &self,
        id: &str,
        description: Option<&str>,
        metadata: Option<&str>,
    ) -> Result<IpPolicy, StoreError> {
        self.store.update_ip_policy(self.account_id, id, description, metadata).await
    }

    pub(crate) async fn delete_ip_policy(&self, id: &str) -> Result<(), StoreError> {
        self.store.delete_ip_policy(self.account_id, id).await?;
        self.shared.accounts.ip_rules.invalidate(self.account_id);
        Ok(())
    }

    pub(crate) async fn create_ip_policy_rule(
        &self,
        ip_policy_id: &str,
        cidr: &str,
        action: &str,
        description: &str,
        metadata: &str,
    ) -> Result<IpPolicyRule, StoreError> {
        let r = self
            .store
            .create_ip_policy_rule(self.account_id, ip_policy_id, cidr, action, description, metadata)
            .await?;
        self.shared.ip_policy_changed(self.account_id, &r.ip_policy_id).await;
        Ok(r)
    }

    pub(crate) async fn update_ip_policy_rule(
        &self,
        id: &str,
        up: &IpPolicyRuleUpdate,
    ) -> Result<IpPolicyRule, StoreError> {
        let r = self.store.update_ip_policy_rule(self.account_id, id, up).await?;
        self.shared.ip_policy_changed(self.account_id, &r.ip_policy_id).await;
        Ok(r)
    }

    pub(crate) async fn delete_ip_policy_rule(&self, id: &str) -> Result<(), StoreError> {
        let r = self.store.get_ip_policy_rule(self.account_id, id).await?;
        self.store.delete_ip_policy_rule(self.account_id, id).await?;
        self.shared.ip_policy_changed(self.account_id, &r.ip_policy_id).await;
        Ok(())
    }

    pub(crate) async fn create_ip_restriction(
        &self,
        kind: &str,
        enforced: bool,
        ip_policy_ids: &[String],
        description: &str,
        metadata: &str,
    ) -> Result<IpRestriction, StoreError> {
        let x = self
            .store
            .create_ip_restriction(self.account_id, kind, enforced, ip_policy_ids, description, metadata)
            .await?;
        self.shared.accounts.ip_rules.invalidate(self.account_id);
        Ok(x)
    }

    pub(crate) async fn update_ip_restriction(
        &self,
        id: &str,
        up: &IpRestrictionUpdate,
    ) -> Result<IpRestriction, StoreError> {
        let x = self.store.update_ip_restriction(self.account_id, id, up).await?;
        self.shared.accounts.ip_rules.invalidate(self.account_id);
        Ok(x)
    }

    pub(crate) async fn delete_ip_restriction(&self, id: &str) -> Result<(), StoreError> {
        self.store.delete_ip_restriction(self.account_id, id).await?;
        self.shared.accounts.ip_rules.invalidate(self.account_id);
        Ok(())
    }

    // Reserved domains and addresses: certificates served, and the certificate manager.

    pub(crate) async fn create_reserved_domain(
        &self,
        domain: &str,
        description: &str,
        metadata: &str,
        owner: Option<&str>,
        verified: bool,
        certificate: Option<&UploadedCertificate>,
    ) -> Result<ReservedDomain, ApiError> {
        let d = self
            .store
            .create_reserved_domain(self.account_id, domain, description, metadata, owner, verified)
            .await?;
        if let Some(c) = certificate {
            self.attach_certificate(&d, c).await?;
        }
        // A custom domain without one gets its certificate now rather than at the next check.
        self.shared.accounts.acme_wake.notify_one();
        Ok(d)
    }

    pub(crate) async fn update_reserved_domain(
        &self,
        id: &str,
        description: Option<&str>,
        metadata: Option<&str>,
    ) -> Result<ReservedDomain, StoreError> {
        self.store.update_reserved_domain(self.account_id, id, description, metadata).await
    }

    /// Looks the domain's TXT record up now and records the proof as the caller, then wakes
    /// the certificate manager.
    pub(crate) async fn verify_domain(&self, d: ReservedDomain) -> Result<ReservedDomain, String> {
        let d = crate::session::verify_domain(self.shared, self.store, d).await?;
        self.shared.accounts.acme_wake.notify_one();
        Ok(d)
    }

    /// Serves uploaded certificate `c` for reserved domain `d` from the next handshake on.
    pub(crate) async fn attach_certificate(
        &self,
        d: &ReservedDomain,
        c: &UploadedCertificate,
    ) -> Result<(), ApiError> {
        self.store.set_domain_certificate(self.account_id, &d.id, Some(&c.id)).await?;
        crate::api::certificates::serve_for_domain(self.shared, c, &d.domain).await
    }

    /// Stops serving the domain's uploaded certificate (the edge's default, or ACME's, takes over).
    pub(crate) async fn detach_certificate(&self, d: &ReservedDomain) -> Result<(), StoreError> {
        self.store.set_domain_certificate(self.account_id, &d.id, None).await?;
        self.forget_certificate(&d.domain).await?;
        self.shared.accounts.acme_wake.notify_one();
        Ok(())
    }

    pub(crate) async fn delete_reserved_domain(&self, d: &ReservedDomain) -> Result<(), StoreError> {
        self.store.delete_reserved_domain(self.account_id, &d.id).await?;
        // A released name's certificate is no longer the account's to serve.
        self.forget_certificate(&d.domain).await
    }

    /// The edge's certificate cache (not an account change: no audit event).
    async fn forget_certificate(&self, domain: &str) -> Result<(), StoreError> {
        self.shared.store.delete_certificate(domain).await?;
        self.shared.listeners.certs.remove(domain);
        Ok(())
    }

    pub(crate) async fn create_reserved_addr(
        &self,
        port: u16,
        description: &str,
        metadata: &str,
        owner: Option<&str>,
    ) -> Result<ReservedAddr, StoreError> {
        self.store.create_reserved_addr(self.account_id, port, description, metadata, owner).await
    }

    pub(crate) async fn update_reserved_addr(
        &self,
        id: &str,
        description: Option<&str>,
        metadata: Option<&str>,
    ) -> Result<ReservedAddr, StoreError> {
        self.store.update_reserved_addr(self.account_id, id, description, metadata).await
    }

    pub(crate) async fn delete_reserved_addr(&self, id: &str) -> Result<(), StoreError> {
        self.store.delete_reserved_addr(self.account_id, id).await
    }

    // Uploaded certificates: served only once attached to a domain.

    pub(crate) async fn insert_uploaded_certificate(
        &self,
        c: &UploadedCertificate,
    ) -> Result<(), StoreError> {
        self.store.insert_uploaded_certificate(c).await
    }

    pub(crate) async fn update_uploaded_certificate(
        &self,
        id: &str,
        description: Option<&str>,
        metadata: Option<&str>,
    ) -> Result<UploadedCertificate, StoreError> {
        self.store.update_uploaded_certificate(self.account_id, id, description, metadata).await
    }

    pub(crate) async fn delete_uploaded_certificate(&self, id: &str) -> Result<(), StoreError> {
        self.store.delete_uploaded_certificate(self.account_id, id).await
    }

    // Cloud endpoints: every node serves a compiled copy.

    pub(crate) async fn create_cloud_endpoint(
        &self,
        spec: &CloudEndpointSpec,
        owner: Option<&str>,
    ) -> Result<CloudEndpoint, StoreError> {
        let max = self.shared.config.limits.max_cloud_endpoints_per_account;
        let e = self.store.create_cloud_endpoint(self.account_id, spec, owner, max).await?;
        self.shared.cloud_endpoints_changed(self.account_id).await;
        Ok(e)
    }

    pub(crate) async fn update_cloud_endpoint(
        &self,
        id: &str,
        change: CloudEndpointChange,
    ) -> Result<CloudEndpoint, StoreError> {
        let e = self.store.update_cloud_endpoint(self.account_id, id, change).await?;
        self.shared.cloud_endpoints_changed(self.account_id).await;
        Ok(e)
    }

    pub(crate) async fn delete_cloud_endpoint(&self, id: &str) -> Result<CloudEndpoint, StoreError> {
        let e = self.store.delete_cloud_endpoint(self.account_id, id).await?;
        self.shared.cloud_endpoints_changed(self.account_id).await;
        Ok(e)
    }

    // Event destinations and subscriptions: this node's routes and senders.

    pub(crate) async fn create_event_destination(
        &self,
        new: &NewEventDestination,
    ) -> Result<EventDestination, StoreError> {
        let d = self.store.create_event_destination(self.account_id, new).await?;
        self.shared.accounts.events.wake();
        Ok(d)
    }

    pub(crate) async fn update_event_destination(
        &self,
        id: &str,
        description: Option<&str>,
        metadata: Option<&str>,
        target: Option<(&str, Option<Vec<u8>>)>,
    ) -> Result<EventDestination, StoreError> {
        let d =
            self.store.update_event_destination(self.account_id, id, description, metadata, target).await?;
        // Also what this node's traffic event senders hold (target, secret).
        self.shared.accounts.events.subscriptions_changed(self.account_id);
        Ok(d)
    }

    pub(crate) async fn delete_event_destination(&self, id: &str) -> Result<(), StoreError> {
        // Refused by the store while a subscription uses it.
        self.store.delete_event_destination(self.account_id, id).await?;
        self.shared.accounts.events.subscriptions_changed(self.account_id);
        Ok(())
    }

    pub(crate) async fn create_event_subscription(
        &self,
        description: &str,
        metadata: &str,
        sources: &[EventSource],
        destination_ids: &[String],
    ) -> Result<EventSubscription, StoreError> {
        let s = self
            .store
            .create_event_subscription(self.account_id, description, metadata, sources, destination_ids)
            .await?;
        self.shared.accounts.events.subscriptions_changed(self.account_id);
        Ok(s)
    }

    pub(crate) async fn update_event_subscription(
        &self,
        id: &str,
        description: Option<&str>,
        metadata: Option<&str>,
        sources: Option<&[EventSource]>,
        destination_ids: Option<&[String]>,
    ) -> Result<EventSubscription, StoreError> {
        let s = self
            .store
            .update_event_subscription(self.account_id, id, description, metadata, sources, destination_ids)
            .await?;
        self.shared.accounts.events.subscriptions_changed(self.account_id);
        Ok(s)
    }

    pub(crate) async fn delete_event_subscription(&self, id: &str) -> Result<(), StoreError> {
        self.store.delete_event_subscription(self.account_id, id).await?;
        self.shared.accounts.events.subscriptions_changed(self.account_id);
        Ok(())
    }
}

/// What a change reaches beyond the store: sessions, caches, compiled cloud endpoints, here
/// and (announced) on the other nodes.
impl Shared {
    /// Deletes an authtoken (through `by`, the store acting as whoever asked) and ends every
    /// live session that authenticated with it.
    pub(crate) async fn revoke_credential(
        &self,
        by: &Store,
        account_id: &str,
        id: &str,
    ) -> Result<usize, StoreError> {
        by.delete_credential(account_id, id).await?;
        Ok(self.end_sessions_using(id, "authtoken revoked").await)
    }

    /// Ends every live session that authenticated with credential `id`, on every node;
    /// returns how many on this one.
    pub(crate) async fn end_sessions_using(&self, id: &str, why: &'static str) -> usize {
        let n = self.end_sessions_using_here(id, why).await;
        rules::announce(self, rules::RulesChanged::Credential { id: id.to_owned() }).await;
        n
    }

    /// [`Shared::end_sessions_using`] on this node only.
    pub(crate) async fn end_sessions_using_here(&self, id: &str, why: &'static str) -> usize {
        self.sessions.registry.rules_changed();
        let sessions = self.sessions.registry.sessions_using(id);
        for s in &sessions {
            tracing::info!(session = %s.id, credential = %id, why, "ending session");
            s.mux.close(warren_mux::ErrorCode::None, why);
            self.end_session(&s.id).await;
        }
        sessions.len()
    }

    /// Ends every live session of an account, on every node; their agents reconnect (and
    /// rebind under the account's current rules). Returns how many on this node.
    pub(crate) async fn end_sessions_of(&self, account_id: &str, why: &'static str) -> usize {
        let n = self.end_sessions_of_here(account_id, why).await;
        rules::announce(self, rules::RulesChanged::Account { account_id: account_id.to_owned() }).await;
        n
    }

    /// [`Shared::end_sessions_of`] on this node only.
    pub(crate) async fn end_sessions_of_here(&self, account_id: &str, why: &'static str) -> usize {
        self.sessions.registry.rules_changed();
        // The account's cloud endpoints run its policy too: compiled again under the new one.
        cloud::reload(self, Some(account_id)).await;
        let sessions = self.sessions.registry.sessions_of(account_id);
        for s in &sessions {
            tracing::info!(session = %s.id, why, "ending session");
            s.mux.close(warren_mux::ErrorCode::None, why);
            self.end_session(&s.id).await;
        }
        sessions.len()
    }

    /// An IP policy's rules changed: cached restrictions are dropped, and every session of
    /// the account that was admitted or bound under that policy (its authtoken's, its user's,
    /// or a `restrict-ips` of its endpoints' traffic policies) restarts, so its agent
    /// reconnects and binds under the new rules. Every other node is told and does the same.
    pub(crate) async fn ip_policy_changed(&self, account_id: &str, policy_id: &str) {
        self.ip_policy_changed_here(account_id, policy_id).await;
        let change = rules::RulesChanged::IpPolicy {
            account_id: account_id.to_owned(),
            policy_id: policy_id.to_owned(),
        };
        rules::announce(self, change).await;
    }

    /// [`Shared::ip_policy_changed`] on this node only.
    pub(crate) async fn ip_policy_changed_here(&self, account_id: &str, policy_id: &str) {
        self.accounts.ip_rules.invalidate(account_id);
        self.sessions.registry.rules_changed();
        // Their restrict-ips may name it.
        cloud::reload(self, Some(account_id)).await;
        for s in self.sessions.registry.sessions_of(account_id) {
            let uses = s.credential.ip_policy_ids.iter().any(|p| p == policy_id)
                || s.owner_ip_policy_ids.iter().any(|p| p == policy_id)
                || self
                    .sessions
                    .registry
                    .endpoints_of(&s.id)
                    .iter()
                    .any(|e| e.ip_policies.iter().any(|p| p == policy_id));
            if uses {
                tracing::info!(session = %s.id, policy = %policy_id, "IP policy changed; restarting the session");
                s.mux.close(warren_mux::ErrorCode::None, "an IP policy it uses changed; reconnect");
                self.end_session(&s.id).await;
            }
        }
    }

    /// The account's cloud endpoints changed: served as they are now here, and every other
    /// node is told to do the same.
    pub(crate) async fn cloud_endpoints_changed(&self, account_id: &str) {
        cloud::reload(self, Some(account_id)).await;
        rules::announce(self, rules::RulesChanged::CloudEndpoints { account_id: account_id.to_owned() })
            .await;
    }
}

//! IP policies, their rules and IP restrictions, and the check that applies them.

use std::net::IpAddr;

use sqlx::Row;

use crate::{Page, Store, StoreError, generate_id, into_page, now_rfc3339, page_limit};

/// An IPv4 or IPv6 network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`; a bare address
/// is a /32 or /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses CIDR notation; the address must not have bits set past the prefix.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, p) = s.trim().split_once('/').map_or((s.trim(), None), |(a, p)| (a, Some(p)));
        let addr: IpAddr = a.parse().map_err(|_| format!("{s:?} is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix must be 0..={max}"))?,
            None => max,
        };
        let c = Cidr { addr, prefix };
        if c.network_bits(addr) != bits(addr) {
            return Err(format!("{s:?} has host bits set; did you mean {}/{prefix}?", c.network()));
        }
        Ok(c)
    }

    /// Whether `ip` is inside (IPv4-mapped IPv6 addresses match IPv4 networks).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        ip.is_ipv4() == self.addr.is_ipv4() && self.network_bits(ip) == bits(self.addr)
    }

    fn network_bits(&self, ip: IpAddr) -> u128 {
        let width = if ip.is_ipv4() { 32 } else { 128 };
        let host = width - u32::from(self.prefix);
        if host >= 128 { 0 } else { (bits(ip) >> host) << host }
    }

    fn network(&self) -> IpAddr {
        let b = self.network_bits(self.addr);
        match self.addr {
            IpAddr::V4(_) => IpAddr::V4((b as u32).into()),
            IpAddr::V6(_) => IpAddr::V6(b.into()),
        }
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// A named set of rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpPolicy {
    /// `ipp_...`
    pub id: String,
    /// What it is for.
    pub description: String,
    /// RFC 3339.
    pub created_at: String,
}

/// One rule of a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpPolicyRule {
    /// `ipr_...`
    pub id: String,
    /// The policy.
    pub ip_policy_id: String,
    /// The network.
    pub cidr: String,
    /// `allow` or `deny`.
    pub action: String,
    /// What it is for.
    pub description: String,
    /// RFC 3339.
    pub created_at: String,
}

/// Which policies guard one kind of access.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpRestriction {
    /// `ipx_...`
    pub id: String,
    /// `agent`, `api`, `dashboard` or `endpoints`.
    pub kind: String,
    /// false: violations are logged, not refused.
    pub enforced: bool,
    /// The policies applied together.
    pub ip_policy_ids: Vec<String>,
    /// What it is for.
    pub description: String,
    /// RFC 3339.
    pub created_at: String,
}

/// The outcome of [`Store::check_ip`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpDecision {
    /// No restriction of this kind, or the address passed them all.
    Allow,
    /// The address fails restriction `restriction`; refuse when `enforced`, else only log.
    Deny {
        /// `ipx_...`
        restriction: String,
        /// Whether to refuse.
        enforced: bool,
    },
}

/// Restriction kinds.
pub const RESTRICTION_KINDS: [&str; 4] = ["agent", "api", "dashboard", "endpoints"];

/// Applies a set of rules: any matching deny rule denies; when allow rules exist, one must
/// match; no rules at all allows.
pub fn evaluate(rules: &[(Cidr, bool)], ip: IpAddr) -> bool {
    if rules.iter().any(|(c, allow)| !allow && c.contains(ip)) {
        return false;
    }
    let allows: Vec<_> = rules.iter().filter(|(_, a)| *a).collect();
    allows.is_empty() || allows.iter().any(|(c, _)| c.contains(ip))
}

impl Store {
    /// Creates an IP policy.
    pub async fn create_ip_policy(
        &self,
        account_id: &str,
        description: &str,
    ) -> Result<IpPolicy, StoreError> {
        let p = IpPolicy {
            id: generate_id("ipp"),
            description: description.to_owned(),
            created_at: now_rfc3339(),
        };
        with_db!(self.db, pool => {
            sqlx::query("INSERT INTO ip_policies (id, account_id, description, created_at) VALUES ($1, $2, $3, $4)")
                .bind(&p.id).bind(account_id).bind(&p.description).bind(&p.created_at).execute(pool).await?;
        });
        Ok(p)
    }

    /// One IP policy.
    pub async fn get_ip_policy(&self, account_id: &str, id: &str) -> Result<IpPolicy, StoreError> {
        with_db!(self.db, pool => {
            sqlx::query("SELECT id, description, created_at FROM ip_policies WHERE account_id = $1 AND id = $2")
                .bind(account_id).bind(id).fetch_optional(pool).await?
                .map(|r| IpPolicy { id: r.get(0), description: r.get(1), created_at: r.get(2) })
        })
        .ok_or(StoreError::NotFound("ip policy"))
    }

    /// IP policies, newest first.
    pub async fn list_ip_policies(
        &self,
        account_id: &str,
        limit: u32,
        before_id: Option<&str>,
    ) -> Result<Page<IpPolicy>, StoreError> {
        let rows = with_db!(self.db, pool => {
            sqlx::query("SELECT id, description, created_at FROM ip_policies WHERE account_id = $1 AND ($2 = '' OR id < $2) ORDER BY id DESC LIMIT $3")
                .bind(account_id).bind(before_id.unwrap_or("")).bind(page_limit(limit)).fetch_all(pool).await?
                .iter().map(|r| IpPolicy { id: r.get(0), description: r.get(1), created_at: r.get(2) }).collect::<Vec<_>>()
        });
        Ok(into_page(rows, limit))
    }

    /// Changes a policy's description.
    pub async fn update_ip_policy(
        &self,
        account_id: &str,
        id: &str,
        description: &str,
    ) -> Result<IpPolicy, StoreError> {
        let n = with_db!(self.db, pool => {
            sqlx::query("UPDATE ip_policies SET description = $1 WHERE account_id = $2 AND id = $3")
                .bind(description).bind(account_id).bind(id).execute(pool).await?.rows_affected()
        });
        if n == 0 {
            return Err(StoreError::NotFound("ip policy"));
        }
        self.get_ip_policy(account_id, id).await
    }

    /// Deletes a policy with its rules. A policy still applied by a restriction or an
    /// authtoken is refused: deleting it would quietly open what it guarded.
    pub async fn delete_ip_policy(&self, account_id: &str, id: &str) -> Result<(), StoreError> {
        let users = self.policy_users(account_id, id).await?;
        if !users.is_empty() {
            return Err(StoreError::InUse(format!(
                "ip policy {id} is still applied by {}; remove it there first",
                users.join(", ")
            )));
        }
        let n = with_db!(self.db, pool => {
            sqlx::query("DELETE FROM ip_policies WHERE account_id = $1 AND id = $2")
                .bind(account_id).bind(id).execute(pool).await?.rows_affected()
        });
        if n == 0 { Err(StoreError::NotFound("ip policy")) } else { Ok(()) }
    }

    /// Adds a rule to a policy.
    pub async fn create_ip_policy_rule(
        &self,
        account_id: &str,
        ip_policy_id: &str,
        cidr: &str,
        action: &str,
        description: &str,
    ) -> Result<IpPolicyRule, StoreError> {
        Cidr::parse(cidr).map_err(|e| StoreError::Invalid(format!("cidr: {e}")))?;
        if action != "allow" && action != "deny" {
            return Err(StoreError::Invalid(format!("action {action:?}: use allow or deny")));
        }
        self.get_ip_policy(account_id, ip_policy_id).await?;
        let r = IpPolicyRule {
            id: generate_id("ipr"),
            ip_policy_id: ip_policy_id.to_owned(),
            cidr: cidr.trim().to_owned(),
            action: action.to_owned(),
            description: description.to_owned(),
            created_at: now_rfc3339(),
        };
        with_db!(self.db, pool => {
            sqlx::query("INSERT INTO ip_policy_rules (id, account_id, ip_policy_id, cidr, action, description, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                .bind(&r.id).bind(account_id).bind(&r.ip_policy_id).bind(&r.cidr).bind(&r.action).bind(&r.description).bind(&r.created_at)
                .execute(pool).await?;
        });
        Ok(r)
    }

    /// Rules of an account, newest first.
    pub async fn list_ip_policy_rules(
        &self,
        account_id: &str,
        limit: u32,
        before_id: Option<&str>,
    ) -> Result<Page<IpPolicyRule>, StoreError> {
        let rows = with_db!(self.db, pool => {
            sqlx::query("SELECT id, ip_policy_id, cidr, action, description, created_at FROM ip_policy_rules WHERE account_id = $1 AND ($2 = '' OR id < $2) ORDER BY id DESC LIMIT $3")
                .bind(account_id).bind(before_id.unwrap_or("")).bind(page_limit(limit)).fetch_all(pool).await?
                .iter().map(|r| IpPolicyRule { id: r.get(0), ip_policy_id: r.get(1), cidr: r.get(2), action: r.get(3), description: r.get(4), created_at: r.get(5) })
                .collect::<Vec<_>>()
        });
        Ok(into_page(rows, limit))
    }

    /// Deletes a rule.
    pub async fn delete_ip_policy_rule(&self, account_id: &str, id: &str) -> Result<(), StoreError> {
        let n = with_db!(self.db, pool => {
            sqlx::query("DELETE FROM ip_policy_rules WHERE account_id = $1 AND id = $2")
                .bind(account_id).bind(id).execute(pool).await?.rows_affected()
        });
        if n == 0 { Err(StoreError::NotFound("ip policy rule")) } else { Ok(()) }
    }

    /// Creates a restriction of `kind` applying `ip_policy_ids`.
    pub async fn create_ip_restriction(
        &self,
        account_id: &str,
        kind: &str,
        enforced: bool,
        ip_policy_ids: &[String],
        description: &str,
    ) -> Result<IpRestriction, StoreError> {
        if !RESTRICTION_KINDS.contains(&kind) {
            return Err(StoreError::Invalid(format!(
                "type {kind:?}: use agent, api, dashboard or endpoints"
            )));
        }
        if ip_policy_ids.is_empty() {
            return Err(StoreError::Invalid("ip_policy_ids: name at least one IP policy".into()));
        }
        self.check_policies_exist(account_id, ip_policy_ids).await?;
        let x = IpRestriction {
            id: generate_id("ipx"),
            kind: kind.to_owned(),
            enforced,
            ip_policy_ids: ip_policy_ids.to_vec(),
            description: description.to_owned(),
            created_at: now_rfc3339(),
        };
        let ids = serde_json::to_string(&x.ip_policy_ids).expect("strings serialize");
        with_db!(self.db, pool => {
            sqlx::query("INSERT INTO ip_restrictions (id, account_id, type, enforced, ip_policy_ids, description, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                .bind(&x.id).bind(account_id).bind(&x.kind).bind(i64::from(enforced)).bind(&ids).bind(&x.description).bind(&x.created_at)
                .execute(pool).await?;
        });
        Ok(x)
    }

    /// Restrictions of an account, newest first.
    pub async fn list_ip_restrictions(
        &self,
        account_id: &str,
        limit: u32,
        before_id: Option<&str>,
    ) -> Result<Page<IpRestriction>, StoreError> {
        let rows = with_db!(self.db, pool => {
            sqlx::query("SELECT id, type, enforced, ip_policy_ids, description, created_at FROM ip_restrictions WHERE account_id = $1 AND ($2 = '' OR id < $2) ORDER BY id DESC LIMIT $3")
                .bind(account_id).bind(before_id.unwrap_or("")).bind(page_limit(limit)).fetch_all(pool).await?
                .iter().map(|r| IpRestriction {
                    id: r.get(0), kind: r.get(1), enforced: r.get::<i64, _>(2) != 0,
                    ip_policy_ids: serde_json::from_str(&r.get::<String, _>(3)).unwrap_or_default(),
                    description: r.get(4), created_at: r.get(5),
                }).collect::<Vec<_>>()
        });
        Ok(into_page(rows, limit))
    }

    /// Switches a restriction between enforced and log-only.
    pub async fn set_ip_restriction_enforced(
        &self,
        account_id: &str,
        id: &str,
        enforced: bool,
    ) -> Result<(), StoreError> {
        let n = with_db!(self.db, pool => {
            sqlx::query("UPDATE ip_restrictions SET enforced = $1 WHERE account_id = $2 AND id = $3")
                .bind(i64::from(enforced)).bind(account_id).bind(id).execute(pool).await?.rows_affected()
        });
        if n == 0 { Err(StoreError::NotFound("ip restriction")) } else { Ok(()) }
    }

    /// Deletes a restriction.
    pub async fn delete_ip_restriction(&self, account_id: &str, id: &str) -> Result<(), StoreError> {
        let n = with_db!(self.db, pool => {
            sqlx::query("DELETE FROM ip_restrictions WHERE account_id = $1 AND id = $2")
                .bind(account_id).bind(id).execute(pool).await?.rows_affected()
        });
        if n == 0 { Err(StoreError::NotFound("ip restriction")) } else { Ok(()) }
    }

    /// Applies every restriction of `kind` to `ip`: the first one whose policies refuse the
    /// address decides (enforced ones first).
    pub async fn check_ip(&self, account_id: &str, kind: &str, ip: IpAddr) -> Result<IpDecision, StoreError> {
        let mut restrictions = self.list_ip_restrictions(account_id, 100, None).await?.items;
        restrictions.retain(|r| r.kind == kind);
        restrictions.sort_by_key(|r| !r.enforced);
        for r in restrictions {
            if !self.ip_policies_allow(account_id, &r.ip_policy_ids, ip).await? {
                return Ok(IpDecision::Deny { restriction: r.id, enforced: r.enforced });
            }
        }
        Ok(IpDecision::Allow)
    }

    /// Whether `ip` passes the rules of `ip_policy_ids` taken together (see [`evaluate`]).
    pub async fn ip_policies_allow(
        &self,
        account_id: &str,
        ip_policy_ids: &[String],
        ip: IpAddr,
    ) -> Result<bool, StoreError> {
        let mut rules = Vec::new();
        for p in ip_policy_ids {
            let rows = with_db!(self.db, pool => {
                sqlx::query("SELECT cidr, action FROM ip_policy_rules WHERE account_id = $1 AND ip_policy_id = $2")
                    .bind(account_id).bind(p).fetch_all(pool).await?
                    .iter().map(|row| (row.get::<String, _>(0), row.get::<String, _>(1))).collect::<Vec<_>>()
            });
            rules.extend(
                rows.into_iter().filter_map(|(c, a)| Cidr::parse(&c).ok().map(|c| (c, a == "allow"))),
            );
        }
        Ok(evaluate(&rules, ip))
    }

    /// Refuses ids that name no policy of the account.
    pub(crate) async fn check_policies_exist(
        &self,
        account_id: &str,
        ids: &[String],
    ) -> Result<(), StoreError> {
        for p in ids {
            self.get_ip_policy(account_id, p).await?;
        }
        Ok(())
    }

    /// What still applies policy `id`: a deleted policy would silently stop guarding them.
    async fn policy_users(&self, account_id: &str, id: &str) -> Result<Vec<String>, StoreError> {
        let pattern = format!("%\"{id}\"%");
        Ok(with_db!(self.db, pool => {
            sqlx::query("SELECT id FROM ip_restrictions WHERE account_id = $1 AND ip_policy_ids LIKE $2 UNION ALL SELECT id FROM credentials WHERE account_id = $1 AND ip_policy_ids LIKE $2")
                .bind(account_id).bind(&pattern).fetch_all(pool).await?
                .iter().map(|r| r.get::<String, _>(0)).collect::<Vec<_>>()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_match_v4_and_v6() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.9.9.9".parse().unwrap()), "IPv4-mapped");
        let c = Cidr::parse("2001:db8::/32").unwrap();
        assert!(c.contains("2001:db8:1::1".parse().unwrap()));
        assert!(!c.contains("2001:db9::1".parse().unwrap()));
        assert!(!c.contains("10.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("127.0.0.1").unwrap().contains("127.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("::/0").unwrap().contains("::1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.1/8").unwrap_err().contains("10.0.0.0/8"));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
    }

    #[test]
    fn deny_wins_and_allow_rules_must_match() {
        let lo = Cidr::parse("127.0.0.0/8").unwrap();
        let one = Cidr::parse("127.0.0.1/32").unwrap();
        let ip = "127.0.0.1".parse().unwrap();
        assert!(evaluate(&[], ip));
        assert!(evaluate(&[(lo, true)], ip));
        assert!(!evaluate(&[(lo, true), (one, false)], ip));
        assert!(!evaluate(&[(Cidr::parse("10.0.0.0/8").unwrap(), true)], ip));
        assert!(evaluate(&[(Cidr::parse("10.0.0.0/8").unwrap(), false)], ip));
    }
}

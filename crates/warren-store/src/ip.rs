//! IP policies, their rules and IP restrictions, and the check that applies them.

use std::net::IpAddr;

use sqlx::Row;

use crate::{Op, Page, Store, StoreError, check_text, generate_id, into_page, now_rfc3339, page_limit};

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
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IpPolicy {
    /// `ipp_...`
    pub id: String,
    /// What it is for.
    pub description: String,
    /// Free-form.
    pub metadata: String,
    /// RFC 3339.
    pub created_at: String,
}

/// One rule of a policy.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    /// Free-form.
    pub metadata: String,
    /// RFC 3339.
    pub created_at: String,
}

/// Which policies guard one kind of access.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    /// Free-form.
    pub metadata: String,
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

/// One restriction with its policies' rules, ready to apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledRestriction {
    /// `ipx_...`
    pub id: String,
    /// Refuse (true) or only log (false).
    pub enforced: bool,
    /// `(network, allow)` from every policy of the restriction.
    pub rules: Vec<(Cidr, bool)>,
}

/// Applies compiled restrictions (enforced first, as [`Store::compiled_restrictions`] orders
/// them): the first that refuses `ip` decides.
pub fn decide(restrictions: &[CompiledRestriction], ip: IpAddr) -> IpDecision {
    for r in restrictions {
        if !evaluate(&r.rules, ip) {
            return IpDecision::Deny { restriction: r.id.clone(), enforced: r.enforced };
        }
    }
    IpDecision::Allow
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

/// A change to a rule; `None` keeps a field.
#[derive(Clone, Debug, Default)]
pub struct IpPolicyRuleUpdate {
    /// New network.
    pub cidr: Option<String>,
    /// New action, `allow` or `deny`.
    pub action: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New metadata.
    pub metadata: Option<String>,
}

/// A change to a restriction; `None` keeps a field.
#[derive(Clone, Debug, Default)]
pub struct IpRestrictionUpdate {
    /// Enforce or only log.
    pub enforced: Option<bool>,
    /// New policies (at least one).
    pub ip_policy_ids: Option<Vec<String>>,
    /// New description.
    pub description: Option<String>,
    /// New metadata.
    pub metadata: Option<String>,
}

const POLICY_COLUMNS: &str = "id, description, metadata, created_at";
const RULE_COLUMNS: &str = "id, ip_policy_id, cidr, action, description, metadata, created_at";
const RESTRICTION_COLUMNS: &str = "id, type, enforced, ip_policy_ids, description, metadata, created_at";

fn policy_row<R: Row>(r: &R) -> IpPolicy
where
    usize: sqlx::ColumnIndex<R>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    IpPolicy { id: r.get(0), description: r.get(1), metadata: r.get(2), created_at: r.get(3) }
}

fn rule_row<R: Row>(r: &R) -> IpPolicyRule
where
    usize: sqlx::ColumnIndex<R>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    IpPolicyRule {
        id: r.get(0),
        ip_policy_id: r.get(1),
        cidr: r.get(2),
        action: r.get(3),
        description: r.get(4),
        metadata: r.get(5),
        created_at: r.get(6),
    }
}

fn restriction_row<R: Row>(r: &R) -> IpRestriction
where
    usize: sqlx::ColumnIndex<R>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    IpRestriction {
        id: r.get(0),
        kind: r.get(1),
        enforced: r.get::<i64, _>(2) != 0,
        ip_policy_ids: serde_json::from_str(&r.get::<String, _>(3)).unwrap_or_default(),
        description: r.get(4),
        metadata: r.get(5),
        created_at: r.get(6),
    }
}

fn check_rule(cidr: &str, action: &str) -> Result<(), StoreError> {
    Cidr::parse(cidr).map_err(|e| StoreError::Invalid(format!("cidr: {e}")))?;
    if action != "allow" && action != "deny" {
        return Err(StoreError::Invalid(format!("action {action:?}: use allow or deny")));
    }
    Ok(())
}

impl Store {
    /// Creates an IP policy.
    pub async fn create_ip_policy(
        &self,
        account_id: &str,
        description: &str,
        metadata: &str,
    ) -> Result<IpPolicy, StoreError> {
        check_text("description", description)?;
        check_text("metadata", metadata)?;
        let p = IpPolicy {
            id: generate_id("ipp"),
            description: description.to_owned(),
            metadata: metadata.to_owned(),
            created_at: now_rfc3339(),
        };
        let p = audited!(self, tx, account_id, Op::Created, |p| {
            sqlx::query("INSERT INTO ip_policies (id, account_id, description, metadata, created_at) VALUES ($1, $2, $3, $4, $5)")
                .bind(&p.id).bind(account_id).bind(&p.description).bind(&p.metadata).bind(&p.created_at).execute(&mut *tx).await?;
            p
        });
        Ok(p)
    }

    /// One IP policy.
    pub async fn get_ip_policy(&self, account_id: &str, id: &str) -> Result<IpPolicy, StoreError> {
        let sql = format!("SELECT {POLICY_COLUMNS} FROM ip_policies WHERE account_id = $1 AND id = $2");
        with_db!(self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(account_id).bind(id).fetch_optional(pool).await?.map(|r| policy_row(&r))
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
        let sql = format!(
            "SELECT {POLICY_COLUMNS} FROM ip_policies WHERE account_id = $1 AND ($2 = '' OR id < $2) ORDER BY id DESC LIMIT $3"
        );
        let rows = with_db!(self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(account_id).bind(before_id.unwrap_or("")).bind(page_limit(limit)).fetch_all(pool).await?
                .iter().map(policy_row).collect::<Vec<_>>()
        });
        Ok(into_page(rows, limit))
    }

    /// Changes a policy's description or metadata; `None` keeps a field.
    pub async fn update_ip_policy(
        &self,
        account_id: &str,
        id: &str,
        description: Option<&str>,
        metadata: Option<&str>,
    ) -> Result<IpPolicy, StoreError> {
        description.map_or(Ok(()), |d| check_text("description", d))?;
        metadata.map_or(Ok(()), |m| check_text("metadata", m))?;
        let sql = format!("SELECT {POLICY_COLUMNS} FROM ip_policies WHERE account_id = $1 AND id = $2");
        Ok(audited!(self, tx, account_id, Op::Updated, |updated| {
            let n = sqlx::query("UPDATE ip_policies SET description = COALESCE($1, description), metadata = COALESCE($2, metadata) WHERE account_id = $3 AND id = $4")
                .bind(description).bind(metadata).bind(account_id).bind(id).execute(&mut *tx).await?.rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound("ip policy"));
            }
            policy_row(
                &sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(account_id)
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?,
            )
        }))
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
        let old = self.get_ip_policy(account_id, id).await?;
        audited!(self, tx, account_id, Op::Deleted, |old| {
            let n = sqlx::query("DELETE FROM ip_policies WHERE account_id = $1 AND id = $2")
                .bind(account_id)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound("ip policy"));
            }
            old
        });
        Ok(())
    }

    /// Adds a rule to a policy.
    pub async fn create_ip_policy_rule(
        &self,
        account_id: &str,
        ip_policy_id: &str,
        cidr: &str,
        action: &str,
        description: &str,
        metadata: &str,
    ) -> Result<IpPolicyRule, StoreError> {
        check_rule(cidr, action)?;
        check_text("description", description)?;
        check_text("metadata", metadata)?;
        self.get_ip_policy(account_id, ip_policy_id).await?;
        let r = IpPolicyRule {
            id: generate_id("ipr"),
            ip_policy_id: ip_policy_id.to_owned(),
            cidr: cidr.trim().to_owned(),
            action: action.to_owned(),
            description: description.to_owned(),
            metadata: metadata.to_owned(),
            created_at: now_rfc3339(),
        };
        let r = audited!(self, tx, account_id, Op::Created, |r| {
            sqlx::query("INSERT INTO ip_policy_rules (id, account_id, ip_policy_id, cidr, action, description, metadata, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
                .bind(&r.id).bind(account_id).bind(&r.ip_policy_id).bind(&r.cidr).bind(&r.action).bind(&r.description).bind(&r.metadata).bind(&r.created_at)
                .execute(&mut *tx).await?;
            r
        });
        Ok(r)
    }

    /// One rule.
    pub async fn get_ip_policy_rule(&self, account_id: &str, id: &str) -> Result<IpPolicyRule, StoreError> {
        let sql = format!("SELECT {RULE_COLUMNS} FROM ip_policy_rules WHERE account_id = $1 AND id = $2");
        with_db!(self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(account_id).bind(id).fetch_optional(pool).await?.map(|r| rule_row(&r))
        })
        .ok_or(StoreError::NotFound("ip policy rule"))
    }

    /// Rules of an account, newest first.
    pub async fn list_ip_policy_rules(
        &self,
        account_id: &str,
        limit: u32,
        before_id: Option<&str>,
    ) -> Result<Page<IpPolicyRule>, StoreError> {
        let sql = format!(
            "SELECT {RULE_COLUMNS} FROM ip_policy_rules WHERE account_id = $1 AND ($2 = '' OR id < $2) ORDER BY id DESC LIMIT $3"
        );
        let rows = with_db!(self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(account_id).bind(before_id.unwrap_or("")).bind(page_limit(limit)).fetch_all(pool).await?
                .iter().map(rule_row).collect::<Vec<_>>()
        });
        Ok(into_page(rows, limit))
    }

    /// Changes a rule; the new network and action are checked as on create.
    pub async fn update_ip_policy_rule(
        &self,
        account_id: &str,
        id: &str,
        up: &IpPolicyRuleUpdate,
    ) -> Result<IpPolicyRule, StoreError> {
        let current = self.get_ip_policy_rule(account_id, id).await?;
        let cidr = up.cidr.as_deref().map(str::trim).unwrap_or(&current.cidr);
        check_rule(cidr, up.action.as_deref().unwrap_or(&current.action))?;
        up.description.as_deref().map_or(Ok(()), |d| check_text("description", d))?;
        up.metadata.as_deref().map_or(Ok(()), |m| check_text("metadata", m))?;
        let sql = format!("SELECT {RULE_COLUMNS} FROM ip_policy_rules WHERE account_id = $1 AND id = $2");
        Ok(audited!(self, tx, account_id, Op::Updated, |updated| {
            let n = sqlx::query("UPDATE ip_policy_rules SET cidr = $1, action = COALESCE($2, action), description = COALESCE($3, description), metadata = COALESCE($4, metadata) WHERE account_id = $5 AND id = $6")
                .bind(cidr).bind(&up.action).bind(&up.description).bind(&up.metadata).bind(account_id).bind(id)
                .execute(&mut *tx).await?.rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound("ip policy rule"));
            }
            rule_row(
                &sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(account_id)
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?,
            )
        }))
    }

    /// Deletes a rule.
    pub async fn delete_ip_policy_rule(&self, account_id: &str, id: &str) -> Result<(), StoreError> {
        let old = self.get_ip_policy_rule(account_id, id).await?;
        audited!(self, tx, account_id, Op::Deleted, |old| {
            let n = sqlx::query("DELETE FROM ip_policy_rules WHERE account_id = $1 AND id = $2")
                .bind(account_id)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound("ip policy rule"));
            }
            old
        });
        Ok(())
    }

    /// Creates a restriction of `kind` applying `ip_policy_ids`.
    pub async fn create_ip_restriction(
        &self,
        account_id: &str,
        kind: &str,
        enforced: bool,
        ip_policy_ids: &[String],
        description: &str,
        metadata: &str,
    ) -> Result<IpRestriction, StoreError> {
        if !RESTRICTION_KINDS.contains(&kind) {
            return Err(StoreError::Invalid(format!(
                "type {kind:?}: use agent, api, dashboard or endpoints"
            )));
        }
        if ip_policy_ids.is_empty() {
            return Err(StoreError::Invalid("ip_policy_ids: name at least one IP policy".into()));
        }
        check_text("description", description)?;
        check_text("metadata", metadata)?;
        self.check_policies_exist(account_id, ip_policy_ids).await?;
        let x = IpRestriction {
            id: generate_id("ipx"),
            kind: kind.to_owned(),
            enforced,
            ip_policy_ids: ip_policy_ids.to_vec(),
            description: description.to_owned(),
            metadata: metadata.to_owned(),
            created_at: now_rfc3339(),
        };
        let ids = serde_json::to_string(&x.ip_policy_ids).expect("strings serialize");
        let x = audited!(self, tx, account_id, Op::Created, |x| {
            sqlx::query("INSERT INTO ip_restrictions (id, account_id, type, enforced, ip_policy_ids, description, metadata, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
                .bind(&x.id).bind(account_id).bind(&x.kind).bind(i64::from(enforced)).bind(&ids).bind(&x.description).bind(&x.metadata).bind(&x.created_at)
                .execute(&mut *tx).await?;
            x
        });
        Ok(x)
    }

    /// One restriction.
    pub async fn get_ip_restriction(&self, account_id: &str, id: &str) -> Result<IpRestriction, StoreError> {
        let sql =
            format!("SELECT {RESTRICTION_COLUMNS} FROM ip_restrictions WHERE account_id = $1 AND id = $2");
        with_db!(self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(account_id).bind(id).fetch_optional(pool).await?.map(|r| restriction_row(&r))
        })
        .ok_or(StoreError::NotFound("ip restriction"))
    }

    /// Restrictions of an account, newest first.
    pub async fn list_ip_restrictions(
        &self,
        account_id: &str,
        limit: u32,
        before_id: Option<&str>,
    ) -> Result<Page<IpRestriction>, StoreError> {
        let sql = format!(
            "SELECT {RESTRICTION_COLUMNS} FROM ip_restrictions WHERE account_id = $1 AND ($2 = '' OR id < $2) ORDER BY id DESC LIMIT $3"
        );
        let rows = with_db!(self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(account_id).bind(before_id.unwrap_or("")).bind(page_limit(limit)).fetch_all(pool).await?
                .iter().map(restriction_row).collect::<Vec<_>>()
        });
        Ok(into_page(rows, limit))
    }

    /// Changes a restriction: enforcement, policies, description, metadata.
    pub async fn update_ip_restriction(
        &self,
        account_id: &str,
        id: &str,
        up: &IpRestrictionUpdate,
    ) -> Result<IpRestriction, StoreError> {
        if let Some(ids) = &up.ip_policy_ids {
            if ids.is_empty() {
                return Err(StoreError::Invalid("ip_policy_ids: name at least one IP policy".into()));
            }
            self.check_policies_exist(account_id, ids).await?;
        }
        up.description.as_deref().map_or(Ok(()), |d| check_text("description", d))?;
        up.metadata.as_deref().map_or(Ok(()), |m| check_text("metadata", m))?;
        let ids = up.ip_policy_ids.as_ref().map(|i| serde_json::to_string(i).expect("strings serialize"));
        let sql =
            format!("SELECT {RESTRICTION_COLUMNS} FROM ip_restrictions WHERE account_id = $1 AND id = $2");
        Ok(audited!(self, tx, account_id, Op::Updated, |updated| {
            let n = sqlx::query("UPDATE ip_restrictions SET enforced = COALESCE($1, enforced), ip_policy_ids = COALESCE($2, ip_policy_ids), description = COALESCE($3, description), metadata = COALESCE($4, metadata) WHERE account_id = $5 AND id = $6")
                .bind(up.enforced.map(i64::from)).bind(&ids).bind(&up.description).bind(&up.metadata).bind(account_id).bind(id)
                .execute(&mut *tx).await?.rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound("ip restriction"));
            }
            restriction_row(
                &sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(account_id)
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?,
            )
        }))
    }

    /// Deletes a restriction.
    pub async fn delete_ip_restriction(&self, account_id: &str, id: &str) -> Result<(), StoreError> {
        let old = self.get_ip_restriction(account_id, id).await?;
        audited!(self, tx, account_id, Op::Deleted, |old| {
            let n = sqlx::query("DELETE FROM ip_restrictions WHERE account_id = $1 AND id = $2")
                .bind(account_id)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound("ip restriction"));
            }
            old
        });
        Ok(())
    }

    /// Applies every restriction of `kind` to `ip`: the first one whose policies refuse the
    /// address decides (enforced ones first).
    pub async fn check_ip(&self, account_id: &str, kind: &str, ip: IpAddr) -> Result<IpDecision, StoreError> {
        Ok(decide(&self.compiled_restrictions(account_id, kind).await?, ip))
    }

    /// The account's restrictions of `kind` with their rules loaded and parsed, enforced ones
    /// first: what [`decide`] needs, in a form an edge can cache.
    pub async fn compiled_restrictions(
        &self,
        account_id: &str,
        kind: &str,
    ) -> Result<Vec<CompiledRestriction>, StoreError> {
        let sql =
            format!("SELECT {RESTRICTION_COLUMNS} FROM ip_restrictions WHERE account_id = $1 AND type = $2");
        let mut restrictions = with_db!(self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(account_id).bind(kind).fetch_all(pool).await?
                .iter().map(restriction_row).collect::<Vec<_>>()
        });
        restrictions.sort_by(|a, b| (!a.enforced, &a.id).cmp(&(!b.enforced, &b.id)));
        let mut out = Vec::with_capacity(restrictions.len());
        for r in restrictions {
            out.push(CompiledRestriction {
                rules: self.policy_rules(account_id, &r.ip_policy_ids).await?,
                id: r.id,
                enforced: r.enforced,
            });
        }
        Ok(out)
    }

    async fn policy_rules(
        &self,
        account_id: &str,
        ip_policy_ids: &[String],
    ) -> Result<Vec<(Cidr, bool)>, StoreError> {
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
        Ok(rules)
    }

    /// The rules of one policy as `(cidr, action)` text, for traffic policies that name it;
    /// `NotFound` when the account has no such policy.
    pub async fn ip_policy_cidrs(
        &self,
        account_id: &str,
        id: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.get_ip_policy(account_id, id).await?;
        Ok(with_db!(self.db, pool => {
            sqlx::query("SELECT cidr, action FROM ip_policy_rules WHERE account_id = $1 AND ip_policy_id = $2")
                .bind(account_id).bind(id).fetch_all(pool).await?
                .iter().map(|row| (row.get::<String, _>(0), row.get::<String, _>(1))).collect::<Vec<_>>()
        }))
    }

    /// Whether `ip` passes the rules of `ip_policy_ids` taken together (see [`evaluate`]).
    pub async fn ip_policies_allow(
        &self,
        account_id: &str,
        ip_policy_ids: &[String],
        ip: IpAddr,
    ) -> Result<bool, StoreError> {
        Ok(evaluate(&self.policy_rules(account_id, ip_policy_ids).await?, ip))
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

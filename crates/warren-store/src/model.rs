//! The stored records. None of them holds a secret: tokens exist in clear only in the
//! [`Token`] returned on creation.

use std::fmt;

/// An account: the owner of users, credentials, keys and endpoints.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Account {
    /// `acc_...`
    pub id: String,
    /// Display name.
    pub name: String,
}

/// What a user may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything, including users and API keys.
    Admin,
    /// Their own authtokens and endpoints; read the rest.
    Developer,
    /// Read only.
    ReadOnly,
}

impl Role {
    /// The stored and API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Developer => "developer",
            Role::ReadOnly => "read-only",
        }
    }

    /// Parses the stored and API spelling.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "developer" => Some(Role::Developer),
            "read-only" => Some(Role::ReadOnly),
            _ => None,
        }
    }
}

/// A person (or robot) in an account.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct User {
    /// `usr_...`
    pub id: String,
    /// The account.
    pub account_id: String,
    /// Unique within the account.
    pub email: String,
    /// What they may do.
    pub role: Role,
    /// RFC 3339.
    pub created_at: String,
    /// The bind rules every authtoken of theirs stays within (`None`: no ceiling); set by
    /// admins.
    pub authtoken_acl: Option<Vec<String>>,
    /// IP policies every session of their authtokens must pass; set by admins.
    pub authtoken_ip_policy_ids: Vec<String>,
}

impl User {
    /// Whether the user's ceiling lets their authtokens bind `host`.
    pub fn allows_bind(&self, host: &str) -> bool {
        self.authtoken_acl.as_ref().is_none_or(|ceiling| acl_allows(ceiling, host))
    }

    /// Why `acl` is not within the user's ceiling, if it is not: every rule must be covered by
    /// a rule of the ceiling (an empty ACL, which allows everything, is within no ceiling).
    pub fn acl_outside_ceiling(&self, acl: &[String]) -> Option<String> {
        let ceiling = self.authtoken_acl.as_ref()?;
        if acl.is_empty() {
            return Some(format!(
                "an authtoken without acl rules may bind anything; this user's authtokens must stay within: {}",
                ceiling.join(", ")
            ));
        }
        let outside: Vec<&String> = acl.iter().filter(|r| !rule_within(r, ceiling)).collect();
        (!outside.is_empty()).then(|| {
            format!(
                "acl rules {outside:?} go beyond what this user's authtokens may bind: {}",
                ceiling.join(", ")
            )
        })
    }
}

/// Whether bind rules `acl` let a token bind `host` (an empty list allows everything).
pub fn acl_allows(acl: &[String], host: &str) -> bool {
    if acl.is_empty() {
        return true;
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    acl.iter().filter_map(|r| r.strip_prefix("bind:")).any(|rule| {
        let rule = rule.trim().to_ascii_lowercase();
        if rule == "*" {
            return true;
        }
        match rule.strip_prefix("*.") {
            Some(parent) => host.len() > parent.len() + 1 && host.ends_with(&format!(".{parent}")),
            None => host == rule,
        }
    })
}

/// Whether bind rule `rule` allows nothing that `ceiling` does not.
fn rule_within(rule: &str, ceiling: &[String]) -> bool {
    let Some(r) = rule.strip_prefix("bind:").map(|r| r.trim().to_ascii_lowercase()) else { return false };
    ceiling.iter().filter_map(|c| c.strip_prefix("bind:")).any(|c| {
        let c = c.trim().to_ascii_lowercase();
        if c == "*" || c == r {
            return true;
        }
        match (c.strip_prefix("*."), r.strip_prefix("*.")) {
            // `*.x` within `*.d`: x must be d or under it... only strictly under d, as `*.d`
            // does not allow d itself.
            (Some(parent), Some(inner)) => inner.ends_with(&format!(".{parent}")),
            (Some(parent), None) => acl_allows(&[format!("bind:*.{parent}")], &r),
            _ => false,
        }
    })
}

/// An authtoken's stored record.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Credential {
    /// `cr_...`
    pub id: String,
    /// The owning account.
    pub account_id: String,
    /// What the token is for.
    pub description: String,
    /// Free-form, for the operator's tooling.
    pub metadata: String,
    /// Bind rules (`bind:app.example.com`, `bind:*.example.com`, `bind:*`); empty allows all.
    pub acl: Vec<String>,
    /// The user it belongs to, if any.
    pub owner_id: Option<String>,
    /// IP policies agent sessions with this token must pass (besides `agent` restrictions).
    pub ip_policy_ids: Vec<String>,
    /// RFC 3339 creation time.
    pub created_at: String,
}

impl Credential {
    /// Whether the ACL lets this token bind `host` (a host name or `host:port`). As in ngrok,
    /// a token without rules may bind anything; `bind:*.example.com` covers every name under
    /// example.com but not example.com itself.
    pub fn allows_bind(&self, host: &str) -> bool {
        acl_allows(&self.acl, host)
    }
}

/// What [`crate::Store::create_credential`] needs.
#[derive(Clone, Debug, Default)]
pub struct NewCredential {
    /// What the token is for.
    pub description: String,
    /// Free-form metadata.
    pub metadata: String,
    /// Bind rules; empty allows all.
    pub acl: Vec<String>,
    /// Owning user.
    pub owner_id: Option<String>,
    /// IP policies the token's sessions must pass.
    pub ip_policy_ids: Vec<String>,
}

/// A change to a credential; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct CredentialUpdate {
    /// New description.
    pub description: Option<String>,
    /// New metadata.
    pub metadata: Option<String>,
    /// New bind rules.
    pub acl: Option<Vec<String>>,
    /// New IP policies.
    pub ip_policy_ids: Option<Vec<String>>,
}

/// An API key's stored record.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApiKey {
    /// `ak_...`
    pub id: String,
    /// The owning account.
    pub account_id: String,
    /// What the key is for.
    pub description: String,
    /// Free-form metadata.
    pub metadata: String,
    /// The user whose role the key carries.
    pub owner_id: Option<String>,
    /// RFC 3339; the key stops working at this instant.
    pub expires_at: Option<String>,
    /// RFC 3339 creation time.
    pub created_at: String,
}

/// What [`crate::Store::create_api_key`] needs.
#[derive(Clone, Debug, Default)]
pub struct NewApiKey {
    /// What the key is for.
    pub description: String,
    /// Free-form metadata.
    pub metadata: String,
    /// Owning user.
    pub owner_id: Option<String>,
    /// RFC 3339 expiry, if any.
    pub expires_at: Option<String>,
}

/// A secret shown once. `Debug` masks it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(pub String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(********)")
    }
}

/// One page of a listing, newest first, as ngrok's API pages: ask for the next one with
/// `before_id` = the last id of this page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<T> {
    /// The rows.
    pub items: Vec<T>,
    /// Whether older rows exist.
    pub more: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(acl: &[&str]) -> Credential {
        Credential {
            id: "cr_x".into(),
            account_id: "acc_x".into(),
            description: String::new(),
            metadata: String::new(),
            acl: acl.iter().map(|s| s.to_string()).collect(),
            owner_id: None,
            ip_policy_ids: Vec::new(),
            created_at: String::new(),
        }
    }

    #[test]
    fn bind_acl_rules_match_like_ngrok() {
        assert!(cred(&[]).allows_bind("anything.example.com"));
        assert!(cred(&["bind:*"]).allows_bind("anything.example.com"));
        let c = cred(&["bind:app.example.com", "bind:*.dev.example.com"]);
        assert!(c.allows_bind("app.example.com"));
        assert!(c.allows_bind("APP.example.com."));
        assert!(c.allows_bind("a.dev.example.com"));
        assert!(c.allows_bind("a.b.dev.example.com"));
        assert!(!c.allows_bind("dev.example.com"));
        assert!(!c.allows_bind("evilapp.example.com"));
        assert!(!c.allows_bind("xdev.example.com"));
        assert!(!cred(&["tunnel:*"]).allows_bind("app.example.com"), "only bind: rules grant binds");
    }
}

//! Dashboard sign-in: users' passwords (argon2id) with a lockout after repeated failures,
//! browser sessions (the cookie is stored only as its SHA-256) and one-time sign-in links.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng;
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::{Op, Store, StoreError, Token, User, now_rfc3339, unix_now};

/// Wrong passwords in a row that lock a user out.
pub const MAX_FAILED_SIGN_INS: i64 = 5;
/// How long a lockout lasts, in seconds.
pub const LOCKOUT_SECS: i64 = 15 * 60;
/// How long a dashboard session lives, in seconds, however active it is.
pub const SESSION_SECS: i64 = 12 * 60 * 60;
/// How long a one-time sign-in link stays usable, in seconds.
pub const LINK_SECS: i64 = 24 * 60 * 60;
/// Shortest and longest password accepted, in characters.
pub const PASSWORD_CHARS: std::ops::RangeInclusive<usize> = 12..=256;

/// What a password sign-in found.
#[derive(Debug)]
pub enum SignIn {
    /// The password is right.
    Ok(User),
    /// No user with that e-mail has that password (which of the two is not told).
    Wrong,
    /// Too many wrong passwords lately; the user may try again at `until` (unix seconds).
    Locked {
        /// Unix seconds.
        until: i64,
    },
}

/// A live dashboard session: who, and the token its forms must carry.
#[derive(Clone, Debug)]
pub struct DashboardSession {
    /// The signed-in user, as the store has them now (role changes apply at once).
    pub user: User,
    /// The CSRF token of this session.
    pub csrf: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// Whether a password may be set: [`PASSWORD_CHARS`] characters.
pub fn check_password_rules(password: &str) -> Result<(), StoreError> {
    if PASSWORD_CHARS.contains(&password.chars().count()) {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "password: must be {} to {} characters",
            PASSWORD_CHARS.start(),
            PASSWORD_CHARS.end()
        )))
    }
}

fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn random_token() -> String {
    let mut raw = [0u8; 32];
    rand::rng().fill(&mut raw);
    URL_SAFE_NO_PAD.encode(raw)
}

fn salt() -> SaltString {
    let mut raw = [0u8; 16];
    rand::rng().fill(&mut raw);
    SaltString::encode_b64(&raw).expect("16 bytes are a valid salt")
}

fn argon2() -> argon2::Argon2<'static> {
    // argon2id v19 with the OWASP minimum: 19 MiB, 2 passes, 1 lane.
    argon2::Argon2::default()
}

/// A hash of nothing anyone knows, verified against when no user has the e-mail, so a wrong
/// e-mail takes as long as a wrong password.
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| {
        argon2().hash_password(random_token().as_bytes(), &salt()).expect("argon2 hashes").to_string()
    })
}

async fn verify(password: &str, hash: &str) -> bool {
    let (password, hash) = (password.to_owned(), hash.to_owned());
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash).is_ok_and(|h| argon2().verify_password(password.as_bytes(), &h).is_ok())
    })
    .await
    .unwrap_or(false)
}

impl Store {
    /// Sets a user's dashboard password (its argon2id hash), and ends their dashboard
    /// sessions: whoever knew the old one is signed out.
    pub async fn set_user_password(
        &self,
        account_id: &str,
        id: &str,
        password: &str,
    ) -> Result<User, StoreError> {
        check_password_rules(password)?;
        let password = password.to_owned();
        let hash = tokio::task::spawn_blocking(move || {
            argon2().hash_password(password.as_bytes(), &salt()).map(|h| h.to_string())
        })
        .await
        .map_err(|_| StoreError::Invalid("password: could not be hashed".into()))?
        .map_err(|e| StoreError::Invalid(format!("password: {e}")))?;
        let user = self.get_user(account_id, id).await?;
        Ok(audited!(self, tx, account_id, Op::Updated, |user| {
            let n = sqlx::query("UPDATE users SET password_hash = $1, failed_sign_ins = 0, locked_until = 0 WHERE account_id = $2 AND id = $3")
                .bind(&hash).bind(account_id).bind(id).execute(&mut *tx).await?.rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound("user"));
            }
            sqlx::query("DELETE FROM dashboard_sessions WHERE user_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            user
        }))
    }

    /// Checks an e-mail and password. Wrong passwords count against the user; the
    /// [`MAX_FAILED_SIGN_INS`]th locks them out for [`LOCKOUT_SECS`] (a locked user is told
    /// so even with the right password, so guessing on gains nothing).
    pub async fn check_password(&self, email: &str, password: &str) -> Result<SignIn, StoreError> {
        let email = email.trim();
        let rows: Vec<(String, String, Option<String>, i64)> = with_db!(self.db, pool => {
            sqlx::query("SELECT account_id, id, password_hash, locked_until FROM users WHERE lower(email) = lower($1) ORDER BY id")
                .bind(email).fetch_all(pool).await?
                .iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect()
        });
        let now = unix_now();
        let mut verified = false;
        for (account_id, id, hash, locked_until) in &rows {
            let Some(hash) = hash else { continue };
            verified = true;
            if *locked_until > now {
                return Ok(SignIn::Locked { until: *locked_until });
            }
            if verify(password, hash).await {
                with_db!(self.db, pool => {
                    sqlx::query("UPDATE users SET failed_sign_ins = 0 WHERE id = $1").bind(id).execute(pool).await?;
                });
                return Ok(SignIn::Ok(self.get_user(account_id, id).await?));
            }
            with_db!(self.db, pool => {
                let mut tx = begin_write!(self, pool);
                let failed: i64 = sqlx::query("UPDATE users SET failed_sign_ins = failed_sign_ins + 1 WHERE id = $1 RETURNING failed_sign_ins")
                    .bind(id).fetch_one(&mut *tx).await?.get(0);
                if failed >= MAX_FAILED_SIGN_INS {
                    sqlx::query("UPDATE users SET failed_sign_ins = 0, locked_until = $1 WHERE id = $2")
                        .bind(now + LOCKOUT_SECS).bind(id).execute(&mut *tx).await?;
                }
                tx.commit().await?;
            });
        }
        if !verified {
            verify(password, decoy_hash()).await;
        }
        Ok(SignIn::Wrong)
    }

    /// Starts a dashboard session for `user`, signed in from `ip` by `via` (`password`,
    /// `link`, `sso`). Returns the cookie value (shown once; only its hash is kept).
    pub async fn create_dashboard_session(
        &self,
        user: &User,
        ip: &str,
        via: &str,
    ) -> Result<Token, StoreError> {
        let token = random_token();
        let now = unix_now();
        with_db!(self.db, pool => {
            let mut tx = begin_write!(self, pool);
            // Sessions that ran out go as new ones come; no sweeper needed.
            sqlx::query("DELETE FROM dashboard_sessions WHERE expires_at <= $1").bind(now).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO dashboard_sessions (token_hash, account_id, user_id, csrf, ip, via, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
                .bind(token_hash(&token)).bind(&user.account_id).bind(&user.id).bind(random_token())
                .bind(ip).bind(via).bind(now_rfc3339()).bind(now + SESSION_SECS)
                .execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(Token(token))
    }

    /// The live session a cookie names, or `None` (unknown, expired, or its user is gone).
    pub async fn dashboard_session(&self, token: &str) -> Result<Option<DashboardSession>, StoreError> {
        let row: Option<(String, String, String, i64)> = with_db!(self.db, pool => {
            sqlx::query("SELECT account_id, user_id, csrf, expires_at FROM dashboard_sessions WHERE token_hash = $1 AND expires_at > $2")
                .bind(token_hash(token)).bind(unix_now()).fetch_optional(pool).await?
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        });
        let Some((account_id, user_id, csrf, expires_at)) = row else { return Ok(None) };
        match self.get_user(&account_id, &user_id).await {
            Ok(user) => Ok(Some(DashboardSession { user, csrf, expires_at })),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Ends the session a cookie names (sign-out); unknown cookies are ignored.
    pub async fn end_dashboard_session(&self, token: &str) -> Result<(), StoreError> {
        with_db!(self.db, pool => {
            sqlx::query("DELETE FROM dashboard_sessions WHERE token_hash = $1").bind(token_hash(token)).execute(pool).await?;
        });
        Ok(())
    }

    /// A one-time sign-in link's secret for a user, usable once within [`LINK_SECS`].
    pub async fn create_sign_in_link(&self, account_id: &str, user_id: &str) -> Result<Token, StoreError> {
        self.get_user(account_id, user_id).await?;
        let token = random_token();
        let now = unix_now();
        with_db!(self.db, pool => {
            let mut tx = begin_write!(self, pool);
            sqlx::query("DELETE FROM sign_in_links WHERE expires_at <= $1").bind(now).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO sign_in_links (token_hash, account_id, user_id, expires_at) VALUES ($1, $2, $3, $4)")
                .bind(token_hash(&token)).bind(account_id).bind(user_id).bind(now + LINK_SECS)
                .execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(Token(token))
    }

    /// Uses a sign-in link: its user if the link is live, and the link is gone either way.
    pub async fn use_sign_in_link(&self, token: &str) -> Result<Option<User>, StoreError> {
        let row: Option<(String, String, i64)> = with_db!(self.db, pool => {
            let mut tx = begin_write!(self, pool);
            let row = sqlx::query("DELETE FROM sign_in_links WHERE token_hash = $1 RETURNING account_id, user_id, expires_at")
                .bind(token_hash(token)).fetch_optional(&mut *tx).await?
                .map(|r| (r.get(0), r.get(1), r.get(2)));
            tx.commit().await?;
            row
        });
        match row {
            Some((account_id, user_id, expires_at)) if expires_at > unix_now() => {
                match self.get_user(&account_id, &user_id).await {
                    Ok(u) => Ok(Some(u)),
                    Err(StoreError::NotFound(_)) => Ok(None),
                    Err(e) => Err(e),
                }
            }
            _ => Ok(None),
        }
    }

    /// The user of an account with this e-mail (compared without case), if any.
    pub async fn find_user_by_email(
        &self,
        account_id: &str,
        email: &str,
    ) -> Result<Option<User>, StoreError> {
        let id: Option<String> = with_db!(self.db, pool => {
            sqlx::query("SELECT id FROM users WHERE account_id = $1 AND lower(email) = lower($2) ORDER BY id LIMIT 1")
                .bind(account_id).bind(email.trim()).fetch_optional(pool).await?
                .map(|r| r.get(0))
        });
        match id {
            Some(id) => Ok(Some(self.get_user(account_id, &id).await?)),
            None => Ok(None),
        }
    }

    /// Whether a user has a dashboard password.
    pub async fn user_has_password(&self, account_id: &str, id: &str) -> Result<bool, StoreError> {
        with_db!(self.db, pool => {
            sqlx::query("SELECT password_hash IS NOT NULL FROM users WHERE account_id = $1 AND id = $2")
                .bind(account_id).bind(id).fetch_optional(pool).await?
                .map(|r| r.get::<bool, _>(0))
        })
        .ok_or(StoreError::NotFound("user"))
    }
}

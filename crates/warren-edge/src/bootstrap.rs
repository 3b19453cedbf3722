//! The embedded default that works on a fresh machine: the first start creates the data
//! directory, the store, a local CA and certificate, an initial authtoken and an admin API key.

use std::path::{Path, PathBuf};

use warren_store::{Account, Store, Token};

use crate::tls::{self, TlsMaterial};
use crate::{EdgeConfig, EdgeError};

/// What the first start created; the tokens are shown once.
pub struct FirstStart {
    /// The initial authtoken.
    pub authtoken: Token,
    /// The initial admin API key.
    pub api_key: Token,
    /// A one-time dashboard sign-in link's secret for the admin (`/dashboard/sign-in/link/<it>`).
    pub sign_in_link: Token,
    /// The owner-only file they were also written to.
    pub credentials_file: PathBuf,
}

/// An account made by [`create_account`]: its first admin's authtoken and API key, shown once.
pub struct NewAccount {
    /// The account.
    pub account: Account,
    /// The first admin's authtoken.
    pub authtoken: Token,
    /// The first admin's API key.
    pub api_key: Token,
    /// The first admin's user id.
    pub admin_id: String,
}

/// An edge's store and TLS material, ready to start.
pub struct Prepared {
    /// The opened store.
    pub store: Store,
    /// The edge certificate.
    pub tls: TlsMaterial,
    /// Set on the very first start only.
    pub first_start: Option<FirstStart>,
}

/// Creates what is missing in the data directory and opens it.
pub async fn prepare(config: &EdgeConfig) -> Result<Prepared, EdgeError> {
    let dir = &config.data_dir;
    create_private_dir(dir)?;
    let store = open_store(config).await?;
    let tls = tls::ensure_local_ca(&dir.join("tls"), &config.certificate_names())?;
    let (account, created) = store.ensure_account("default").await?;
    let first_start = if created {
        let by = store.acting_as(warren_store::Actor {
            id: "bootstrap".into(),
            source: "bootstrap".into(),
            ..Default::default()
        });
        let NewAccount { authtoken, api_key, admin_id, account } = first_admin(&by, account, "admin").await?;
        let sign_in_link = store.create_sign_in_link(&account.id, &admin_id).await?;
        let credentials_file = dir.join("credentials.txt");
        let text = format!(
            "# Created by the first `warren edge` start. Shown once; keep this file private.\nauthtoken: {}\napi_key: {}\n",
            authtoken.0, api_key.0
        );
        tls::write_private(&credentials_file, text.as_bytes())?;
        Some(FirstStart { authtoken, api_key, sign_in_link, credentials_file })
    } else {
        None
    };
    Ok(Prepared { store, tls, first_start })
}

/// Opens the store an edge with `config` uses (creating the SQLite file in the data directory
/// if needed), for the operator's `warren admin` commands.
pub async fn open_store(config: &EdgeConfig) -> Result<Store, EdgeError> {
    Ok(match &config.database_url {
        Some(url) => Store::open(&url.0).await?,
        None => {
            create_private_dir(&config.data_dir)?;
            Store::open_sqlite(&config.data_dir.join("warren.db")).await?
        }
    })
}

/// Creates a tenant: the account `name`, its first admin user `admin_email`, and an authtoken
/// and an API key owned by that admin. Accounts see nothing of each other's users, tokens,
/// keys, reservations or endpoints.
pub async fn create_account(store: &Store, name: &str, admin_email: &str) -> Result<NewAccount, EdgeError> {
    let store =
        store.acting_as(warren_store::Actor { id: "cli".into(), source: "cli".into(), ..Default::default() });
    let account = store.create_account(name).await?;
    first_admin(&store, account, admin_email).await
}

/// A one-time dashboard sign-in link's secret for the user `email` of account `account`
/// (the operator's way in when nobody can sign in: `warren admin users sign-in-link`).
pub async fn sign_in_link(store: &Store, account: &str, email: &str) -> Result<Token, EdgeError> {
    let accounts = store.list_accounts().await?;
    let a = accounts
        .iter()
        .find(|a| a.name == account)
        .ok_or_else(|| EdgeError::Store(warren_store::StoreError::NotFound("account")))?;
    let mut before: Option<String> = None;
    loop {
        let page = store.list_users(&a.id, 100, before.as_deref()).await?;
        if let Some(u) = page.items.iter().find(|u| u.email.eq_ignore_ascii_case(email.trim())) {
            return Ok(store.create_sign_in_link(&a.id, &u.id).await?);
        }
        match (page.more, page.items.last()) {
            (true, Some(last)) => before = Some(last.id.clone()),
            _ => return Err(EdgeError::Store(warren_store::StoreError::NotFound("user"))),
        }
    }
}

async fn first_admin(store: &Store, account: Account, email: &str) -> Result<NewAccount, EdgeError> {
    let admin = store.create_user(&account.id, email, warren_store::Role::Admin).await?;
    let admin_id = admin.id.clone();
    let new = warren_store::NewCredential {
        description: "initial authtoken".into(),
        owner_id: Some(admin.id.clone()),
        ..Default::default()
    };
    let (_, authtoken) = store.create_credential(&account.id, &new).await?;
    let new = warren_store::NewApiKey {
        description: "initial admin API key".into(),
        owner_id: Some(admin.id),
        ..Default::default()
    };
    let (_, api_key) = store.create_api_key(&account.id, &new).await?;
    Ok(NewAccount { account, authtoken, api_key, admin_id })
}

fn create_private_dir(dir: &Path) -> Result<(), EdgeError> {
    let io = |source| EdgeError::Tls(tls::TlsError::Io { path: dir.to_owned(), source });
    std::fs::create_dir_all(dir).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    Ok(())
}

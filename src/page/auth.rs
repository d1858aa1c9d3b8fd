//! Access to the conflicts page: one operator token (from `FRAPPE_CDC_CONFLICTS_TOKEN` or
//! `--token-file`, never argv), exchanged on the login form for a session cookie
//! (`HttpOnly`, `SameSite=Strict`); every form carries the session's CSRF value, and a POST
//! without both the cookie and a matching value is refused. The login form itself uses a
//! double-submit value (a cookie and a field that must match). Sessions live in memory: a
//! restart logs everyone out. Secrets are compared in constant time and never logged.

use std::collections::HashMap;
use std::sync::Mutex;

/// Environment variable holding the token.
pub const TOKEN_ENV: &str = "FRAPPE_CDC_CONFLICTS_TOKEN";
/// Shortest token accepted.
pub const MIN_TOKEN: usize = 16;
/// The session cookie.
pub const SESSION_COOKIE: &str = "fcdc_session";
/// The login form's double-submit cookie.
pub const LOGIN_COOKIE: &str = "fcdc_login";
/// Most sessions kept (the oldest go first).
const MAX_SESSIONS: usize = 64;

/// Reads the token: `file` when given, else the environment.
pub fn load_token(file: Option<&std::path::Path>) -> Result<String, String> {
    let t = match file {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| format!("cannot read --token-file {}: {e}", p.display()))?,
        None => std::env::var(TOKEN_ENV).map_err(|_| {
            format!("no token: set {TOKEN_ENV} or pass --token-file (a file holding it)")
        })?,
    };
    let t = t.trim().to_string();
    if t.len() < MIN_TOKEN {
        return Err(format!(
            "the conflicts page token must be at least {MIN_TOKEN} characters (e.g. `openssl rand -hex 24`)"
        ));
    }
    Ok(t)
}

/// `a == b` in time independent of where they differ.
pub fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 32 random hex characters.
pub fn random_id() -> Result<String, String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| format!("no randomness: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: Option<&'a str>, name: &str) -> Option<&'a str> {
    header?.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// A `Set-Cookie` value for `name`.
pub fn set_cookie(name: &str, value: &str) -> String {
    format!("{name}={value}; HttpOnly; SameSite=Strict; Path=/")
}

/// Logged-in sessions: id → CSRF value.
#[derive(Default)]
pub struct Sessions {
    inner: Mutex<Vec<(String, String)>>,
}

impl Sessions {
    /// A new session: (id, csrf).
    pub fn open(&self) -> Result<(String, String), String> {
        let (id, csrf) = (random_id()?, random_id()?);
        let mut s = self.inner.lock().map_err(|_| "session store poisoned")?;
        if s.len() >= MAX_SESSIONS {
            s.remove(0);
        }
        s.push((id.clone(), csrf.clone()));
        Ok((id, csrf))
    }

    /// The CSRF value of session `id`, if it exists.
    pub fn csrf(&self, id: &str) -> Option<String> {
        let s = self.inner.lock().ok()?;
        s.iter().find(|(i, _)| same(i, id)).map(|(_, c)| c.clone())
    }

    /// True when the session exists and `csrf` is its value.
    pub fn check(&self, id: Option<&str>, csrf: Option<&str>) -> bool {
        match (id.and_then(|i| self.csrf(i)), csrf) {
            (Some(want), Some(got)) => same(&want, got),
            _ => false,
        }
    }

    /// Ends session `id`.
    pub fn close(&self, id: &str) {
        if let Ok(mut s) = self.inner.lock() {
            s.retain(|(i, _)| !same(i, id));
        }
    }
}

/// Form fields as a map (for handlers that read a few).
pub type Form = HashMap<String, String>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_cookies_and_comparison() {
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
        let h = Some("a=1; fcdc_session=xyz; b=2");
        assert_eq!(cookie(h, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie(h, "c"), None);
        assert_eq!(cookie(None, "a"), None);
        let s = Sessions::default();
        let (id, csrf) = s.open().unwrap();
        assert_eq!(id.len(), 32);
        assert!(s.check(Some(&id), Some(&csrf)));
        assert!(!s.check(Some(&id), Some("nope")));
        assert!(!s.check(Some(&id), None));
        assert!(!s.check(None, Some(&csrf)));
        assert!(!s.check(Some("other"), Some(&csrf)));
        s.close(&id);
        assert!(!s.check(Some(&id), Some(&csrf)));
        for _ in 0..(MAX_SESSIONS + 5) {
            s.open().unwrap();
        }
        assert_eq!(s.inner.lock().unwrap().len(), MAX_SESSIONS);
    }

    #[test]
    fn short_tokens_are_refused() {
        let dir = std::env::temp_dir().join(format!("fcdc-token-{}", std::process::id()));
        std::fs::write(&dir, "short\n").unwrap();
        assert!(load_token(Some(&dir)).unwrap_err().contains("at least"));
        std::fs::write(&dir, "0123456789abcdef0123\n").unwrap();
        assert_eq!(load_token(Some(&dir)).unwrap(), "0123456789abcdef0123");
        let _ = std::fs::remove_file(&dir);
    }
}

//! `frappe-cdc conflicts serve`: the conflicts page. A list with filters (doctype, status,
//! age) and counts per doctype; a detail view with the three-way field table (`threeway.rs`);
//! Accept primary / Keep local per conflict and for a filtered list. Server-rendered HTML
//! without JavaScript, on loopback by default, behind a token login with CSRF values on every
//! POST (`auth.rs`); strict CSP, no framing.
//!
//! Resolving goes through `apply::conflicts::resolve` (the record locked, the write and the
//! applied position in one replica transaction), the same as the CLI: a page that dies halfway
//! through a bulk resolve leaves each conflict either resolved or open, never half-written.
//! Logs name conflicts by id and action only, never row values.

pub mod auth;
pub mod html;
pub mod threeway;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::Markup;
use mysql_async::Pool;

use crate::apply::conflicts::{self, ConflictError, ListFilter, Resolution};
use crate::db::DbTarget;
use auth::{Form as Fields, LOGIN_COOKIE, SESSION_COOKIE, Sessions, cookie, set_cookie};

/// Flags of `conflicts serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address of the page (loopback by default; put TLS in front of anything else).
    #[arg(long, env = "FRAPPE_CDC_LISTEN", default_value = "127.0.0.1:9466")]
    pub listen: SocketAddr,
    /// File holding the access token (else FRAPPE_CDC_CONFLICTS_TOKEN); 16+ characters.
    #[arg(long, env = "FRAPPE_CDC_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The primary site's URL, for links to its documents (/app/<doctype>/<name>).
    #[arg(long, env = "FRAPPE_CDC_PRIMARY_SITE_URL")]
    pub primary_site_url: Option<String>,
    /// The replica site's URL, for links to its documents.
    #[arg(long, env = "FRAPPE_CDC_REPLICA_SITE_URL")]
    pub replica_site_url: Option<String>,
}

struct App {
    pool: Pool,
    token: String,
    sessions: Sessions,
    primary_url: Option<String>,
    replica_url: Option<String>,
}

type Shared = Arc<App>;

/// Runs the page until Ctrl-C / SIGTERM.
pub async fn serve(target: DbTarget, a: &ServeArgs) -> ExitCode {
    let token = match auth::load_token(a.token_file.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let pool = Pool::new(target.opts.clone());
    match pool.get_conn().await {
        Ok(mut c) => {
            if let Err(e) = crate::apply::control::ensure_conflicts_table(&mut c).await {
                eprintln!("error: {target}: {e}");
                return ExitCode::from(2);
            }
        }
        Err(e) => {
            eprintln!("error: cannot reach {target}: {e}");
            return ExitCode::from(2);
        }
    }
    let listener = match tokio::net::TcpListener::bind(a.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "error: cannot listen on {}: {e}\n  fix: pass --listen with a free address",
                a.listen
            );
            return ExitCode::from(2);
        }
    };
    if !a.listen.ip().is_loopback() {
        tracing::warn!(listen = %a.listen, "the conflicts page listens beyond loopback; serve it behind TLS");
    }
    let app = Arc::new(App {
        pool,
        token,
        sessions: Sessions::default(),
        primary_url: a.primary_site_url.clone(),
        replica_url: a.replica_site_url.clone(),
    });
    tracing::info!(listen = %a.listen, "conflicts page serving");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown)
        .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: conflicts page: {e}");
            ExitCode::from(1)
        }
    }
}

fn router(app: Shared) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/conflicts") }))
        .route("/style.css", get(style))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/conflicts", get(list))
        .route("/conflicts/bulk", post(bulk))
        .route("/conflicts/{id}", get(detail))
        .route("/conflicts/{id}/resolve", post(resolve))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(app)
}

async fn secure_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        html::CSS,
    )
}

fn page(status: StatusCode, m: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        m.into_string(),
    )
        .into_response()
}

fn cookie_of<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    cookie(h.get(header::COOKIE).and_then(|v| v.to_str().ok()), name)
}

/// The session's CSRF value (None: not logged in, see [`to_login`]).
fn session(app: &App, h: &HeaderMap) -> Option<String> {
    cookie_of(h, SESSION_COOKIE).and_then(|id| app.sessions.csrf(id))
}

fn to_login() -> Response {
    Redirect::to("/login").into_response()
}

/// True when a POST has a session and its CSRF value; else see [`refused`].
fn post_allowed(app: &App, h: &HeaderMap, f: &Fields) -> bool {
    app.sessions.check(
        cookie_of(h, SESSION_COOKIE),
        f.get("csrf").map(String::as_str),
    )
}

/// The answer to a POST without a session or its CSRF value (403).
fn refused() -> Response {
    tracing::warn!("conflicts page: POST refused (no session or CSRF value)");
    page(
        StatusCode::FORBIDDEN,
        html::error(
            "Refused",
            "This action needs a logged-in session and the form's CSRF value. Reload the page and try again.",
        ),
    )
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "conflicts page: replica error");
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        html::error("Replica error", &e.to_string()),
    )
}

async fn login_form() -> Response {
    let Ok(v) = auth::random_id() else {
        return internal("no randomness");
    };
    let mut r = page(StatusCode::OK, html::login(None, &v));
    if let Ok(c) = HeaderValue::from_str(&set_cookie(LOGIN_COOKIE, &v)) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    r
}

async fn login(State(app): State<Shared>, h: HeaderMap, Form(f): Form<Fields>) -> Response {
    let double = match (cookie_of(&h, LOGIN_COOKIE), f.get("csrf")) {
        (Some(c), Some(v)) => auth::same(c, v),
        _ => false,
    };
    let token_ok = f
        .get("token")
        .is_some_and(|t| auth::same(t.trim(), &app.token));
    if !double || !token_ok {
        tracing::warn!(form_value_matched = double, "conflicts page: login refused");
        let v = auth::random_id().unwrap_or_default();
        let mut r = page(
            StatusCode::FORBIDDEN,
            html::login(Some("Wrong token, or the form expired: try again."), &v),
        );
        if let Ok(c) = HeaderValue::from_str(&set_cookie(LOGIN_COOKIE, &v)) {
            r.headers_mut().insert(header::SET_COOKIE, c);
        }
        return r;
    }
    match app.sessions.open() {
        Ok((id, _)) => {
            tracing::info!("conflicts page: operator logged in");
            let mut r = Redirect::to("/conflicts").into_response();
            if let Ok(c) = HeaderValue::from_str(&set_cookie(SESSION_COOKIE, &id)) {
                r.headers_mut().insert(header::SET_COOKIE, c);
            }
            r
        }
        Err(e) => internal(e),
    }
}

async fn logout(State(app): State<Shared>, h: HeaderMap, Form(f): Form<Fields>) -> Response {
    if !post_allowed(&app, &h, &f) {
        return refused();
    }
    if let Some(id) = cookie_of(&h, SESSION_COOKIE) {
        app.sessions.close(id);
    }
    Redirect::to("/login").into_response()
}

/// The list filter from query or form fields.
fn filter_of(q: &Fields) -> ListFilter {
    let status = q.get("status").map(String::as_str).unwrap_or("open");
    ListFilter {
        statuses: if status.is_empty() {
            Vec::new()
        } else {
            vec![status.to_string()]
        },
        doctype: q.get("doctype").filter(|d| !d.is_empty()).cloned(),
        min_age_secs: q.get("min_age").and_then(|a| a.trim().parse().ok()),
        limit: None,
    }
}

const SHOWN: u64 = 500;

async fn list(State(app): State<Shared>, h: HeaderMap, Query(q): Query<Fields>) -> Response {
    let Some(csrf) = session(&app, &h) else {
        return to_login();
    };
    let filter = filter_of(&q);
    let mut conn = match app.pool.get_conn().await {
        Ok(c) => c,
        Err(e) => return internal(e),
    };
    let items = conflicts::list(
        &mut conn,
        &ListFilter {
            limit: Some(SHOWN),
            ..filter.clone()
        },
    )
    .await;
    let counts = conflicts::counts(&mut conn, &ListFilter::default()).await;
    match (items, counts) {
        (Ok(items), Ok(counts)) => {
            let mut doctypes: Vec<String> = counts.iter().map(|(d, _, _)| d.clone()).collect();
            doctypes.dedup();
            let msg = q.get("msg").map(String::as_str);
            page(
                StatusCode::OK,
                html::list(&items, &counts, &filter, &doctypes, &csrf, msg),
            )
        }
        (Err(e), _) | (_, Err(e)) => internal(e),
    }
}

/// `/app/<doctype-slug>/<name>` under `base`.
fn app_link(base: &Option<String>, doctype: &str, name: &str) -> Option<String> {
    let slug = doctype.to_lowercase().replace(' ', "-");
    base.as_ref().map(|b| {
        format!(
            "{}/app/{}/{}",
            b.trim_end_matches('/'),
            crate::files::plan::percent_encode(&slug),
            crate::files::plan::percent_encode(name)
        )
    })
}

async fn detail(
    State(app): State<Shared>,
    h: HeaderMap,
    Path(id): Path<u64>,
    Query(q): Query<Fields>,
) -> Response {
    let Some(csrf) = session(&app, &h) else {
        return to_login();
    };
    let mut conn = match app.pool.get_conn().await {
        Ok(c) => c,
        Err(e) => return internal(e),
    };
    let c = match conflicts::get(&mut conn, id).await {
        Ok(c) => c,
        Err(ConflictError::NotFound(_)) => {
            return page(
                StatusCode::NOT_FOUND,
                html::error("Not found", &format!("There is no conflict {id}.")),
            );
        }
        Err(e) => return internal(e),
    };
    let now = match conflicts::replica_now(&mut conn, &c).await {
        Ok(n) => n,
        Err(e) => return internal(e),
    };
    // An open conflict compares with the copy as it is now; a closed one with the copy
    // it was decided against.
    let replica = if c.status == "open" {
        now.as_ref()
    } else {
        c.replica.as_ref()
    };
    let view = threeway::build(c.before.as_ref(), c.after.as_ref(), replica);
    let links = html::Links {
        primary: app_link(&app.primary_url, &c.doctype, &c.name),
        replica: app_link(&app.replica_url, &c.doctype, &c.name),
    };
    let msg = q.get("msg").map(String::as_str);
    page(StatusCode::OK, html::detail(&c, &view, &links, &csrf, msg))
}

fn resolution(f: &Fields) -> Option<Resolution> {
    match f.get("action").map(String::as_str) {
        Some("accept_primary") => Some(Resolution::AcceptPrimary),
        Some("keep_local") => Some(Resolution::KeepLocal),
        _ => None,
    }
}

fn bad_action() -> Response {
    page(
        StatusCode::BAD_REQUEST,
        html::error("Bad request", "action must be accept_primary or keep_local"),
    )
}

async fn resolve(
    State(app): State<Shared>,
    h: HeaderMap,
    Path(id): Path<u64>,
    Form(f): Form<Fields>,
) -> Response {
    if !post_allowed(&app, &h, &f) {
        return refused();
    }
    let Some(how) = resolution(&f) else {
        return bad_action();
    };
    let mut conn = match app.pool.get_conn().await {
        Ok(c) => c,
        Err(e) => return internal(e),
    };
    let msg = match conflicts::resolve(&mut conn, id, how).await {
        Ok(()) => {
            tracing::info!(id, action = ?how, "conflict resolved on the page");
            "Resolved.".to_string()
        }
        Err(e @ (ConflictError::Resolved(_) | ConflictError::OwnedElsewhere { .. })) => {
            e.to_string()
        }
        Err(ConflictError::NotFound(_)) => return bad_action(),
        Err(e) => return internal(e),
    };
    Redirect::to(&format!(
        "/conflicts/{id}?msg={}",
        crate::files::plan::percent_encode(&msg)
    ))
    .into_response()
}

async fn bulk(State(app): State<Shared>, h: HeaderMap, Form(f): Form<Fields>) -> Response {
    if !post_allowed(&app, &h, &f) {
        return refused();
    }
    let Some(how) = resolution(&f) else {
        return bad_action();
    };
    let filter = ListFilter {
        statuses: vec!["open".into()],
        ..filter_of(&f)
    };
    let mut conn = match app.pool.get_conn().await {
        Ok(c) => c,
        Err(e) => return internal(e),
    };
    let items = match conflicts::list(&mut conn, &filter).await {
        Ok(i) => i,
        Err(e) => return internal(e),
    };
    let (mut done, mut failed) = (0, 0);
    for c in &items {
        match conflicts::resolve(&mut conn, c.id, how).await {
            Ok(()) => done += 1,
            Err(e) => {
                tracing::warn!(id = c.id, error = %e, "bulk resolve: conflict left open");
                failed += 1;
            }
        }
    }
    tracing::info!(done, failed, action = ?how, "bulk resolve on the page");
    let msg = format!("{done} resolved, {failed} left open.");
    Redirect::to(&format!(
        "/conflicts?status=open&msg={}",
        crate::files::plan::percent_encode(&msg)
    ))
    .into_response()
}

//! The conflicts page's HTML (maud: every value is escaped when rendered). No JavaScript:
//! filters are a GET form, actions are POST forms carrying the CSRF value.

use maud::{DOCTYPE, Markup, html};

use super::threeway::{Field, ThreeWay, show};
use crate::apply::conflicts::{Conflict, ListFilter};

/// The stylesheet (served as /style.css: the CSP allows no inline style).
pub const CSS: &str = r#"
body { font: 14px/1.45 system-ui, "DejaVu Sans", sans-serif; margin: 0; color: #1f2933; background: #f5f7fa; }
header { background: #1f2933; color: #fff; padding: 10px 24px; display: flex; gap: 24px; align-items: baseline; }
header a { color: #fff; text-decoration: none; font-weight: 600; }
header .sub { color: #9aa5b1; }
main { padding: 16px 24px; max-width: 1400px; }
h1 { font-size: 20px; margin: 8px 0 12px; } h2 { font-size: 16px; margin: 20px 0 8px; }
table { border-collapse: collapse; background: #fff; width: 100%; margin-bottom: 12px; }
th, td { border: 1px solid #d9e2ec; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #e4e7eb; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.val { font-family: "DejaVu Sans Mono", monospace; font-size: 12.5px; word-break: break-all; max-width: 380px; }
.p { background: #d6f0ff; } .r { background: #fff3c4; } .x { background: #ffd6d6; font-weight: 600; }
tr.rowhead th { background: #f0f4f8; font-weight: 600; }
details { margin-top: 16px; } summary { cursor: pointer; color: #334e68; margin-bottom: 8px; }
.status-open { color: #ab091e; font-weight: 600; } .status-auto { color: #0b69a3; } .status-resolved { color: #2f8132; }
form.inline { display: inline; }
.bar { background: #fff; border: 1px solid #d9e2ec; padding: 8px 12px; margin-bottom: 12px; display: flex; gap: 12px; align-items: end; flex-wrap: wrap; }
.bar label { display: flex; flex-direction: column; font-size: 12px; color: #52606d; }
input, select, button { font: inherit; padding: 3px 6px; }
button { border: 1px solid #486581; background: #fff; border-radius: 3px; cursor: pointer; }
button.primary { background: #0b69a3; border-color: #0b69a3; color: #fff; }
button.keep { background: #8d6e00; border-color: #8d6e00; color: #fff; }
.legend span { display: inline-block; padding: 1px 8px; margin-right: 8px; border: 1px solid #d9e2ec; }
.msg { background: #e3f9e5; border: 1px solid #8ee09b; padding: 6px 12px; margin-bottom: 12px; }
.err { background: #ffe3e3; border: 1px solid #f29b9b; padding: 6px 12px; margin-bottom: 12px; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; background: #fff; padding: 8px 12px; border: 1px solid #d9e2ec; }
dt { color: #52606d; } dd { margin: 0; }
"#;

fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " · frappe-cdc" }
                link rel="stylesheet" href="/style.css";
            }
            body {
                header {
                    a href="/conflicts" { "frappe-cdc conflicts" }
                    span.sub { "replica-side review of documents changed on both sides" }
                }
                main { (body) }
            }
        }
    }
}

/// The login form (`login_csrf`: the double-submit value).
pub fn login(error: Option<&str>, login_csrf: &str) -> Markup {
    layout(
        "Log in",
        html! {
            h1 { "Log in" }
            @if let Some(e) = error { div.err { (e) } }
            form method="post" action="/login" {
                input type="hidden" name="csrf" value=(login_csrf);
                label { "Token " input type="password" name="token" id="token" autofocus; }
                " " button.primary type="submit" id="login" { "Log in" }
            }
        },
    )
}

fn status(s: &str) -> Markup {
    html! { span class={ "status-" (s) } { (s) } }
}

fn age(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

/// The list: filters, counts per doctype, the conflicts, bulk resolve of the filtered open
/// ones.
pub fn list(
    items: &[Conflict],
    counts: &[(String, String, u64)],
    filter: &ListFilter,
    doctypes: &[String],
    csrf: &str,
    message: Option<&str>,
) -> Markup {
    let status_sel = filter.statuses.first().map(String::as_str).unwrap_or("");
    let doctype_sel = filter.doctype.as_deref().unwrap_or("");
    let min_age = filter
        .min_age_secs
        .map(|s| s.to_string())
        .unwrap_or_default();
    layout(
        "Conflicts",
        html! {
            h1 { "Conflicts" }
            @if let Some(m) = message { div.msg id="message" { (m) } }
            form.bar method="get" action="/conflicts" id="filters" {
                label { "Doctype" select name="doctype" id="f-doctype" {
                    option value="" selected[doctype_sel.is_empty()] { "all" }
                    @for d in doctypes { option value=(d) selected[d == doctype_sel] { (d) } }
                } }
                label { "Status" select name="status" id="f-status" {
                    @for (v, t) in [("open", "open"), ("auto", "decided by policy"), ("resolved", "resolved"), ("", "all")] {
                        option value=(v) selected[v == status_sel] { (t) }
                    }
                } }
                label { "Older than (seconds)" input type="number" min="0" name="min_age" value=(min_age) id="f-age"; }
                button type="submit" id="apply-filter" { "Filter" }
            }
            h2 { "Per doctype" }
            table id="counts" {
                tr { th { "doctype" } th { "status" } th { "conflicts" } }
                @for (d, s, n) in counts { tr { td { (d) } td { (status(s)) } td.num { (n) } } }
            }
            h2 { (items.len()) " shown" }
            table id="conflicts" {
                tr { th { "id" } th { "doctype" } th { "document" } th { "status" } th { "decision" } th { "envelopes" } th { "age" } th { "reason" } }
                @for c in items {
                    tr {
                        td.num { a href={ "/conflicts/" (c.id) } { (c.id) } }
                        td { (c.doctype) }
                        td { a href={ "/conflicts/" (c.id) } class="doc" { (c.name) } }
                        td { (status(&c.status)) }
                        td { (c.resolution.as_deref().unwrap_or("")) @if let Some(p) = &c.policy { " (" (p) ")" } }
                        td.num { (c.envelopes) }
                        td { (age(c.age_secs)) }
                        td { (c.reason) }
                    }
                }
            }
            @if status_sel == "open" && !items.is_empty() {
                form.bar method="post" action="/conflicts/bulk" id="bulk" {
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="doctype" value=(doctype_sel);
                    input type="hidden" name="min_age" value=(min_age);
                    span { "Resolve every open conflict matching the filter (" (items.len()) "):" }
                    button.primary type="submit" name="action" value="accept_primary" { "Accept primary for all" }
                    button.keep type="submit" name="action" value="keep_local" { "Keep local for all" }
                }
            }
        },
    )
}

fn cell(f: &Field, v: Option<&serde_json::Value>, side: char) -> Markup {
    let class = match side {
        'a' if f.clash() => "val x",
        'r' if f.clash() => "val x",
        'a' if f.primary_changed => "val p",
        'r' if f.replica_changed => "val r",
        _ => "val",
    };
    html! { td class=(class) { (show(v)) } }
}

fn field_rows(fields: &[Field]) -> Markup {
    html! {
        @for f in fields {
            tr data-column=(f.column) {
                td { (f.column) }
                (cell(f, f.before.as_ref(), 'b'))
                (cell(f, f.after.as_ref(), 'a'))
                (cell(f, f.replica.as_ref(), 'r'))
            }
        }
    }
}

/// Links to the document on each site.
pub struct Links {
    pub primary: Option<String>,
    pub replica: Option<String>,
}

/// One conflict: what it is, the three-way table, the actions.
pub fn detail(
    c: &Conflict,
    view: &ThreeWay,
    links: &Links,
    csrf: &str,
    message: Option<&str>,
) -> Markup {
    let changed: Vec<Field> = view
        .parent
        .iter()
        .filter(|f| f.primary_changed || f.replica_changed)
        .cloned()
        .collect();
    layout(
        &format!("Conflict {}", c.id),
        html! {
            h1 { "Conflict " (c.id) ": " (c.doctype) " " (c.name) }
            @if let Some(m) = message { div.msg id="message" { (m) } }
            dl {
                dt { "status" } dd id="status" { (status(&c.status)) @if let Some(r) = &c.resolution { " — " (r) } @if let Some(p) = &c.policy { " by " (p) } }
                dt { "reason" } dd { (c.reason) }
                dt { "envelopes absorbed" } dd { (c.envelopes) }
                dt { "recorded" } dd { (c.created_at) " (" (age(c.age_secs)) " ago)" }
                dt { "source position" } dd { "GTID " (c.source_gtid.as_deref().unwrap_or("—")) ", position " (c.source_position) ", document " (c.source_doc_index) }
                dt { "open on" } dd {
                    @if let Some(u) = &links.primary { a href=(u) id="link-primary" { "primary site" } " " }
                    @if let Some(u) = &links.replica { a href=(u) id="link-replica" { "replica site" } }
                    @if links.primary.is_none() && links.replica.is_none() { "(pass --primary-site-url / --replica-site-url for links)" }
                }
            }
            @if c.status == "open" {
                div.bar {
                    form.inline method="post" action={ "/conflicts/" (c.id) "/resolve" } {
                        input type="hidden" name="csrf" value=(csrf);
                        button.primary type="submit" name="action" value="accept_primary" id="accept" { "Accept primary" }
                        " "
                        button.keep type="submit" name="action" value="keep_local" id="keep" { "Keep local" }
                    }
                    span { "Accept primary writes the primary's latest version over the replica's copy; Keep local keeps the copy. Both close the conflict." }
                }
            }
            p.legend {
                span.p { "changed on the primary" }
                span.r { "changed on the replica" }
                span.x { "changed on both, differently" }
            }
            h2 { "Fields changed on either side" }
            table id="fields" {
                tr { th { "field" } th { "primary before" } th { "primary after" } th { "replica now" } }
                (field_rows(&changed))
            }
            @for t in &view.tables {
                h2 { "Child table " (t.field) }
                table class="child" data-field=(t.field) {
                    tr { th { "row / field" } th { "primary before" } th { "primary after" } th { "replica now" } }
                    @for r in &t.rows {
                        tr class="rowhead" data-row=(r.name) { th colspan="4" { (r.name) " — " (r.state.label()) } }
                        (field_rows(&r.fields))
                    }
                }
            }
            @if view.tables.is_empty() { p { "No child row differs." } }
            details {
                summary { "All " (view.parent.len()) " fields of the parent row" }
                table id="all-fields" {
                    tr { th { "field" } th { "primary before" } th { "primary after" } th { "replica now" } }
                    (field_rows(&view.parent))
                }
            }
        },
    )
}

/// A plain error page.
pub fn error(title: &str, detail: &str) -> Markup {
    layout(
        title,
        html! { h1 { (title) } div.err { (detail) } p { a href="/conflicts" { "Back to the list" } } },
    )
}

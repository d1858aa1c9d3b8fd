//! `frappe-cdc conflicts`: list, show, resolve and the conflicts page (`serve`), on the
//! replica named by `--replica`.

use std::process::ExitCode;

use frappe_cdc::apply::conflicts::{self, Conflict, ListFilter, Resolution};
use frappe_cdc::cli::{ConflictAction, ConflictsArgs};

/// One line of `conflicts list`.
fn line(c: &Conflict) -> String {
    format!(
        "{:>6}  {:<9} {:<14} {:<13} {:>9}  {:<26}  {} {}: {}",
        c.id,
        c.status,
        c.resolution.clone().unwrap_or_default(),
        c.policy.clone().unwrap_or_default(),
        c.envelopes,
        c.created_at,
        c.doctype,
        c.name,
        c.reason
    )
}

pub(crate) async fn run(a: &ConflictsArgs) -> ExitCode {
    let Some(target) =
        crate::replica_target(&a.target.replica, a.target.replica_password_file.as_deref())
    else {
        return ExitCode::from(2);
    };
    if let ConflictAction::Serve(s) = &a.action {
        return frappe_cdc::page::serve(target, s).await;
    }
    let mut conn = match mysql_async::Conn::new(target.opts.clone()).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: cannot reach {target}: {e}");
            return ExitCode::from(2);
        }
    };
    let cmp = frappe_cdc::apply::decision::Comparator::new(
        frappe_cdc::frappe::catalog::IGNORED_COLUMNS
            .iter()
            .map(|c| c.to_string()),
    );
    let r = match &a.action {
        ConflictAction::List { all, auto, doctype } => {
            let filter = ListFilter {
                statuses: match (all, auto) {
                    (true, _) => Vec::new(),
                    (_, true) => vec!["auto".into()],
                    _ => vec!["open".into()],
                },
                doctype: doctype.clone(),
                ..ListFilter::default()
            };
            match conflicts::list(&mut conn, &filter).await {
                Ok(list) => {
                    println!(
                        "{:>6}  {:<9} {:<14} {:<13} {:>9}  {:<26}  document / reason",
                        "id", "status", "resolution", "policy", "envelopes", "created"
                    );
                    for c in &list {
                        println!("{}", line(c));
                    }
                    println!("{} conflict(s)", list.len());
                    file_collisions(&mut conn).await;
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        ConflictAction::Show { id } => conflicts::show(&mut conn, *id, &cmp)
            .await
            .map(|v| println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default())),
        ConflictAction::Resolve {
            id, accept_primary, ..
        } => {
            let how = if *accept_primary {
                Resolution::AcceptPrimary
            } else {
                Resolution::KeepLocal
            };
            conflicts::resolve(&mut conn, *id, how)
                .await
                .map(|_| println!("conflict {id} resolved ({how:?})"))
        }
        ConflictAction::Serve(_) => Ok(()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Files apply never overwrote: the replica's own bytes are at their path.
async fn file_collisions(conn: &mut mysql_async::Conn) {
    match frappe_cdc::files::status::collisions(conn).await {
        Ok(c) if !c.is_empty() => {
            for (name, url) in &c {
                println!(
                    "  file collision: File {name} {url}: the replica's own file is at this path; not overwritten"
                );
            }
            println!("{} file collision(s)", c.len());
        }
        Ok(_) => {}
        Err(e) => eprintln!("warning: cannot read _frappe_cdc_files: {e}"),
    }
}
